// Param types: a param's type is inferred from its default as written in the YAML, not from the value
// JavaScript reads (`1.0` is a number, though JavaScript reads it as the integer 1).
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { formatDiagnostic } from '../../src/core/diagnostics.ts';
import { convertOverride } from '../../src/pipeline/analyze.ts';
import { parsePipeline, type ParamDecl } from '../../src/pipeline/pipeline.ts';

function params(yaml: string): Record<string, ParamDecl> {
  const loaded = parsePipeline(`name: p\nparams:\n${yaml}\nstages:\n  a: {run: echo}\n`, 'p.yaml', '/project');
  assert.equal(loaded.diagnostics, []);
  return Object.fromEntries((loaded.file?.params ?? []).map((p) => [p.name, p]));
}

test('inferred types: float literals are numbers, whole literals integers', () => {
  const p = params([
    '  alpha: 1.0', '  rate: 0.2', '  big: 1e3', '  neg: -2.50', '  inf: .inf',
    '  n: 160', '  minus: -1', '  hex: 0x10', '  oct: 0o7',
    '  spec: {default: 1.0}', '  spec_int: {default: 2, description: d}', '  typed: {default: 1.0, type: integer}',
  ].join('\n'));
  const types = Object.fromEntries(Object.entries(p).map(([name, decl]) => [name, decl.type]));
  assert.equal(types, {
    alpha: 'number', rate: 'number', big: 'number', neg: 'number', inf: 'number',
    n: 'integer', minus: 'integer', hex: 'integer', oct: 'integer',
    spec: 'number', spec_int: 'integer', typed: 'integer',
  });
  assert.is(p['alpha']?.default, 1);
});

test('inferred types: booleans, strings, null, lists, objects, aliases', () => {
  const p = params([
    '  flag: true', '  upper: False', '  word: horizontal', '  quoted: "1.0"', '  empty: ""', '  nothing: null', '  tilde: ~', '  bare:',
    '  sizes: [1, 2]', '  opts: {a: 1}', '  anchor: &f 2.0', '  alias: *f',
  ].join('\n'));
  const types = Object.fromEntries(Object.entries(p).map(([name, decl]) => [name, decl.type]));
  assert.equal(types, {
    flag: 'boolean', upper: 'boolean', word: 'string', quoted: 'string', empty: 'string', nothing: 'null', tilde: 'null', bare: 'null',
    sizes: 'array', opts: 'object', anchor: 'number', alias: 'number',
  });
});

test('-p values convert by the inferred type', () => {
  const p = params(['  alpha: 1.0', '  n: 3', '  flag: true', '  sizes: [1, 2]', '  word: x'].join('\n'));
  const convert = (name: string, text: string) => convertOverride(p[name] as ParamDecl, text);
  assert.equal(convert('alpha', '0.35'), { value: 0.35 });
  assert.equal(convert('alpha', '2'), { value: 2 });
  assert.equal(convert('n', '0.5'), { error: "expected an integer, got '0.5'" });
  assert.equal(convert('n', '7'), { value: 7 });
  assert.equal(convert('flag', 'FALSE'), { value: false });
  assert.equal(convert('flag', 'yes'), { error: "expected true or false, got 'yes'" });
  assert.equal(convert('sizes', '[3, 4]'), { value: [3, 4] });
  assert.equal(convert('sizes', '3,4'), { error: "expected an array as JSON, got '3,4'" });
  assert.equal(convert('word', ' 12 '), { value: ' 12 ' });
  // A param whose default is null takes any text; `null` is null.
  const nothing = params('  nothing: null')['nothing'] as ParamDecl;
  assert.equal(convertOverride(nothing, '5'), { value: '5' });
  assert.equal(convertOverride(nothing, 'null'), { value: null });
});

test('a declaration with fields of the wrong type is reported, not a crash (found by fuzzing)', () => {
  const loaded = parsePipeline('name: p\nparams:\n  x: {default: 1, enum: evaluate, type: "\\n", minimum: low}\nstages:\n  a: {run: echo}\n', 'p.yaml', '/project');
  assert.equal(loaded.file?.params, [{ name: 'x', type: 'integer', default: 1 }]);
  assert.equal(loaded.diagnostics.map((d) => `${d.line}:${d.col}: ${d.field}: ${d.message}`), [
    '3:41: params.x.type: expected one of string, number, integer, boolean, path, array, object, null, got string "\\n"',
    '3:56: params.x.minimum: expected a number, got string "low"',
    '3:25: params.x.enum: expected a list of the allowed values, got string "evaluate"',
  ]);
});

test('a diagnostic stays one line when a key holds a newline (found by fuzzing)', () => {
  const text = 'name: p\nstages:\n  "a\\nb": {run: echo, colour: red}\n';
  const loaded = parsePipeline(text, 'p.yaml', '/project');
  const shown = loaded.diagnostics.map((d) => formatDiagnostic(d, text));
  assert.ok(shown.length > 0);
  for (const s of shown) assert.is(s.split('\n').length, 3, s);
  assert.ok(shown.some((s) => s.startsWith("p.yaml:3:23: error: stages.a\\nb.colour: unknown field 'colour'")), shown.join('\n'));
});

test.run();
