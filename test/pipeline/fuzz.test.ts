// Input fuzzing (property-based, fast-check, fixed seed): random YAML documents, mutations of the
// shipped pipelines and random -p / -S values go through loading and analysis, and a bounded sample
// through the real `pipe status` (20 cases: each Node process costs about a second of CPU). Nothing
// may throw or print a stack trace: each input is either accepted or answered with located
// diagnostics (file:line:col, or the command-line flag at fault).
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import fc from 'fast-check';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { isMap, isSeq, parseDocument, stringify } from 'yaml';
import { formatDiagnostic, type Diagnostic } from '../../src/core/diagnostics.ts';
import { analyze, convertOverride, parseOverride, type Override } from '../../src/pipeline/analyze.ts';
import { checkParamValue, parsePipeline, type ParamDecl, type PipelineFile } from '../../src/pipeline/pipeline.ts';
import { expandTrials } from '../../src/plan/sweep.ts';
import { stageKinds } from '../../src/stages/index.ts';
import { pipe, project } from '../helpers/cli.ts';

const SEED = Number(process.env['PIPE_FUZZ_SEED'] ?? 15_2026);
const FILE = 'p.yaml';
const COMMAND_LINE = '<command line>';
console.log(`fuzz: seed ${SEED} (set PIPE_FUZZ_SEED to replay another)`);

const pipelinesDir = fileURLToPath(new URL('../../pipelines/', import.meta.url));
const shipped = readdirSync(pipelinesDir).filter((n) => n.endsWith('.yaml')).map((n) => readFileSync(path.join(pipelinesDir, n), 'utf8'));

const counts: Record<string, number> = {};
const count = (what: string) => (counts[what] = (counts[what] ?? 0) + 1);

// ---- what every answer must look like -------------------------------------------------------

/** A diagnostic points into the file (line, column, a visible underline) or names a flag. */
function assertLocated(d: Diagnostic, text: string): void {
  const shown = formatDiagnostic(d, text);
  const expect = (ok: boolean, what: string) => {
    if (!ok) throw new Error(`${what}:\n${shown}\n${JSON.stringify(d)}\n--- in:\n${text}`);
  };
  if (d.file === COMMAND_LINE) return expect(/^(-p|-S) /.test(d.field), 'a command-line diagnostic names its flag');
  expect(d.file === FILE, 'names the file');
  expect(d.line >= 1 && d.col >= 1 && d.length >= 1, 'has a line and column');
  const [head, sourceLine, underline] = shown.split('\n');
  expect(head?.startsWith(`${FILE}:${d.line}:${d.col}: error: `) === true, 'starts with file:line:col');
  expect(sourceLine === `  ${text.split('\n')[d.line - 1] ?? ''}`, 'shows the source line');
  expect(/^ *~+$/.test(underline ?? ''), 'underlines');
}

/** Loads and analyzes `text` with overrides and sweeps: success, or located diagnostics only. */
async function check(text: string, overrides: Override[] = [], sweeps: string[] = []): Promise<void> {
  count('documents');
  const loaded = parsePipeline(text, FILE, '/nonexistent/project');
  const diagnostics = [...loaded.diagnostics];
  if (loaded.file) {
    const result = await analyze(loaded.file, { kinds: stageKinds, overrides, cwd: '/nonexistent/cwd' });
    if (!result.ok) diagnostics.push(...result.diagnostics);
    // A sweep is expanded only from a valid file (src/app/sweep.ts checks loading first).
    if (loaded.diagnostics.length === 0) diagnostics.push(...expandTrials(loaded.file, sweeps).diagnostics);
  }
  count(diagnostics.length === 0 ? 'accepted' : 'rejected with diagnostics');
  for (const d of diagnostics) assertLocated(d, text);
}

// ---- generators -----------------------------------------------------------------------------

