// Planning is pure: fingerprints from params, inputs and upstream; decisions from the cache and
// the last recorded state.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { analyze } from '../../src/pipeline/analyze.ts';
import { parsePipeline } from '../../src/pipeline/pipeline.ts';
import { decide, fingerprintStages } from '../../src/plan/plan.ts';
import { stageKinds } from '../../src/stages/index.ts';

const text = `name: p
params:
  n: 1
stages:
  a:
    run: echo \${params.n} > a.txt
    outs: [a.txt]
  b:
    run: cat a.txt > b.txt
    deps: [a.txt, in.txt]
    outs: [b.txt]
  c:
    run: echo c
`;

async function analyzed(n: number) {
  const loaded = parsePipeline(text, 'p.yaml', '/project');
  assert.ok(loaded.file);
  const result = await analyze(loaded.file, { kinds: stageKinds, values: { n } });
  assert.ok(result.ok);
  return result.value;
}

test("a dep that is another stage's out links the stages; other deps are hashed inputs", async () => {
  const pipeline = await analyzed(1);
  const b = pipeline.stages.find((s) => s.name === 'b');
  assert.equal(b?.upstream, ['a']);
  assert.equal(b?.inputPaths, ['/project/in.txt']);
  assert.equal(pipeline.stages.map((s) => s.name), ['a', 'b', 'c']);
});

test('a param change moves the fingerprints of the stage and its dependents only', async () => {
  const hashes = { '/project/in.txt': 'h1' };
  const one = fingerprintStages(await analyzed(1), hashes, {});
  const two = fingerprintStages(await analyzed(2), hashes, {});
  const fp = (list: typeof one, name: string) => list.find((s) => s.stage.name === name)?.fingerprint;
  assert.is.not(fp(one, 'a'), fp(two, 'a'));
  assert.is.not(fp(one, 'b'), fp(two, 'b'));
  assert.is(fp(one, 'c'), fp(two, 'c'));
  const changedInput = fingerprintStages(await analyzed(1), { '/project/in.txt': 'h2' }, {});
  assert.is(fp(one, 'a'), fp(changedInput, 'a'));
  assert.is.not(fp(one, 'b'), fp(changedInput, 'b'));
});

test('decide: cached entries are reused, changes are explained, --force reaches dependents', async () => {
  const hashes = { '/project/in.txt': 'h1' };
  const one = fingerprintStages(await analyzed(1), hashes, {});
  const two = fingerprintStages(await analyzed(2), hashes, {});
  const state = { stages: Object.fromEntries(one.map((s) => [s.stage.name, { fingerprint: s.fingerprint, record: s.record, at: 0 }])) };
  const cached = new Set(one.map((s) => s.fingerprint));
  const plan = decide(two, cached, state, new Set());
  assert.equal(plan.map((s) => [s.name, s.cached]), [['a', false], ['b', false], ['c', true]]);
  assert.equal(plan[0]?.reasons, ['param n changed: 1 → 2', 'command changed: echo 1 > a.txt → echo 2 > a.txt']);
  assert.equal(plan[1]?.reasons, ["upstream stage 'a' changed"]);
  const forced = decide(one, cached, state, new Set(['a']));
  assert.equal(forced.map((s) => [s.name, s.cached, s.reasons[0]]), [
    ['a', false, 'forced (--force)'],
    ['b', false, "upstream stage 'a' is forced"],
    ['c', true, undefined],
  ]);
  const fresh = decide(one, new Set(), { stages: {} }, new Set());
  assert.equal(fresh[2]?.reasons, ['no cached result (first run of this stage)']);
});

test.run();
