// The executor through the real CLI: caching, explanations, failures, kill-and-resume, concurrency.
import { existsSync, readdirSync, readFileSync, writeFileSync, rmSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project, startPipe } from '../helpers/cli.ts';

// Each command appends to count-<stage> so tests can count executions.
const demo = `name: demo
params:
  greeting: hello
  n: 3
stages:
  make:
    run: [sh, -c, "echo \${params.greeting} > a.txt; echo x >> count-make"]
    outs: [a.txt]
  count:
    run: "wc -c < a.txt > b.txt; echo x >> count-count"
    deps: [a.txt]
    outs: [b.txt]
  other:
    run: "echo \${params.n} > c.txt; echo x >> count-other"
    outs: [c.txt]
`;

const count = (dir: string, stage: string) => {
  const file = path.join(dir, `count-${stage}`);
  return existsSync(file) ? readFileSync(file, 'utf8').trim().split('\n').length : 0;
};

const statuses = (json: string) =>
  Object.fromEntries((JSON.parse(json) as { stages: Array<{ name: string; status: string }> }).stages.map((s) => [s.name, s.status]));

test('a second run is fully cached', async () => {
  const dir = project({ 'p.yaml': demo });
  const first = await pipe(dir, ['run', 'p.yaml', '--json']);
  assert.is(first.exitCode, 0, first.stderr);
  assert.equal(statuses(first.stdout), { make: 'ran', count: 'ran', other: 'ran' });
  assert.is(readFileSync(path.join(dir, 'b.txt'), 'utf8').trim(), '6');
  const second = await pipe(dir, ['run', 'p.yaml', '--json']);
  assert.is(second.exitCode, 0);
  assert.equal(statuses(second.stdout), { make: 'cached', count: 'cached', other: 'cached' });
  // The latest run links each stage's artifacts.
  assert.is(readFileSync(path.join(dir, 'runs', 'demo', 'latest', 'stages', 'count', 'b.txt'), 'utf8').trim(), '6');
  assert.equal([count(dir, 'make'), count(dir, 'count'), count(dir, 'other')], [1, 1, 1]);
  const summary = JSON.parse(second.stdout) as { stages: Array<{ fingerprint: string; durationMs: number }> };
  assert.ok(summary.stages.every((s) => /^[0-9a-f]{64}$/.test(s.fingerprint) && typeof s.durationMs === 'number'));
});

test('a param change re-runs exactly the affected stages, and status names the param', async () => {
  const dir = project({ 'p.yaml': demo });
  assert.is((await pipe(dir, ['run', 'p.yaml'])).exitCode, 0);
  const status = await pipe(dir, ['status', 'p.yaml', '-p', 'greeting=bonjour']);
  assert.is(status.exitCode, 0);
  assert.match(status.stdout, /^make\s+will run\s+\w+\s+param greeting changed: hello → bonjour/m);
  assert.match(status.stdout, /^count\s+will run\s+\w+\s+upstream stage 'make' changed/m);
  assert.match(status.stdout, /^other\s+cached/m);
  const run = await pipe(dir, ['run', 'p.yaml', '-p', 'greeting=bonjour', '--json']);
  assert.equal(statuses(run.stdout), { make: 'ran', count: 'ran', other: 'cached' });
  assert.is(readFileSync(path.join(dir, 'b.txt'), 'utf8').trim(), '8');
  // Back to the default: everything comes from the cache, and outputs are restored.
  const back = await pipe(dir, ['run', 'p.yaml', '--json']);
  assert.equal(statuses(back.stdout), { make: 'cached', count: 'cached', other: 'cached' });
  assert.is(readFileSync(path.join(dir, 'a.txt'), 'utf8').trim(), 'hello');
  assert.is(readFileSync(path.join(dir, 'b.txt'), 'utf8').trim(), '6');
});

test('an input file change is named by status', async () => {
  const text = 'name: deps\nstages:\n  copy:\n    run: cp in.txt out.txt\n    deps: [in.txt]\n    outs: [out.txt]\n';
  const dir = project({ 'p.yaml': text, 'in.txt': 'one\n' });
  assert.is((await pipe(dir, ['run', 'p.yaml'])).exitCode, 0);
  writeFileSync(path.join(dir, 'in.txt'), 'two\n');
  const status = await pipe(dir, ['status', 'p.yaml']);
  assert.match(status.stdout, /copy\s+will run\s+\w+\s+input in\.txt changed/);
});

test('a failed stage stops its dependents; independent branches finish; exit 1', async () => {
  const text = `name: fail
stages:
  bad:
    run: "echo boom >&2; exit 3"
  after:
    run: echo after
    needs: [bad]
  independent:
    run: "sleep 1; echo ok > ok.txt"
    outs: [ok.txt]
`;
  const dir = project({ 'p.yaml': text });
  const r = await pipe(dir, ['run', 'p.yaml', '--json']);
  assert.is(r.exitCode, 1);
  assert.equal(statuses(r.stdout), { bad: 'failed', after: 'skipped', independent: 'ran' });
  const summary = JSON.parse(r.stdout) as { stages: Array<{ name: string; error?: string }> };
  assert.match(summary.stages.find((s) => s.name === 'bad')?.error ?? '', /command exited with code 3/);
  assert.match(summary.stages.find((s) => s.name === 'after')?.error ?? '', /upstream stage 'bad' did not complete/);
  // The run log keeps the stage's output.
  const runs = readdirSync(path.join(dir, 'runs', 'fail'));
  const log = readFileSync(path.join(dir, 'runs', 'fail', runs[0] ?? '', 'log.txt'), 'utf8');
  assert.match(log, /\[bad\] stderr: boom/);
  const fast = await pipe(dir, ['run', 'p.yaml', '--json', '--fail-fast', '--force', 'independent']);
  assert.is(fast.exitCode, 1);
  const st = statuses(fast.stdout);
  assert.is(st['bad'], 'failed');
  assert.ok(st['independent'] === 'failed' || st['independent'] === 'skipped', JSON.stringify(st));
});