const FIELDS = [
  'name', 'description', 'experiment', 'backend', 'tracking', 'uri', 'enabled', 'cache', 'params', 'stages', 'sweep',
  'grid', 'trials', 'objective', 'direction', 'run', 'kind', 'with', 'needs', 'deps', 'outs', 'metrics', 'env',
  'resources', 'cpu', 'gpu', 'timeout', 'default', 'type', 'minimum', 'maximum', 'enum', 'source', 'seed', 'weights',
];
const TRICKY = [
  '${params.data}', '${params.', '${params.nope}', '${ params.seed }', '$(touch pwned)', "it's", '~', '..', './x', '',
  'imagenet', 'https://example.invalid/x.zip', 'a: b', '- x', '#', '&a', '*a', '!!int', 'null', 'true', '1e400', '-0',
  'NaN', '0x1F', '\u202e', 'ﬁ', '😀', 'e\u0301', '\0', '\t', '\n', 'a\nb', ' lead', 'trail ', 'all', 'integer', 'path', 'fetch',
];

const scalar: fc.Arbitrary<unknown> = fc.oneof(
  fc.constantFrom(...TRICKY),
  fc.string({ unit: 'binary', maxLength: 12 }),
  fc.string({ maxLength: 12 }),
  fc.integer(),
  fc.double(),
  fc.boolean(),
  fc.constant(null),
  fc.constantFrom(...stageKinds.names),
);
const key = fc.oneof(fc.constantFrom(...FIELDS), fc.string({ maxLength: 8 }), fc.string({ unit: 'binary', maxLength: 6 }));

const { value } = fc.letrec<{ value: unknown }>((tie) => ({
  value: fc.oneof(
    { depthSize: 'small', withCrossShrink: true },
    scalar,
    fc.array(tie('value'), { maxLength: 4 }),
    fc.dictionary(key, tie('value'), { maxKeys: 5 }),
  ),
}));

/** Something shaped like a pipeline, with a random part anywhere. */
const pipelineLike = fc.record(
  {
    name: fc.oneof(fc.constant('demo'), scalar),
    params: fc.dictionary(fc.oneof(fc.constantFrom('data', 'seed', 'alpha', 'n'), key), fc.oneof(scalar, value, fc.record({ default: scalar, type: fc.oneof(fc.constantFrom('string', 'number', 'integer', 'boolean', 'path', 'array', 'object', 'null'), scalar) }, { requiredKeys: ['default'] })), { maxKeys: 4 }),
    stages: fc.dictionary(
      fc.oneof(fc.constantFrom('a', 'b', 'fetch'), key),
      fc.oneof(
        value,
        fc.record({
          kind: fc.oneof(fc.constantFrom(...stageKinds.names), scalar),
          run: fc.oneof(fc.constant('echo ${params.n} > out.txt'), fc.array(scalar, { maxLength: 3 }), scalar),
          with: fc.dictionary(key, fc.oneof(scalar, value), { maxKeys: 4 }),
          needs: fc.oneof(fc.array(fc.constantFrom('a', 'b', 'fetch', 'nope'), { maxLength: 3 }), value),
          deps: fc.array(scalar, { maxLength: 2 }),
          outs: fc.array(scalar, { maxLength: 2 }),
          env: fc.dictionary(key, scalar, { maxKeys: 2 }),
          resources: value,
          timeout: scalar,
        }, { requiredKeys: [] }),
      ),
      { maxKeys: 4 },
    ),
    sweep: fc.oneof(value, fc.record({ grid: fc.dictionary(key, fc.oneof(fc.array(scalar, { maxLength: 3 }), scalar), { maxKeys: 2 }), trials: value })),
    extra: value,
  },
  { requiredKeys: [] },
);

/** Deep nesting: lists and maps inside each other, up to a few hundred levels. */
const deep = fc.tuple(fc.integer({ min: 1, max: 300 }), fc.boolean(), scalar).map(([depth, useMaps, leaf]) => {
  let node: unknown = leaf;
  for (let i = 0; i < depth; i++) node = useMaps ? { [FIELDS[i % FIELDS.length] ?? 'x']: node } : [node];
  return { name: 'deep', stages: { a: { run: 'echo', with: node } }, params: { p: node } };
});

