// The cache through the real CLI: an entry whose files changed after publishing (a flipped byte, a
// half-copied file) is detected, removed and recomputed; never used.
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { execa } from 'execa';
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

// A cache that cannot be written: the stage that would write it fails saying which directory and
// what to do, its dependents are skipped, the stage table is printed, exit 1; no raw EROFS/ENOTDIR.
function assertCacheProblem(result: { exitCode: number; stderr: string }, cache: string, reason: RegExp) {
  assert.is(result.exitCode, 1, result.stderr);
  const message = new RegExp(`^one\\s+failed\\s+.*cannot write to the cache ${cache.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}: ${reason.source}\\. Make it a writable directory, or choose another with --cache DIR`, 'm');
  assert.match(result.stderr, message);
  assert.match(result.stderr, /^count\s+skipped\s+.*upstream stage 'one' did not complete/m);
  assert.not.match(result.stderr, /^pipe run: E[A-Z]+:/m);
}

const twoStages = 'name: ro\nstages:\n  one:\n    run: "echo 1 > one.txt"\n    outs: [one.txt]\n  count:\n    run: "wc -c < one.txt > n.txt"\n    deps: [one.txt]\n    outs: [n.txt]\n';

test('a cache path that is a file: a clear failure naming the cache, and the stage table', async () => {
  const dir = project({ 'p.yaml': twoStages, 'not-a-dir': 'x' });
  const result = await pipe(dir, ['run', 'p.yaml', '--cache', 'not-a-dir']);
  const cache = path.join(dir, 'not-a-dir');
  assertCacheProblem(result, cache, new RegExp(`${cache.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} is a file, not a directory`));
});

test('a cache on a read-only file system (a read-only tmpfs; needs mount, as root in CI)', async () => {
  const dir = project({ 'p.yaml': twoStages });
  const cache = path.join(dir, 'ro-cache');
  mkdirSync(cache);
  const mounted = await execa('mount', ['-t', 'tmpfs', '-o', 'ro,size=1m', 'tmpfs', cache], { reject: false });
  if (mounted.exitCode !== 0) {
    console.log(`  (read-only mount not possible here: ${String(mounted.stderr).trim()}; the file case above covers the message)`);
    return;
  }
  try {
    assertCacheProblem(await pipe(dir, ['run', 'p.yaml', '--cache', 'ro-cache']), cache, /.* is on a read-only file system/);
  } finally {
    await execa('umount', [cache], { reject: false });
  }
});

test('a full disk under the cache: the stage fails saying so, nothing half-written stays (a small tmpfs; needs mount)', async () => {
  const dir = project({ 'p.yaml': 'name: full\nstages:\n  big:\n    run: "head -c 2000000 /dev/zero > big.bin"\n    outs: [big.bin]\n' });
  const cache = path.join(dir, 'small-cache');
  mkdirSync(cache);
  const mounted = await execa('mount', ['-t', 'tmpfs', '-o', 'size=256k', 'tmpfs', cache], { reject: false });
  if (mounted.exitCode !== 0) {
    console.log(`  (tmpfs mount not possible here: ${String(mounted.stderr).trim()})`);
    return;
  }
  try {
    const result = await pipe(dir, ['run', 'p.yaml', '--cache', 'small-cache']);
    assert.is(result.exitCode, 1, result.stderr);
    assert.match(result.stderr, /^big\s+failed\s+.*no space left on the device writing .*small-cache\/tmp\/.*\/out\/big\.bin: free some space/m);
    assert.not.match(result.stderr, /^\s+at /m, 'no stack trace');
    assert.equal(readdirSync(path.join(cache, 'tmp')), []);
    assert.equal(readdirSync(path.join(cache, 'locks')), []);
  } finally {
    await execa('umount', [cache], { reject: false });
  }
});

test.run();
