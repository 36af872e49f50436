// Loading a pipeline file: YAML → a structurally valid pipeline with positions kept. Bad input
// never throws: each problem is a diagnostic at the line and column of the node at fault.
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { formatDiagnostic, type Diagnostic } from '../../src/core/diagnostics.ts';
import { checkParamValue, loadPipeline, parsePipeline, rangeOf } from '../../src/pipeline/pipeline.ts';

const located = (d: Diagnostic) => `${d.file}:${d.line}:${d.col} ${d.code} ${d.field}: ${d.message}`;
const parse = (text: string) => parsePipeline(text, 'p.yaml', '/project');

const valid = `name: demo
params:
  rate: 0.5
  size: {default: 3, type: integer, minimum: 1, description: how many}
  tags: [a, b]
stages:
  prepare:
    run: [sh, -c, "echo \${params.size} > n.txt"]
    outs: [n.txt]
    env: {MODE: fast}
    timeout: 30
  split:
    kind: split
    needs: {data: prepare}
    with: {seed: 7}
    resources: {cpu: 2}
`;

test('a valid file: fields read with their defaults, params plain or declared', () => {
  const { file, diagnostics } = parse(valid);
  assert.equal(diagnostics, []);
  assert.ok(file);
  assert.equal([file.name, file.experiment, file.flavour, file.tracking, file.cache, file.dir], ['demo', 'demo', 'auto', { uri: undefined, enabled: true }, undefined, '/project']);
  assert.equal(file.params, [
    { name: 'rate', type: 'number', default: 0.5 },
    { name: 'size', type: 'integer', default: 3, minimum: 1, description: 'how many' },
    { name: 'tags', type: 'array', default: ['a', 'b'] },
  ]);
  const [prepare, split] = file.stages;
  assert.equal(prepare, {
    name: 'prepare', kind: undefined, run: ['sh', '-c', 'echo ${params.size} > n.txt'], with: {}, needs: {}, deps: [], outs: ['n.txt'],
    metrics: [], env: { MODE: 'fast' }, resources: {}, timeout: 30, description: undefined,
  });
  assert.equal([split?.kind, split?.needs, split?.with, split?.resources], ['split', { data: 'prepare' }, { seed: 7 }, { cpu: 2 }]);
});

test('cache: is resolved against the file\'s directory; experiment, backend and tracking as written', () => {
  const { file, diagnostics } = parse('name: demo\nexperiment: exp\nbackend: cpu\ntracking: {uri: "http://mlflow:5000", enabled: false}\ncache: ../shared-cache\nstages:\n  a: {run: echo a}\n');
  assert.equal(diagnostics, []);
  assert.equal([file?.experiment, file?.flavour, file?.tracking, file?.cache], ['exp', 'cpu', { uri: 'http://mlflow:5000', enabled: false }, '/shared-cache']);
});

test('positions are kept: rangeOf maps a field path (keys and list indexes) back to the text', () => {
  const { file } = parse(valid);
  const textAt = (keys: Array<string | number>, which: 'value' | 'key' = 'value') => {
    const range = rangeOf(file!.doc, keys, which);
    return range && valid.slice(range[0], range[1]);
  };
  assert.is(textAt(['stages', 'prepare', 'run', 2]), '"echo ${params.size} > n.txt"');
  assert.is(textAt(['stages', 'split', 'needs', 'data']), 'prepare');
  assert.is(textAt(['stages', 'split'], 'key'), 'split');
  assert.is(textAt(['params', 'size', 'minimum']), '1');
  // A path that goes further than the file does points at the deepest node that exists.
  assert.is(textAt(['stages', 'split', 'with', 'missing']), '{seed: 7}');
  const loc = file!.source.lineCounter.linePos(rangeOf(file!.doc, ['stages', 'prepare', 'timeout'])![0]);
  assert.equal(loc, { line: 11, col: 14 });
});

test('schema problems, all at once, each at the line and column of the node at fault', () => {
  const text = [
    'name: "bad name"', //                    1
    'colour: red', //                         2
    'backend: tpu', //                        3
    'params:', //                             4
    '  rate: {default: "x", type: number}', //5
    '  9lives: 1', //                         6
    'stages:', //                             7
    '  a:', //                                8
    '    run: echo a', //                     9
    '    kind: split', //                     10
    '    timeout: soon', //                   11
    '  b:', //                                12
    '    outs: [x]', //                       13
    '  c:', //                                14
    '    kind: fetch', //                     15
    '    deps: [in.txt]', //                  16
    '',
  ].join('\n');
  const { file, diagnostics } = parse(text);
  assert.ok(file, 'the pipeline is read as far as it can be, so analysis can report more');
  assert.equal(diagnostics.map(located).sort(), [
    'p.yaml:1:7 schema name: "bad name" is not a valid name (expected letters, digits, \'_\' or \'-\')',
    "p.yaml:2:1 schema colour: unknown field 'colour' (expected one of: name, description, experiment, backend, tracking, cache, params, stages, sweep)",
    'p.yaml:3:10 schema backend: expected one of "auto", "cpu", "gpu", got "tpu"',
    'p.yaml:5:19 bad-param-type params.rate.default: expected a number, got string "x"',
    'p.yaml:6:3 schema params.9lives: "9lives" is not a valid name (expected letters, digits, \'_\' or \'-\')',
    'p.yaml:8:3 schema stages.a: a stage has either \'kind\' or \'run\', not both',
    'p.yaml:11:14 schema stages.a.timeout: expected a number, got string "soon"',
    "p.yaml:12:3 schema stages.b: a stage needs 'kind' (a stage kind) or 'run' (a command)",
    "p.yaml:16:5 schema stages.c.deps: 'deps' is for command stages ('run:'); a kind declares its own inputs and outputs",
  ].sort());
});