type Path = Array<string | number>;

/** Every path into a JS value (maps and lists), the root included. */
function pathsOf(node: unknown, prefix: Path = []): Path[] {
  const out: Path[] = [prefix];
  if (Array.isArray(node)) node.forEach((child, i) => out.push(...pathsOf(child, [...prefix, i])));
  else if (node !== null && typeof node === 'object') for (const [k, child] of Object.entries(node)) out.push(...pathsOf(child, [...prefix, k]));
  return out;
}

type Mutation = { op: 'delete' | 'replace' | 'wrap' | 'rename'; at: number; with: unknown; name: string };

const mutation: fc.Arbitrary<Mutation> = fc.record({
  op: fc.constantFrom('delete', 'replace', 'wrap', 'rename'),
  at: fc.nat(),
  with: fc.oneof(scalar, value),
  name: key,
});

/** A shipped pipeline with a few structural mutations, as YAML text. */
function mutate(text: string, mutations: Mutation[]): string {
  const doc = parseDocument(text);
  for (const m of mutations) {
    const paths = pathsOf(doc.toJS()).filter((p) => p.length > 0);
    const at = paths[m.at % Math.max(1, paths.length)];
    if (!at) continue;
    const parentPath = at.slice(0, -1);
    const last = at[at.length - 1] as string | number;
    const parent = parentPath.length ? doc.getIn(parentPath, true) : doc.contents;
    try {
      applyMutation(doc, m, at, parent, last);
    } catch {
      // The yaml library refuses some edits of nodes an earlier mutation shared or wrapped
      // ("Expected YAML collection at …"): that mutation is skipped, the others stand.
    }
  }
  return doc.toString();
}

function applyMutation(doc: ReturnType<typeof parseDocument>, m: Mutation, at: (string | number)[], parent: unknown, last: string | number): void {
  {
    switch (m.op) {
      case 'delete':
        doc.deleteIn(at);
        break;
      case 'replace':
        doc.setIn(at, doc.createNode(m.with));
        break;
      case 'wrap':
        doc.setIn(at, doc.createNode(Array.isArray(m.with) ? [doc.getIn(at)] : { [m.name]: doc.getIn(at) }));
        break;
      case 'rename':
        if (isMap(parent) && typeof last === 'string') {
          const pair = parent.items.find((p) => String((p.key as { value?: unknown })?.value ?? p.key) === last);
          if (pair) pair.key = doc.createNode(m.name);
        } else if (isSeq(parent)) {
          doc.setIn(at, doc.createNode(m.name));
        }
        break;
    }
  }
}

type TextEdit = { op: 'cut' | 'insert' | 'duplicate-line' | 'swap-lines' | 'tab'; at: number; length: number; text: string };

const textEdit: fc.Arbitrary<TextEdit> = fc.record({
  op: fc.constantFrom('cut', 'insert', 'duplicate-line', 'swap-lines', 'tab'),
  at: fc.nat(),
  length: fc.nat({ max: 40 }),
  text: fc.oneof(fc.constantFrom(...TRICKY, ':', '{', '[', ']', '"', "'", '|', '>', '- ', '  ', '\n  '), fc.string({ unit: 'binary', maxLength: 6 })),
});

