// Analysis, part by part: params and overrides, kinds, stage params, input slots, the DAG. Each
// problem is a diagnostic naming the field and what was expected; all of them come back at once.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { analyze, convertOverride, findCycle, parseOverride, type AnalyzeOptions } from '../../src/pipeline/analyze.ts';
import { parsePipeline } from '../../src/pipeline/pipeline.ts';
import type { Diagnostic } from '../../src/core/diagnostics.ts';
import { stageKinds } from '../../src/stages/index.ts';

async function run(text: string, options: Partial<AnalyzeOptions> = {}) {
  const loaded = parsePipeline(text, 'p.yaml', '/project');
  assert.ok(loaded.file, JSON.stringify(loaded.diagnostics));
  assert.equal(loaded.diagnostics, []);
  return analyze(loaded.file, { kinds: stageKinds, cwd: '/srv/data', ...options });
}

async function analyzed(text: string, options: Partial<AnalyzeOptions> = {}) {
  const result = await run(text, options);
  assert.ok(result.ok, JSON.stringify(!result.ok && result.diagnostics));
  return result.value;
}

async function problems(text: string, options: Partial<AnalyzeOptions> = {}): Promise<Array<Pick<Diagnostic, 'code' | 'field' | 'message' | 'line'>>> {
  const result = await run(text, options);
  assert.not.ok(result.ok, 'expected diagnostics');
  return result.ok ? [] : result.diagnostics.map(({ code, field, message, line }) => ({ code, field, message, line }));
}

const overrides = (...args: string[]) => args.map((arg) => parseOverride(arg)!);

// --- params ---------------------------------------------------------------------------------

const withParams = `name: p
params:
  n: 1
  rate: 0.5
  data: {type: path, default: data/in.txt}
  url: {type: path, default: "https://example.com/x.zip"}
stages:
  a:
    run: echo \${params.n} \${params.rate} \${params.data} \${params.url}
`;

test('params: defaults, with path defaults resolved against the pipeline directory (URLs kept)', async () => {
  const { params } = await analyzed(withParams);
  assert.equal(params, { n: 1, rate: 0.5, data: '/project/data/in.txt', url: 'https://example.com/x.zip' });
});

test('params: -p overrides are typed by the declaration; paths resolve against the working directory', async () => {
  const { params, stages } = await analyzed(withParams, { overrides: overrides('n=7', 'rate=1e-3', 'data=./other.txt') });
  assert.equal(params, { n: 7, rate: 0.001, data: '/srv/data/other.txt', url: 'https://example.com/x.zip' });
  assert.is(stages[0]?.command, 'echo 7 0.001 /srv/data/other.txt https://example.com/x.zip');
  assert.equal(stages[0]?.params, { data: '/srv/data/other.txt', n: 7, rate: 0.001, url: 'https://example.com/x.zip' });
});

test('params: sweep values replace defaults without text; undeclared names are ignored', async () => {
  const { params } = await analyzed(withParams, { values: { n: 3, data: 'trials/1.txt', other: 1 } });
  assert.equal(params, { n: 3, rate: 0.5, data: '/srv/data/trials/1.txt', url: 'https://example.com/x.zip' });
});

test('params: an unknown -p name and a mistyped -p value are command-line diagnostics', async () => {
  assert.equal(await problems(withParams, { overrides: overrides('m=2', 'n=two', 'rate=fast') }), [
    { code: 'unknown-param', field: '-p m=2', line: 0, message: "unknown param 'm' (params of p.yaml: n, rate, data, url)" },
    { code: 'bad-override', field: '-p n=two', line: 0, message: "param 'n': expected an integer, got 'two'" },
    { code: 'bad-override', field: '-p rate=fast', line: 0, message: "param 'rate': expected a number, got 'fast'" },
  ]);
  const none = 'name: p\nstages:\n  a:\n    run: echo\n';
  assert.equal((await problems(none, { overrides: overrides('m=2') }))[0]?.message, "unknown param 'm' (p.yaml declares no params)");
});