test('a bad param or stage name is reported once, at the name', () => {
  const { diagnostics } = parse('name: demo\nparams:\n  rate: 1\n  9lives: 1\nstages:\n  ok: {run: echo}\n  "bad name": {run: echo}\n');
  assert.equal(diagnostics.map(located), [
    'p.yaml:4:3 schema params.9lives: "9lives" is not a valid name (expected letters, digits, \'_\' or \'-\')',
    'p.yaml:7:3 schema stages.bad name: "bad name" is not a valid name (expected letters, digits, \'_\' or \'-\')',
  ]);
});

test('a missing required field is reported at the mapping; an empty stages section at its value', () => {
  const missing = parse('stages:\n  a: {run: echo}\n');
  assert.equal(missing.diagnostics.map(located), ["p.yaml:1:1 schema : missing required field 'name'"]);
  const empty = parse('name: demo\nstages: {}\n');
  assert.equal(empty.diagnostics.map(located), ['p.yaml:2:9 schema stages: expected at least 1 entry']);
});

test('malformed YAML: the first syntax error only, and no pipeline', () => {
  const { file, diagnostics } = parse('name: demo\nstages:\n  a: {run: [echo\n  b: ]]\n');
  assert.is(file, undefined);
  assert.is(diagnostics.length, 1);
  assert.is(diagnostics[0]?.code, 'yaml-syntax');
  assert.match(diagnostics[0]!.message, /^malformed YAML: /);
  assert.not.match(diagnostics[0]!.message, /at line \d+/);
});

test('duplicate names are located at the second definition and named by their field', () => {
  const { file, diagnostics } = parse('name: demo\nparams:\n  n: 1\n  n: 2\nstages:\n  a: {run: echo}\n');
  assert.ok(file);
  assert.equal(diagnostics.map(located), ["p.yaml:4:3 duplicate-name params.n: duplicate name: 'n' is defined more than once"]);
});

test('a document that is not a mapping', () => {
  assert.equal(parse('- just\n- a list\n').diagnostics.map(located), ['p.yaml:1:1 schema : expected a mapping with name, params and stages']);
});

test('loadPipeline reads from disk, resolves relative to the file, and names it as asked', () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'pipe-pipeline-'));
  const file = path.join(dir, 'p.yaml');
  writeFileSync(file, 'name: demo\ncache: cache\nstages:\n  a: {run: echo, timeout: x}\n');
  const loaded = loadPipeline(file, 'pipelines/p.yaml');
  assert.is(loaded.file?.dir, dir);
  assert.is(loaded.file?.cache, path.join(dir, 'cache'));
  assert.equal(loaded.diagnostics.map(located), ['pipelines/p.yaml:4:27 schema stages.a.timeout: expected a number, got string "x"']);
  assert.equal(formatDiagnostic(loaded.diagnostics[0]!, loaded.file?.source.text).split('\n'), [
    'pipelines/p.yaml:4:27: error: stages.a.timeout: expected a number, got string "x"',
    '    a: {run: echo, timeout: x}',
    '                            ~',
  ]);
  assert.equal(loadPipeline(path.join(dir, 'none.yaml'), 'none.yaml').diagnostics.map(located), ['none.yaml:0:0 yaml-syntax : cannot read pipeline: no such file']);
});

test('checkParamValue: types (an integer is a number, a string a path), bounds and enums', () => {
  const decl = { name: 'n', type: 'number' as const, default: 1, minimum: 0, maximum: 1 };
  assert.is(checkParamValue(decl, 1), undefined);
  assert.is(checkParamValue(decl, 0.5), undefined);
  assert.is(checkParamValue(decl, 2), 'expected a value <= 1, got 2');
  assert.is(checkParamValue(decl, -1), 'expected a value >= 0, got -1');
  assert.is(checkParamValue(decl, '1'), 'expected a number, got string "1"');
  assert.is(checkParamValue({ name: 'i', type: 'integer', default: 1 }, 1.5), 'expected an integer, got number 1.5');
  assert.is(checkParamValue({ name: 'p', type: 'path', default: '.' }, './data'), undefined);
  assert.is(checkParamValue({ name: 'e', type: 'string', default: 'a', enum: ['a', 'b'] }, 'c'), 'expected one of "a", "b", got string "c"');
  assert.is(checkParamValue({ name: 'l', type: 'array', default: [] }, { a: 1 }), 'expected an array, got an object');
});

test.run();