/** Raw text edits: cut, insert, duplicated or swapped lines (duplicate keys), tab indentation. */
function editText(text: string, edits: TextEdit[]): string {
  let out = text;
  for (const e of edits) {
    const at = e.at % Math.max(1, out.length);
    const lines = out.split('\n');
    const line = e.at % Math.max(1, lines.length);
    switch (e.op) {
      case 'cut':
        out = out.slice(0, at) + out.slice(at + e.length);
        break;
      case 'insert':
        out = out.slice(0, at) + e.text + out.slice(at);
        break;
      case 'duplicate-line':
        lines.splice(line, 0, lines[line] ?? '');
        out = lines.join('\n');
        break;
      case 'swap-lines': {
        const other = (line + 1 + e.length) % lines.length;
        [lines[line], lines[other]] = [lines[other] ?? '', lines[line] ?? ''];
        out = lines.join('\n');
        break;
      }
      case 'tab':
        lines[line] = (lines[line] ?? '').replace(/^ +/, '\t');
        out = lines.join('\n');
        break;
    }
  }
  return out;
}

const shippedText = fc.constantFrom(...shipped);
const mutatedShipped = fc.tuple(shippedText, fc.array(mutation, { minLength: 1, maxLength: 4 })).map(([text, ms]) => mutate(text, ms));
const editedShipped = fc.tuple(shippedText, fc.array(textEdit, { minLength: 1, maxLength: 4 })).map(([text, es]) => editText(text, es));

// ---- in-process properties ------------------------------------------------------------------

const options = (numRuns: number) => ({ seed: SEED, numRuns, endOnFailure: true, includeErrorInReport: true });

test('random YAML values as pipeline files', async () => {
  await fc.assert(fc.asyncProperty(value, (v) => check(stringify(v))), options(200));
});

test('random pipeline-shaped documents, and deep nesting', async () => {
  await fc.assert(fc.asyncProperty(fc.oneof(pipelineLike, deep), (v) => check(stringify(v, { aliasDuplicateObjects: false }))), options(250));
});

test('the shipped pipelines with keys dropped, renamed, wrapped, or values of the wrong type', async () => {
  await fc.assert(fc.asyncProperty(mutatedShipped, (text) => check(text)), options(200));
});

test('the shipped pipelines with raw text edits: cuts, inserts, duplicated keys, swapped lines, tabs', async () => {
  await fc.assert(fc.asyncProperty(editedShipped, (text) => check(text)), options(200));
});

const DECL_TYPES = ['string', 'number', 'integer', 'boolean', 'path', 'array', 'object', 'null'] as const;
const overrideText = fc.oneof(fc.constantFrom(...TRICKY, '0.35', '1', '-1', '1e3', '[1,2]', '{"a":1}', 'TRUE', '=', 'a=b'), fc.string({ unit: 'binary', maxLength: 10 }), fc.double().map(String), fc.integer().map(String));

test('-p values of every declared type: a value of that type or an error, never a throw', () => {
  fc.assert(
    fc.property(fc.constantFrom(...DECL_TYPES), overrideText, fc.option(fc.array(scalar, { minLength: 1, maxLength: 3 }), { nil: undefined }), (type, text, enumValues) => {
      count('-p values');
      const decl: ParamDecl = { name: 'x', type, default: null, ...(enumValues ? { enum: enumValues } : {}) };
      const parsed = parseOverride(`x=${text}`);
      assert.ok(parsed);
      assert.is(parsed.text, text);
      const converted = convertOverride(decl, parsed.text);
      if ('value' in converted) assert.is(checkParamValue(decl, converted.value), undefined);
      else assert.type(converted.error, 'string');
    }),
    options(1500),
  );
});

test('-p and -S on the shipped pipelines: accepted, or a diagnostic naming the flag', async () => {
  const names = ['data', 'weights', 'alpha', 'seed', 'fine_tune_at', 'flip', 'activations_dtype', 'nope', ''];
  const arg = fc.tuple(fc.constantFrom(...names), overrideText).map(([n, t]) => `${n}=${t}`);
  await fc.assert(
    fc.asyncProperty(shippedText, fc.array(arg, { maxLength: 3 }), fc.array(fc.oneof(arg, overrideText), { maxLength: 2 }), async (text, params, sweeps) => {
      const overrides = params.map((p) => parseOverride(p)).filter((o): o is Override => o !== undefined);
      await check(text, overrides, sweeps);
    }),
    options(150),
  );
});