test('convertOverride: each declared type, and the declaration\'s own constraints', () => {
  const decl = (type: string, extra: object = {}) => ({ name: 'x', type, default: null, ...extra }) as never;
  assert.equal(convertOverride(decl('integer'), ' 12 '), { value: 12 });
  assert.equal(convertOverride(decl('integer'), '1.5'), { error: "expected an integer, got '1.5'" });
  assert.equal(convertOverride(decl('boolean'), 'TRUE'), { value: true });
  assert.equal(convertOverride(decl('array'), '[1, 2]'), { value: [1, 2] });
  assert.equal(convertOverride(decl('array'), '[1,'), { error: "expected an array as JSON, got '[1,'" });
  assert.equal(convertOverride(decl('string'), ' a b '), { value: ' a b ' });
  assert.ok('error' in convertOverride(decl('integer', { minimum: 0, maximum: 10 }), '11'));
});

test('params: a ${params.X} that is not declared is reported at its node', async () => {
  const text = 'name: p\nparams:\n  n: 1\nstages:\n  a:\n    run: echo ${params.m}\n    env:\n      X: ${params.k}\n';
  assert.equal(await problems(text), [
    { code: 'missing-param', field: 'stages.a.env.X', line: 8, message: "unknown param 'k' in ${params.k} (declared params: n)" },
    { code: 'missing-param', field: 'stages.a.run', line: 6, message: "unknown param 'm' in ${params.m} (declared params: n)" },
  ]);
});

// --- kinds and stage params -----------------------------------------------------------------

test('kinds: an unknown kind names the kinds there are', async () => {
  const text = 'name: p\nstages:\n  a:\n    kind: fetsh\n';
  assert.equal(await problems(text), [
    {
      code: 'unknown-kind', field: 'stages.a.kind', line: 4,
      message: "unknown stage kind 'fetsh' (expected one of: fetch, split, augment, extract-features, derive-activations, train-head, fine-tune, evaluate, or 'run:' for a command)",
    },
  ]);
});

test("stage params: the kind's schema defaults are filled in, interpolated values typed", async () => {
  const text = 'name: p\nparams:\n  seed: 7\nstages:\n  fetch: {kind: fetch}\n  split:\n    kind: split\n    needs: [fetch]\n    with: {seed: "${params.seed}"}\n';
  const { stages } = await analyzed(text);
  assert.equal(stages[1]?.params, { seed: 7, batch_size: 32, test_batch_fraction: 0.2, test_fraction: 0.1, validation_fraction: 0.2 });
  assert.equal(stages[0]?.resources, { cpu: 1 });
});

test('stage params: an unknown name, a wrong type (naming the param it came from), a missing required one', async () => {
  const text = `name: p
params:
  seed: abc
stages:
  fetch: {kind: fetch}
  split:
    kind: split
    needs: [fetch]
    with:
      seed: \${params.seed}
      batch: 8
  tune:
    kind: fine-tune
    needs: [split]
    with: {epochs: 0}
`;
  assert.equal(await problems(text), [
    { code: 'unknown-param', field: 'stages.split.with.batch', line: 11, message: "unknown parameter 'batch' for stage kind 'split' (expected one of: seed, batch_size, test_batch_fraction, test_fraction, validation_fraction)" },
    { code: 'bad-param-type', field: 'stages.split.with.seed', line: 10, message: 'expected an integer, got string "abc" (from ${params.seed})' },
    { code: 'bad-param-type', field: 'stages.tune.with', line: 15, message: "missing required field 'fine_tune_at'" },
    { code: 'bad-param-type', field: 'stages.tune.with.epochs', line: 15, message: 'expected a value >= 1, got 0' },
  ]);
});

// --- inputs -----------------------------------------------------------------------------------

const data = '  fetch: {kind: fetch}\n  split: {kind: split, needs: [fetch]}\n';

