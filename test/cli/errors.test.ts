// Every class of pipeline error, with its exact message and location, all reported at once.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { pipe, project } from '../helpers/cli.ts';

test('malformed YAML names the file, line and column, with the source line and an underline', async () => {
  const dir = project({ 'p.yaml': 'name: demo\nstages:\n  a: {run: echo\n', 'tab.yaml': 'name: demo\nstages:\n\ta: {run: echo}\n' });
  const r = await pipe(dir, ['run', 'p.yaml']);
  assert.is(r.exitCode, 2);
  assert.is(r.stderr, [
    'p.yaml:3:15: error: malformed YAML: Flow map in block collection must be sufficiently indented and end with a }',
    '    a: {run: echo',
    '                ~',
    '1 problem found',
  ].join('\n'));
  const tab = await pipe(dir, ['status', 'tab.yaml']);
  assert.is(tab.exitCode, 2);
  assert.ok(tab.stderr.startsWith('tab.yaml:3:1: error: malformed YAML: Tabs are not allowed as indentation\n  \ta: {run: echo}\n  ~\n'), tab.stderr);
});

test('duplicate stage names', async () => {
  const dir = project({ 'p.yaml': 'name: demo\nstages:\n  a:\n    run: echo 1\n  a:\n    run: echo 2\n' });
  const r = await pipe(dir, ['run', 'p.yaml']);
  assert.is(r.exitCode, 2);
  assert.ok(r.stderr.includes("p.yaml:5:3: error: stages.a: duplicate name: 'a' is defined more than once"), r.stderr);
});

test('every problem at once: unknown field, kind, param, stage, param reference, mistyped param', async () => {
  const text = [
    'name: demo',
    'params:',
    '  rate: 0.5',
    'stages:',
    '  a:',
    '    run: [echo, "${params.missing}"]',
    '  b:',
    '    kind: nope',
    '  c:',
    '    run: echo c',
    '    needs: [zzz]',
    '    colour: red',
    '  d:',
    '    kind: split',
    '    needs: [e]',
    '    with:',
    '      seed: "x"',
    '      bogus: 1',
    '  e:',
    '    kind: fetch',
    '    with:',
    '      source: ./data',
    '',
  ].join('\n');
  const dir = project({ 'p.yaml': text });
  const r = await pipe(dir, ['run', 'p.yaml', '-p', 'rate=fast', '-p', 'nope=1']);
  assert.is(r.exitCode, 2);
  const expected = [
    "<command line>: error: -p nope=1: unknown param 'nope' (params of p.yaml: rate)",
    "<command line>: error: -p rate=fast: param 'rate': expected a number, got 'fast'",
    "p.yaml:6:17: error: stages.a.run.1: unknown param 'missing' in ${params.missing} (declared params: rate)",
    "p.yaml:8:11: error: stages.b.kind: unknown stage kind 'nope' (expected one of: fetch, split, augment, extract-features, derive-activations, train-head, fine-tune, evaluate, or 'run:' for a command)",
    "p.yaml:11:13: error: stages.c.needs.0: no stage named 'zzz' (stages: a, b, c, d, e)",
    "p.yaml:12:5: error: stages.c.colour: unknown field 'colour'",
    'p.yaml:17:13: error: stages.d.with.seed: expected an integer, got string "x"',
    "p.yaml:18:7: error: stages.d.with.bogus: unknown parameter 'bogus' for stage kind 'split'",
  ];
  for (const line of expected) assert.ok(r.stderr.includes(line), `missing:\n${line}\nin:\n${r.stderr}`);
  assert.match(r.stderr, /8 problems found/);
});

test('a cycle is printed', async () => {
  const text = 'name: demo\nstages:\n  a:\n    run: echo a\n    needs: [c]\n  b:\n    run: echo b\n    needs: [a]\n  c:\n    run: echo c\n    needs: [b]\n';
  const dir = project({ 'p.yaml': text });
  const r = await pipe(dir, ['run', 'p.yaml']);
  assert.is(r.exitCode, 2);
  assert.match(r.stderr, /p\.yaml:\d+:\d+: error: stages\.\w\.needs: dependency cycle: (\w) → \w → \w → \1/);
});

test('usage errors exit 2', async () => {
  const dir = project({});
  assert.is((await pipe(dir, ['run'])).exitCode, 2);
  assert.is((await pipe(dir, ['frobnicate'])).exitCode, 2);
  const missing = await pipe(dir, ['run', 'nope.yaml']);
  assert.is(missing.exitCode, 2);
  assert.match(missing.stderr, /nope\.yaml: error: cannot read pipeline: no such file/);
  const shards = await pipe(project({ 'p.yaml': 'name: demo\nstages:\n  a: {run: echo}\n' }), ['run', 'p.yaml', '--queue', 'redis://127.0.0.1:1', '--shards', '0']);
  assert.is(shards.exitCode, 2, shards.stderr);
  assert.match(shards.stderr, /--shards 0: expected a whole number ≥ 1/);
});

test.run();