// ---- the real CLI on a bounded sample -------------------------------------------------------

/** Values safe to pass to `pipe status`: nothing names an existing directory to hash (`/`, `..`). */
const safeWord = fc.oneof(fc.constantFrom('imagenet', 'none', '0.35', '1', '-3', 'true', 'x y', "it's", '$(touch pwned)', '[1]', ''), fc.stringMatching(/^[a-zA-Z0-9_ :-]{0,8}$/));
type SafeMutation = { op: Mutation['op']; at: number; with: string; name: string };
const safeMutation: fc.Arbitrary<SafeMutation> = fc.record({ op: fc.constantFrom('delete', 'replace', 'wrap', 'rename'), at: fc.nat(), with: safeWord, name: safeWord });
const safeEdit = textEdit.filter((e) => !/[/.~]/.test(e.text));
/** A small command pipeline: cheap to start, so most CLI cases use it. */
const commandPipeline = `name: demo
params:
  n: 3
  rate: 0.5
  word: hello
  flag: false
stages:
  a:
    run: "echo \${params.word} \${params.n} > a.txt"
    outs: [a.txt]
  b:
    needs: [a]
    run: [echo, "\${params.rate}", "\${params.flag}"]
    env: {N: "\${params.n}"}
`;
const cliPipeline = fc.tuple(fc.oneof({ weight: 2, arbitrary: fc.constant(commandPipeline) }, { weight: 1, arbitrary: shippedText }), fc.array(safeMutation, { maxLength: 3 }), fc.array(safeEdit, { maxLength: 2 }))
  .map(([text, ms, es]) => editText(mutate(text, ms), es))
  // The sample must not point the cache anywhere else.
  .map((text) => text.replace(/^cache:.*$/m, ''));
const cliCase = fc.record({ text: cliPipeline, params: fc.array(fc.tuple(fc.constantFrom('n', 'rate', 'flag', 'alpha', 'seed', 'weights', 'fine_tune_at', 'nope'), safeWord).map(([n, v]) => `${n}=${v}`), { maxLength: 2 }) });

test('`pipe status FILE -p ...` on 20 sampled cases: exit 0, or exit 2 with located diagnostics; never a stack trace', async () => {
  const cases = fc.sample(cliCase, { seed: SEED, numRuns: 20 });
  const dir = project();
  const runCase = async ({ text, params }: { text: string; params: string[] }, i: number) => {
    const file = `case-${i}.yaml`;
    writeFileSync(path.join(dir, file), text);
    const r = await pipe(dir, ['status', file, ...params.flatMap((p) => ['-p', p])]);
    count(`cli exit ${r.exitCode}`);
    const where = `case ${i}: pipe status ${file} ${params.map((p) => `-p '${p}'`).join(' ')}\n${r.stderr}\n--- ${file}:\n${text}`;
    assert.not.match(r.stderr, /^\s+at /m, `stack trace: ${where}`);
    assert.ok(r.exitCode === 0 || r.exitCode === 2, `exit ${r.exitCode}: ${where}`);
    if (r.exitCode === 2) {
      const errors = r.stderr.split('\n').filter((l) => l.includes(': error: '));
      assert.ok(errors.length > 0, `no diagnostic: ${where}`);
      for (const line of errors) assert.match(line, new RegExp(`^(${file.replace('.', '\\.')}:\\d+:\\d+|<command line>): error: `), where);
    }
  };
  // A few at a time: each is a Node process.
  for (let i = 0; i < cases.length; i += 2) await Promise.all(cases.slice(i, i + 2).map((c, j) => runCase(c, i + j)));
});

test.after(() => {
  console.log(`fuzz (seed ${SEED}): ${Object.entries(counts).map(([k, v]) => `${v} ${k}`).join(', ')}`);
});

test.run();
