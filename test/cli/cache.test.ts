// The cache through the real CLI: an entry whose files changed after publishing (a flipped byte, a
// half-copied file) is detected, removed and recomputed; never used.
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project } from '../helpers/cli.ts';

const text = `name: verify
stages:
  make:
    run: "printf 'hello, cache\\\\n' > a.txt; echo '{\\"score\\": 0.75}' > m.json; echo x >> count-make"
    outs: [a.txt]
    metrics: [m.json]
  count:
    run: "wc -c < a.txt > b.txt"
    deps: [a.txt]
    outs: [b.txt]
`;

interface Summary {
  stages: Array<{ name: string; status: string; fingerprint: string }>;
  metrics: Record<string, number>;
}

test('a flipped byte in a cached output: the stage runs again, the run succeeds with identical results', async () => {
  const dir = project({ 'p.yaml': text });
  const first = await pipe(dir, ['run', 'p.yaml', '--json']);
  assert.is(first.exitCode, 0, first.stderr);
  const before = JSON.parse(first.stdout) as Summary;
  const make = before.stages.find((s) => s.name === 'make')!;
  const artifact = path.join(dir, 'runs', 'cache', 'entries', make.fingerprint, 'out', 'a.txt');
  const bytes = readFileSync(artifact);
  bytes[0] = bytes[0]! ^ 0x01; // 'h' → 'i': same size, other content
  writeFileSync(artifact, bytes);

  const second = await pipe(dir, ['run', 'p.yaml', '--json']);
  assert.is(second.exitCode, 0, second.stderr);
  const after = JSON.parse(second.stdout) as Summary;
  assert.equal(Object.fromEntries(after.stages.map((s) => [s.name, s.status])), { make: 'ran', count: 'cached' });
  assert.match(second.stderr, new RegExp(`make: cache entry ${make.fingerprint.slice(0, 10)} is damaged: out/a\\.txt has changed since it was published .*removed it: the stage runs again`));
  assert.equal(after.metrics, before.metrics);
  assert.is(readFileSync(path.join(dir, 'a.txt'), 'utf8'), 'hello, cache\n');
  assert.is(readFileSync(artifact, 'utf8'), 'hello, cache\n', 'the recomputed entry replaced the damaged one');
  assert.is(readFileSync(path.join(dir, 'b.txt'), 'utf8').trim(), '13');
  assert.is(readFileSync(path.join(dir, 'count-make'), 'utf8'), 'x\nx\n');
  assert.equal(readdirSync(path.join(dir, 'runs', 'cache', 'tmp')), []);
});

test('a half-copied output (truncated) is detected the same way', async () => {
  const dir = project({ 'p.yaml': text });
  const first = await pipe(dir, ['run', 'p.yaml', '--json']);
  const make = (JSON.parse(first.stdout) as Summary).stages.find((s) => s.name === 'make')!;
  writeFileSync(path.join(dir, 'runs', 'cache', 'entries', make.fingerprint, 'out', 'a.txt'), 'hel');
  const second = await pipe(dir, ['run', 'p.yaml', '--json']);
  assert.is(second.exitCode, 0, second.stderr);
  assert.match(second.stderr, /out\/a\.txt has 3 bytes, 13 when published/);
  assert.is(readFileSync(path.join(dir, 'a.txt'), 'utf8'), 'hello, cache\n');
});

test.run();