test('--force re-runs a stage and what depends on it', async () => {
  const dir = project({ 'p.yaml': demo });
  await pipe(dir, ['run', 'p.yaml']);
  const r = await pipe(dir, ['run', 'p.yaml', '--force', 'make', '--json']);
  assert.equal(statuses(r.stdout), { make: 'ran', count: 'ran', other: 'cached' });
  assert.is(count(dir, 'make'), 2);
});

test('SIGKILL during a stage, then a re-run completes and reuses the finished stages', async () => {
  const text = `name: killme
stages:
  fast:
    run: "echo fast > fast.txt; echo x >> count-fast"
    outs: [fast.txt]
  slow:
    run: "echo started > started; if [ -f block ]; then sleep 60; fi; echo done > slow.txt; echo x >> count-slow"
    outs: [slow.txt]
    needs: [fast]
`;
  const dir = project({ 'p.yaml': text, block: '' });
  const child = startPipe(dir, ['run', 'p.yaml']);
  const deadline = Date.now() + 30_000;
  while (!existsSync(path.join(dir, 'started')) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
  assert.ok(existsSync(path.join(dir, 'started')), 'slow stage never started');
  child.kill('SIGKILL');
  await child;
  const entries = path.join(dir, 'runs', 'cache', 'entries');
  // Only complete entries are visible: fast's.
  const visible = readdirSync(entries);
  assert.is(visible.length, 1);
  for (const fp of visible) assert.ok(existsSync(path.join(entries, fp, 'result.json')));
  rmSync(path.join(dir, 'block'));
  const again = await pipe(dir, ['run', 'p.yaml', '--json']);
  assert.is(again.exitCode, 0, again.stderr);
  assert.equal(statuses(again.stdout), { fast: 'cached', slow: 'ran' });
  assert.is(count(dir, 'fast'), 1);
  assert.is(count(dir, 'slow'), 1);
  // The abandoned temporary entry was cleaned up.
  assert.equal(readdirSync(path.join(dir, 'runs', 'cache', 'tmp')), []);
});

test('two concurrent runs compute each stage once and leave a consistent cache', async () => {
  const text = `name: twice
stages:
  a:
    run: "sleep 1; echo a > a.txt; echo x >> count-a"
    outs: [a.txt]
  b:
    run: "sleep 1; cat a.txt > b.txt; echo x >> count-b"
    deps: [a.txt]
    outs: [b.txt]
`;
  const dir = project({ 'p.yaml': text });
  const [one, two] = await Promise.all([pipe(dir, ['run', 'p.yaml', '--json']), pipe(dir, ['run', 'p.yaml', '--json'])]);
  assert.is(one.exitCode, 0, one.stderr);
  assert.is(two.exitCode, 0, two.stderr);
  assert.is(count(dir, 'a'), 1);
  assert.is(count(dir, 'b'), 1);
  const entries = path.join(dir, 'runs', 'cache', 'entries');
  const fps = readdirSync(entries);
  assert.is(fps.length, 2);
  for (const fp of fps) {
    assert.ok(existsSync(path.join(entries, fp, 'result.json')));
    assert.ok(existsSync(path.join(entries, fp, 'record.json')));
  }
  assert.equal(readdirSync(path.join(dir, 'runs', 'cache', 'tmp')), []);
  const third = await pipe(dir, ['run', 'p.yaml', '--json']);
  assert.equal(statuses(third.stdout), { a: 'cached', b: 'cached' });
});

test('gc removes entries no pipeline references, with a dry run first', async () => {
  const dir = project({ 'p.yaml': demo });
  await pipe(dir, ['run', 'p.yaml', '-p', 'n=5']);
  await pipe(dir, ['run', 'p.yaml']);
  const dry = await pipe(dir, ['gc', 'p.yaml', '--dry-run']);
  assert.is(dry.exitCode, 0, dry.stderr);
  // Only the n=5 entry of 'other' is referenced neither by the defaults nor by the last run.
  assert.is(dry.stdout.match(/^would remove \w+\s+command/gm)?.length, 1, dry.stdout);
  assert.match(dry.stdout, /cache .*: 4 entries, .*would remove 1 /);
  const gc = await pipe(dir, ['gc', 'p.yaml']);
  assert.match(gc.stdout, /removed 1 \(/, gc.stdout);
  const after = await pipe(dir, ['gc', 'p.yaml', '--dry-run']);
  assert.match(after.stdout, /3 entries, .*would remove 0 /, after.stdout);
  const run = await pipe(dir, ['run', 'p.yaml', '--json']);
  assert.equal(statuses(run.stdout), { make: 'cached', count: 'cached', other: 'cached' });
});

test.run();