test('inputs: slots bind to the one needed stage of an accepted kind, or explicitly', async () => {
  const text = `name: p\nstages:\n${data}  features: {kind: extract-features, needs: [split]}\n  head: {kind: train-head, needs: [features]}\n  evaluate:\n    kind: evaluate\n    needs: {model: head, data: split}\n`;
  const { stages } = await analyzed(text);
  const byName = Object.fromEntries(stages.map((s) => [s.name, s]));
  assert.equal(byName['features']?.inputs, { data: 'split' });
  assert.equal(byName['evaluate']?.inputs, { model: 'head', data: 'split' });
  assert.equal(byName['evaluate']?.upstream, ['head', 'split']);
});

test('inputs: a missing, unknown, mistyped or ambiguous input is a bad-input diagnostic', async () => {
  const text = `name: p
stages:
${data}  other: {kind: split, needs: [fetch]}
  lonely: {kind: augment}
  features: {kind: extract-features, needs: [split, other]}
  head:
    kind: train-head
    needs: {feature: features}
  evaluate:
    kind: evaluate
    needs: {model: split, data: split}
`;
  assert.equal(await problems(text), [
    { code: 'bad-input', field: 'stages.lonely.needs', line: 6, message: "stage kind 'augment' needs a stage of kind split for its input 'data'" },
    { code: 'bad-input', field: 'stages.features.needs', line: 7, message: "input 'data' could be any of split, other: bind it with needs: {data: STAGE}" },
    { code: 'bad-input', field: 'stages.head.needs.feature', line: 10, message: "stage kind 'train-head' has no input 'feature' (inputs: features)" },
    // Explicit needs leave no list to point at: the diagnostic points at the kind.
    { code: 'bad-input', field: 'stages.head.needs', line: 9, message: "stage kind 'train-head' needs a stage of kind extract-features for its input 'features'" },
    { code: 'bad-input', field: 'stages.evaluate.needs.model', line: 13, message: "input 'model' takes a stage of kind fine-tune or train-head, but 'split' is split" },
  ]);
});

// --- the DAG ----------------------------------------------------------------------------------

test('DAG: a dep that is another stage\'s out is an edge, other deps are hashed inputs; order is topological', async () => {
  const text = 'name: p\nstages:\n  b:\n    run: cat out/a.txt in.txt\n    deps: [out/a.txt, in.txt]\n  a:\n    run: echo a\n    outs: [out]\n';
  const { stages } = await analyzed(text);
  assert.equal(stages.map((s) => s.name), ['a', 'b']);
  assert.equal(stages[1]?.upstream, ['a']);
  assert.equal(stages[1]?.inputPaths, ['/project/in.txt']);
});

test('DAG: a missing needed stage, a stage that needs itself, and a cycle', async () => {
  const text = 'name: p\nstages:\n  a:\n    run: echo a\n    needs: [c, ghost]\n  b:\n    run: echo b\n    needs: [a, b]\n  c:\n    run: echo c\n    needs: [b]\n';
  assert.equal(await problems(text), [
    { code: 'missing-stage', field: 'stages.a.needs.1', line: 5, message: "no stage named 'ghost' (stages: a, b, c)" },
    { code: 'cycle', field: 'stages.b.needs', line: 8, message: "stage 'b' needs itself" },
    { code: 'cycle', field: 'stages.a.needs', line: 5, message: 'dependency cycle: a → b → c → a' },
  ]);
});

test('findCycle: none in a DAG; a cycle listed upstream first', () => {
  assert.is(findCycle([{ name: 'a', upstream: [] }, { name: 'b', upstream: ['a'] }]), undefined);
  assert.equal(findCycle([{ name: 'a', upstream: ['b'] }, { name: 'b', upstream: ['a'] }]), ['a', 'b', 'a']);
});

test('every part reports at once: params, kinds, stage params, inputs', async () => {
  const text = 'name: p\nstages:\n  a: {kind: nope}\n  b: {kind: split, with: {seed: x}}\n  c: {kind: augment, needs: [a]}\n';
  const codes = (await problems(text, { overrides: overrides('q=1') })).map((d) => d.code);
  assert.equal(codes, ['unknown-param', 'unknown-kind', 'bad-param-type', 'bad-input']);
});

test.run();
