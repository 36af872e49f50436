// Sampled sweeps through the real CLI: a space drawn quasi-randomly, reproducible by its seed,
// extended without recomputing the first trials, -S distribution forms, located errors.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project } from '../helpers/cli.ts';

const text = (samples: number, seed = 5) => `name: sampled
params:
  lr: 0.001
  depth: 1
stages:
  data:
    run: "echo data > data.txt; echo x >> count-data"
    outs: [data.txt]
  tune:
    run: "echo '{\\"lr\\": \${params.lr}, \\"depth\\": \${params.depth}}' > m-\${params.lr}-\${params.depth}.json; echo x >> count-tune"
    deps: [data.txt]
    outs: ["m-\${params.lr}-\${params.depth}.json"]
    metrics: ["m-\${params.lr}-\${params.depth}.json"]
sweep:
  space:
    lr: {loguniform: [1.0e-6, 1.0e-4]}
    depth: {int: [1, 3]}
  samples: ${samples}
  seed: ${seed}
  objective: lr
`;

interface SweepJson {
  trials: Array<{ id: string; values: { lr: number; depth: number }; status: string; metrics: Record<string, number> }>;
  stages: Array<{ name: string; status: string }>;
}

const count = (dir: string, stage: string) => {
  const file = path.join(dir, `count-${stage}`);
  return existsSync(file) ? readFileSync(file, 'utf8').trim().split('\n').length : 0;
};

const byId = (r: SweepJson) => Object.fromEntries(r.trials.map((t) => [t.id, t.values]));

test('a sampled space: N trials in range, the same for the same seed; 2N reuses the first N from the cache', async () => {
  const dir = project({ 'p.yaml': text(4) });
  const first = await pipe(dir, ['sweep', 'p.yaml', '--json']);
  assert.is(first.exitCode, 0, first.stderr);
  const four = JSON.parse(first.stdout) as SweepJson;
  assert.is(four.trials.length, 4);
  for (const t of four.trials) {
    assert.ok(t.values.lr >= 1e-6 && t.values.lr <= 1e-4, JSON.stringify(t.values));
    assert.ok([1, 2, 3].includes(t.values.depth), JSON.stringify(t.values));
    assert.is(t.metrics['lr'], t.values.lr, 'the stage saw the sampled value');
  }
  assert.is(count(dir, 'tune'), 4);

  const dry = await pipe(dir, ['sweep', 'p.yaml', '--dry-run']);
  assert.match(dry.stdout, /4 trials:/);

  writeFile(dir, 'p.yaml', text(8));
  const more = await pipe(dir, ['sweep', 'p.yaml', '--json']);
  assert.is(more.exitCode, 0, more.stderr);
  const eight = JSON.parse(more.stdout) as SweepJson;
  assert.is(eight.trials.length, 8);
  const firstFour = byId(four);
  for (const [id, values] of Object.entries(firstFour)) assert.equal(byId(eight)[id], values, `trial ${id} kept its values`);
  assert.is(count(dir, 'tune'), 8, 'only the 4 new trials ran');
  assert.is(eight.stages.filter((s) => s.status === 'cached').length, 5, 'data + the first 4 tunes came from the cache');

  // --samples on the command line, and another seed gives another design.
  const cli = await pipe(dir, ['sweep', 'p.yaml', '--samples', '2', '--dry-run']);
  assert.match(cli.stdout, /2 trials:/);
  const otherSeed = await pipe(dir, ['sweep', 'p.yaml', '--samples', '4', '--seed', '6', '--json']);
  assert.is(otherSeed.exitCode, 0, otherSeed.stderr);
  assert.not.equal(byId(JSON.parse(otherSeed.stdout) as SweepJson), firstFour);
});

test('-S takes the same forms: a distribution replaces the space dimension, a list makes it a grid', async () => {
  const dir = project({ 'p.yaml': text(3) });
  const r = await pipe(dir, ['sweep', 'p.yaml', '-S', 'depth=choice(7,9)', '-S', 'lr=uniform(0.5,0.6)', '--json']);
  assert.is(r.exitCode, 0, r.stderr);
  const trials = (JSON.parse(r.stdout) as SweepJson).trials;
  assert.is(trials.length, 3);
  assert.ok(trials.every((t) => [7, 9].includes(t.values.depth) && t.values.lr >= 0.5 && t.values.lr <= 0.6), JSON.stringify(trials));
  // A grid over depth crossed with 2 samples of lr: 2 × 2 trials, sample-major.
  const crossed = await pipe(dir, ['sweep', 'p.yaml', '-S', 'depth=1,2', '--samples', '2', '--json']);
  const ct = (JSON.parse(crossed.stdout) as SweepJson).trials;
  assert.is(ct.length, 4);
  const ids = Object.fromEntries(ct.map((t) => [t.id, t.values]));
  assert.equal([ids['t1']?.depth, ids['t2']?.depth, ids['t3']?.depth, ids['t4']?.depth], [1, 2, 1, 2]);
  assert.is(ids['t1']?.lr, ids['t2']?.lr);
});

test('bad spaces are located errors, exit 2', async () => {
  const schema = project({ 'p.yaml': text(3).replace('lr: {loguniform: [1.0e-6, 1.0e-4]}', 'lr: {loguniform: [0, 1]}') });
  const s = await pipe(schema, ['sweep', 'p.yaml', '--dry-run']);
  assert.is(s.exitCode, 2);
  assert.ok(s.stderr.includes('p.yaml:16:23: error: sweep.space.lr.loguniform.0: expected a value > 0, got 0'), s.stderr);
  const dir = project({ 'p.yaml': text(3).replace('depth: {int: [1, 3]}', 'depth: {uniform: [1, 3]}').replace('lr: {loguniform: [1.0e-6, 1.0e-4]}', 'lr: {loguniform: [1.0e-4, 1.0e-6]}') });
  const r = await pipe(dir, ['sweep', 'p.yaml', '--dry-run']);
  assert.is(r.exitCode, 2);
  assert.ok(r.stderr.includes("p.yaml:16:9: error: sweep.space.lr: param 'lr': loguniform: expected low < high, got [0.0001, 0.000001]"), r.stderr);
  assert.ok(r.stderr.includes("p.yaml:17:12: error: sweep.space.depth: param 'depth': uniform draws numbers, but the param is an integer (use int or choice)"), r.stderr);
  const noSamples = project({ 'p.yaml': text(3).replace('  samples: 3\n', '') });
  const ns = await pipe(noSamples, ['sweep', 'p.yaml', '--dry-run']);
  assert.is(ns.exitCode, 2);
  assert.match(ns.stderr, /a sampled space needs a number of samples: add `samples: N` to sweep:, or give --samples N/);
  const cli = await pipe(noSamples, ['sweep', 'p.yaml', '--samples', '2', '-S', 'lr=loguniform(1,x)', '--dry-run']);
  assert.is(cli.exitCode, 2);
  assert.ok(cli.stderr.includes("-S lr=loguniform(1,x): param 'lr': loguniform: expected a number, got 'x'"), cli.stderr);
  const badFlag = await pipe(noSamples, ['sweep', 'p.yaml', '--samples', '0']);
  assert.is(badFlag.exitCode, 2);
  assert.match(badFlag.stderr, /--samples 0: expected a whole number ≥ 1/);
});

function writeFile(dir: string, name: string, content: string): void {
  writeFileSync(path.join(dir, name), content);
}

test.run();
