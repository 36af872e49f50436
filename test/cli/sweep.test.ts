// Sweeps through the real CLI: shared stages run once, re-runs run nothing, a new value runs only
// its trials, a failing trial leaves the others complete.
import { existsSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project } from '../helpers/cli.ts';

const text = `name: sw
params:
  lr: 0.1
  depth: 1
stages:
  data:
    run: "echo data > data.txt; echo x >> count-data"
    outs: [data.txt]
  head:
    run: "echo head-\${params.depth} > head-\${params.depth}.txt; echo x >> count-head"
    deps: [data.txt]
    outs: ["head-\${params.depth}.txt"]
  tune:
    run: "test \${params.lr} != 0 || exit 7; echo '{\\"score\\": \${params.depth}.\${params.lr}}' > m-\${params.depth}-\${params.lr}.json; echo x >> count-tune"
    deps: ["head-\${params.depth}.txt"]
    outs: ["m-\${params.depth}-\${params.lr}.json"]
    metrics: ["m-\${params.depth}-\${params.lr}.json"]
sweep:
  grid:
    depth: [1, 2]
  objective: score
`;

const count = (dir: string, stage: string) => {
  const file = path.join(dir, `count-${stage}`);
  return existsSync(file) ? readFileSync(file, 'utf8').trim().split('\n').length : 0;
};

interface SweepJson {
  trials: Array<{ id: string; values: Record<string, unknown>; status: string; error?: string; metrics: Record<string, number> }>;
  stages: Array<{ name: string; status: string }>;
}

test('shared stages run once; a re-run runs nothing; a new value runs only the new trials', async () => {
  const dir = project({ 'p.yaml': text });
  const dry = await pipe(dir, ['sweep', 'p.yaml', '-S', 'lr=1,2', '--dry-run']);
  assert.is(dry.exitCode, 0, dry.stderr);
  assert.match(dry.stdout, /4 trials:/);
  assert.match(dry.stdout, /data\s+will run\s+all trials/);
  assert.match(dry.stdout, /head\[depth=1\]\s+will run\s+t1, t2/);

  const first = await pipe(dir, ['sweep', 'p.yaml', '-S', 'lr=1,2', '--json']);
  assert.is(first.exitCode, 0, first.stderr);
  const result = JSON.parse(first.stdout) as SweepJson;
  assert.is(result.trials.length, 4);
  assert.ok(result.trials.every((t) => t.status === 'succeeded'));
  assert.equal([count(dir, 'data'), count(dir, 'head'), count(dir, 'tune')], [1, 2, 4]);
  // Sorted by the objective, best first.
  assert.equal(result.trials.map((t) => t.metrics['score']), [2.2, 2.1, 1.2, 1.1]);
  assert.match(first.stderr, /trial\s+depth\s+lr\s+status\s+score/);

  const again = await pipe(dir, ['sweep', 'p.yaml', '-S', 'lr=1,2', '--json']);
  assert.is(again.exitCode, 0);
  assert.ok((JSON.parse(again.stdout) as SweepJson).stages.every((s) => s.status === 'cached'));
  assert.equal([count(dir, 'data'), count(dir, 'head'), count(dir, 'tune')], [1, 2, 4]);

  const more = await pipe(dir, ['sweep', 'p.yaml', '-S', 'lr=1,2,3', '--json']);
  assert.is(more.exitCode, 0);
  assert.is((JSON.parse(more.stdout) as SweepJson).trials.length, 6);
  assert.equal([count(dir, 'data'), count(dir, 'head'), count(dir, 'tune')], [1, 2, 6]);
});

test('a failing trial does not stop the others, and the summary says why', async () => {
  const dir = project({ 'p.yaml': text });
  const r = await pipe(dir, ['sweep', 'p.yaml', '-S', 'lr=0,5', '--json']);
  assert.is(r.exitCode, 1);
  const result = JSON.parse(r.stdout) as SweepJson;
  const failed = result.trials.filter((t) => t.status === 'failed');
  assert.equal(failed.map((t) => t.values['lr']).sort(), [0, 0]);
  assert.match(failed[0]?.error ?? '', /tune: command exited with code 7/);
  assert.is(result.trials.filter((t) => t.status === 'succeeded').length, 2);
  assert.match(r.stderr, /t\d failed: tune: command exited with code 7/);
  // Resume: only the failed trials run again.
  const again = await pipe(dir, ['sweep', 'p.yaml', '-S', 'lr=0,5', '--json']);
  const stages = (JSON.parse(again.stdout) as SweepJson).stages;
  assert.equal(stages.filter((s) => s.status !== 'cached').map((s) => s.status), ['failed', 'failed']);
});

test('sweep errors: unknown param, mistyped value, swept and overridden', async () => {
  const dir = project({ 'p.yaml': text });
  const r = await pipe(dir, ['sweep', 'p.yaml', '-S', 'nope=1,2', '-S', 'lr=1,x']);
  assert.is(r.exitCode, 2);
  assert.ok(r.stderr.includes("<command line>: error: -S nope=1,2: unknown param 'nope' (params of p.yaml: lr, depth)"), r.stderr);
  assert.ok(r.stderr.includes("<command line>: error: -S lr=1,x: param 'lr': expected a number, got 'x'"), r.stderr);
  const both = await pipe(dir, ['sweep', 'p.yaml', '-p', 'depth=3']);
  assert.is(both.exitCode, 2);
  assert.match(both.stderr, /param 'depth' is swept; it cannot also be overridden with -p/);
});

test.run();
