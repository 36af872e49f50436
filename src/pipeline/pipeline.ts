// Loading a pipeline file: YAML → a structurally valid pipeline (schema-checked, positions kept).
// Nothing here throws on bad input: every problem becomes a Diagnostic, all reported at once.

import { readFileSync } from 'node:fs';
import * as path from 'node:path';
import { Ajv, type ErrorObject } from 'ajv';
import { Document, LineCounter, isAlias, isMap, isNode, isPair, isScalar, parseDocument, type Node, type Scalar } from 'yaml';
import schema from '../../schema/pipeline.schema.json' with { type: 'json' };
import { at, type Diagnostic, type SourceFile } from '../core/diagnostics.ts';
import type { RequestedFlavour, Resources } from '../core/stage-kind.ts';

export type ParamType = 'string' | 'number' | 'integer' | 'boolean' | 'path' | 'array' | 'object' | 'null';

export interface ParamDecl {
  name: string;
  type: ParamType;
  default: unknown;
  description?: string;
  minimum?: number;
  maximum?: number;
  enum?: unknown[];
}

export interface StageDecl {
  name: string;
  kind?: string;
  run?: string | Array<string | number | boolean>;
  with: Record<string, unknown>;
  needs: string[] | Record<string, string>;
  deps: string[];
  outs: string[];
  metrics: string[];
  env: Record<string, string | number | boolean>;
  resources: Resources;
  timeout?: number;
  description?: string;
}

export interface SweepDecl {
  grid?: Record<string, unknown[]>;
  /** Sampled dimensions: `{loguniform: [1e-6, 1e-4]}`, `{choice: [...]}`, `{uniform: [a, b]}`, `{int: [a, b]}`. */
  space?: Record<string, unknown>;
  /** How many points of the space to draw. */
  samples?: number;
  /** Which quasi-random design (default 0). */
  seed?: number;
  trials?: Array<Record<string, unknown>>;
  objective?: string;
  direction?: 'maximize' | 'minimize';
  /** Early stopping of lagging trials (src/plan/scheduler.ts), as written. */
  scheduler?: SchedulerDecl;
}

/** `sweep.scheduler` as written (Ray Tune's names); read and checked by src/plan/sweep.ts. */
export interface SchedulerDecl {
  type: 'asha' | 'median';
  metric?: string;
  mode?: 'max' | 'min';
  stage?: string;
  grace_period?: number;
  reduction_factor?: number;
  max_t?: number;
  min_samples_required?: number;
  pause?: boolean;
}

export interface PipelineFile {
  source: SourceFile;
  doc: Document;
  /** The directory relative paths in the file are resolved against. */
  dir: string;
  name: string;
  description?: string;
  experiment: string;
  /** The pipeline's `backend:` field: the tfjs flavour it asks for. */
  flavour: RequestedFlavour;
  tracking: { uri?: string; enabled: boolean };
  /** `cache:` resolved against the file's directory. */
  cache?: string;
  params: ParamDecl[];
  stages: StageDecl[];
  sweep?: SweepDecl;
}

const ajv = new Ajv({ allErrors: true, strict: false, verbose: true });
const validateSchema = ajv.compile(schema);

/**
 * What loading found: the pipeline as far as it could be read (absent only when the YAML itself
 * is unreadable), and every problem. Analysis goes on with a pipeline that has problems, so that
 * all of them are reported at once.
 */
export interface Loaded {
  file?: PipelineFile;
  /** The text as read (absent only when the file could not be read), for the source lines of messages. */
  source?: SourceFile;
  diagnostics: Diagnostic[];
}

/** Reads and checks a pipeline file; `displayPath` is how the file is named in messages. */
export function loadPipeline(file: string, displayPath = file): Loaded {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (error) {
    const reason = (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'no such file' : String(error);
    return { diagnostics: [{ code: 'yaml-syntax', file: displayPath, line: 0, col: 0, length: 0, field: '', message: `cannot read pipeline: ${reason}` }] };
  }
  return parsePipeline(text, displayPath, path.dirname(path.resolve(file)));
}

export function parsePipeline(text: string, displayPath: string, dir: string): Loaded {
  const lineCounter = new LineCounter();
  const source: SourceFile = { path: displayPath, text, lineCounter };
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true, prettyErrors: false });
  const diagnostics: Diagnostic[] = [];

  // After the first syntax error the parser's further complaints are mostly its consequences.
  let syntaxErrors = 0;
  for (const error of doc.errors) {
    if (error.code !== 'DUPLICATE_KEY' && syntaxErrors++ > 0) continue;
    if (error.code === 'DUPLICATE_KEY') {
      const field = duplicateKeyField(doc, error.pos[0]);
      diagnostics.push(at(source, error.pos, 'duplicate-name', field, `duplicate name: '${field.split('.').pop()}' is defined more than once`));
    } else {
      diagnostics.push(at(source, withinContent(text, error.pos), 'yaml-syntax', '', `malformed YAML: ${firstLine(error.message)}`));
    }
  }
  if (diagnostics.some((d) => d.code === 'yaml-syntax')) return { source, diagnostics };

  const data: unknown = doc.toJS({ maxAliasCount: 100 });
  if (data === null || typeof data !== 'object' || Array.isArray(data)) {
    diagnostics.push(at(source, doc.contents?.range as [number, number] | undefined, 'schema', '', 'expected a mapping with name, params and stages'));
    return { source, diagnostics };
  }
  if (!validateSchema(data)) {
    for (const error of simplifyErrors(validateSchema.errors ?? [])) {
      diagnostics.push(schemaDiagnostic(source, doc, error));
    }
  }
  const raw = data as Record<string, unknown>;
  const params = readParams(source, doc, asRecord(raw['params']), diagnostics);
  const stages = Object.entries(asRecord(raw['stages'])).map(([name, s]) => readStage(name, asRecord(s)));
  for (const stage of stages) {
    const hasKind = stage.kind !== undefined;
    const hasRun = stage.run !== undefined;
    if (hasKind === hasRun) {
      diagnostics.push(
        at(source, rangeOf(doc, ['stages', stage.name], 'key'), 'schema', `stages.${stage.name}`,
          hasKind ? "a stage has either 'kind' or 'run', not both" : "a stage needs 'kind' (a stage kind) or 'run' (a command)"),
      );
    }
    if (hasKind) {
      for (const field of ['deps', 'outs', 'metrics', 'env'] as const) {
        if (asRecord(asRecord(raw['stages'])[stage.name])[field] !== undefined) {
          diagnostics.push(at(source, rangeOf(doc, ['stages', stage.name, field], 'key'), 'schema', `stages.${stage.name}.${field}`, `'${field}' is for command stages ('run:'); a kind declares its own inputs and outputs`));
        }
      }
    }
  }
  const tracking = asRecord(raw['tracking']) as { uri?: string; enabled?: boolean };
  const name = typeof raw['name'] === 'string' ? raw['name'] : 'pipeline';
  return {
    source,
    diagnostics,
    file: {
      source,
      doc,
      dir,
      name,
      description: raw['description'] as string | undefined,
      experiment: (raw['experiment'] as string | undefined) ?? name,
      flavour: (raw['backend'] as RequestedFlavour | undefined) ?? 'auto',
      tracking: { uri: tracking.uri, enabled: tracking.enabled ?? true },
      cache: typeof raw['cache'] === 'string' ? path.resolve(dir, raw['cache']) : undefined,
      params,
      stages,
      sweep: raw['sweep'] as SweepDecl | undefined,
    },
  };
}

function asRecord(value: unknown): Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Record<string, unknown>) : {};
}

function stringList(value: unknown): string[] {
  return Array.isArray(value) ? value.filter((v): v is string => typeof v === 'string') : [];
}

/** A stage as written; fields of the wrong type (already reported by the schema) read as empty. */
function readStage(name: string, s: Record<string, unknown>): StageDecl {
  const needs = s['needs'];
  const run = s['run'];
  return {
    name,
    kind: typeof s['kind'] === 'string' ? s['kind'] : undefined,
    run: typeof run === 'string' || Array.isArray(run) ? (run as StageDecl['run']) : undefined,
    with: asRecord(s['with']),
    needs: Array.isArray(needs) ? stringList(needs) : (Object.fromEntries(Object.entries(asRecord(needs)).filter(([, v]) => typeof v === 'string')) as Record<string, string>),
    deps: stringList(s['deps']),
    outs: stringList(s['outs']),
    metrics: stringList(s['metrics']),
    env: asRecord(s['env']) as StageDecl['env'],
    resources: asRecord(s['resources']) as Resources,
    timeout: typeof s['timeout'] === 'number' ? s['timeout'] : undefined,
    description: typeof s['description'] === 'string' ? s['description'] : undefined,
  };
}

const specKeys = new Set(['default', 'type', 'description', 'minimum', 'maximum', 'enum']);

function readParams(source: SourceFile, doc: Document, raw: Record<string, unknown>, diagnostics: Diagnostic[]): ParamDecl[] {
  const params: ParamDecl[] = [];
  for (const [name, value] of Object.entries(raw)) {
    const isSpec =
      value !== null && typeof value === 'object' && !Array.isArray(value) && 'default' in value &&
      Object.keys(value).every((k) => specKeys.has(k));
    if (!isSpec) {
      params.push({ name, type: inferTypeAt(doc, ['params', name], value), default: value });
      continue;
    }
    const decl = readParamSpec(source, doc, name, value as Record<string, unknown>, diagnostics);
    const problem = checkParamValue(decl, decl.default);
    if (problem) {
      diagnostics.push(at(source, rangeOf(doc, ['params', name, 'default']), 'bad-param-type', `params.${name}.default`, problem));
    }
    params.push(decl);
  }
  return params;
}

const PARAM_TYPES: readonly ParamType[] = ['string', 'number', 'integer', 'boolean', 'path', 'array', 'object', 'null'];

/** A full declaration; a field of the wrong type is reported and left out. */
function readParamSpec(source: SourceFile, doc: Document, name: string, spec: Record<string, unknown>, diagnostics: Diagnostic[]): ParamDecl {
  const wrong = (field: string, expected: string) =>
    diagnostics.push(at(source, rangeOf(doc, ['params', name, field]), 'schema', `params.${name}.${field}`, `expected ${expected}, got ${describeValue(spec[field])}`));
  const type = PARAM_TYPES.find((t) => t === spec['type']);
  if (spec['type'] !== undefined && !type) wrong('type', `one of ${PARAM_TYPES.join(', ')}`);
  const decl: ParamDecl = { name, type: type ?? inferTypeAt(doc, ['params', name, 'default'], spec['default']), default: spec['default'] };
  if (typeof spec['description'] === 'string') decl.description = spec['description'];
  else if (spec['description'] !== undefined) wrong('description', 'a string');
  for (const bound of ['minimum', 'maximum'] as const) {
    if (typeof spec[bound] === 'number') decl[bound] = spec[bound];
    else if (spec[bound] !== undefined) wrong(bound, 'a number');
  }
  if (Array.isArray(spec['enum'])) decl.enum = spec['enum'];
  else if (spec['enum'] !== undefined) wrong('enum', 'a list of the allowed values');
  return decl;
}

/**
 * The type a default declares: `inferType` of its value, except that a YAML float literal (`1.0`,
 * `1e3`, `.inf`) declares a number although JavaScript reads its value as a whole number.
 */
function inferTypeAt(doc: Document, keys: string[], value: unknown): ParamType {
  const type = inferType(value);
  if (type !== 'integer') return type;
  let node = doc.getIn(keys, true);
  if (isAlias(node)) node = node.resolve(doc);
  return isScalar(node) && isFloatLiteral(node) ? 'number' : type;
}

/** The YAML 1.2 core schema's integer forms (decimal, 0x hex, 0o octal); other numbers are floats. */
function isFloatLiteral(node: Scalar): boolean {
  return node.source !== undefined && !/^[-+]?(\d+|0x[0-9a-fA-F]+|0o[0-7]+)$/.test(node.source);
}

export function inferType(value: unknown): ParamType {
  if (value === null) return 'null';
  if (Array.isArray(value)) return 'array';
  switch (typeof value) {
    case 'number':
      return Number.isInteger(value) ? 'integer' : 'number';
    case 'boolean':
      return 'boolean';
    case 'string':
      return 'string';
    default:
      return 'object';
  }
}

/** Why `value` does not fit the declaration, or undefined when it does. */
export function checkParamValue(decl: ParamDecl, value: unknown): string | undefined {
  const actual = inferType(value);
  const fits =
    decl.type === actual ||
    (decl.type === 'number' && actual === 'integer') ||
    (decl.type === 'path' && actual === 'string') ||
    decl.type === 'null';
  if (!fits) return `expected ${article(decl.type)}, got ${describeValue(value)}`;
  if (typeof value === 'number') {
    if (decl.minimum !== undefined && value < decl.minimum) return `expected a value >= ${decl.minimum}, got ${value}`;
    if (decl.maximum !== undefined && value > decl.maximum) return `expected a value <= ${decl.maximum}, got ${value}`;
  }
  if (decl.enum && !decl.enum.some((e) => JSON.stringify(e) === JSON.stringify(value))) {
    return `expected one of ${decl.enum.map((e) => JSON.stringify(e)).join(', ')}, got ${describeValue(value)}`;
  }
  return undefined;
}

export function article(type: string): string {
  return /^[aeiou]/.test(type) ? `an ${type}` : `a ${type}`;
}

export function describeValue(value: unknown): string {
  const type = inferType(value);
  const shown = JSON.stringify(value);
  return type === 'object' || type === 'array' ? `${type === 'array' ? 'an array' : 'an object'}` : `${type === 'integer' ? 'integer' : type} ${shown}`;
}

// ---- positions -------------------------------------------------------------------------------

/** The source range of the node at `keys` (or of its key, for a mapping entry). */
export function rangeOf(doc: Document, keys: ReadonlyArray<string | number>, which: 'value' | 'key' = 'value'): [number, number] | undefined {
  let node: unknown = doc.contents;
  let lastKeyRange: [number, number] | undefined;
  for (const key of keys) {
    if (isMap(node)) {
      const pair = node.items.find((p) => isScalar(p.key) && String(p.key.value) === String(key));
      if (!pair) return rangeFrom(node);
      lastKeyRange = isNode(pair.key) ? rangeFrom(pair.key) : undefined;
      node = pair.value;
    } else if (node && typeof node === 'object' && 'items' in node && Array.isArray((node as { items: unknown[] }).items)) {
      const item = (node as { items: unknown[] }).items[Number(key)];
      if (item === undefined) return rangeFrom(node);
      lastKeyRange = undefined;
      node = isPair(item) ? item.value : item;
    } else {
      return rangeFrom(node) ?? lastKeyRange;
    }
  }
  if (which === 'key' && lastKeyRange) return lastKeyRange;
  return rangeFrom(node) ?? lastKeyRange;
}

function rangeFrom(node: unknown): [number, number] | undefined {
  if (isNode(node) && (node as Node).range) {
    const range = (node as Node).range as [number, number, number];
    return [range[0], range[1]];
  }
  return undefined;
}

function duplicateKeyField(doc: Document, offset: number): string {
  // Find the mapping holding a key at `offset` to name the field (stages.X, params.Y, ...).
  const found: string[] = [];
  const visit = (node: unknown, trail: string[]): boolean => {
    if (!isMap(node)) return false;
    for (const pair of node.items) {
      const key = isScalar(pair.key) ? String(pair.key.value) : '?';
      const keyRange = isNode(pair.key) ? rangeFrom(pair.key) : undefined;
      if (keyRange && keyRange[0] === offset) {
        found.push(...trail, key);
        return true;
      }
      if (visit(pair.value, [...trail, key])) return true;
    }
    return false;
  };
  visit(doc.contents, []);
  return found.join('.');
}

/** An error found at the end of the input (an unclosed quote or bracket) points at the last text. */
function withinContent(text: string, pos: [number, number]): [number, number] {
  if (text.slice(pos[0]).trim() !== '') return pos;
  const last = text.trimEnd().length - 1;
  return last >= 0 ? [last, last + 1] : pos;
}

function firstLine(message: string): string {
  return message.split('\n')[0]?.replace(/ at line \d+, column \d+:?$/, '') ?? message;
}

// ---- schema errors -------------------------------------------------------------------------

/** Reduces ajv's errors under anyOf to the ones a person can act on. */
export function simplifyErrors(errors: ErrorObject[]): ErrorObject[] {
  const drop = new Set<ErrorObject>();
  const extra: ErrorObject[] = [];
  for (const error of errors) {
    if (error.keyword !== 'anyOf') continue;
    const prefix = `${error.schemaPath}/`;
    const branchErrors = errors.filter((e) => e.schemaPath.startsWith(prefix));
    const branches = new Map<string, ErrorObject[]>();
    for (const e of branchErrors) {
      const branch = e.schemaPath.slice(prefix.length).split('/')[0] ?? '';
      branches.set(branch, [...(branches.get(branch) ?? []), e]);
      drop.add(e);
    }
    // A branch whose type matched but failed deeper is what the author meant.
    const typed = [...branches.values()].filter((list) => !list.some((e) => e.instancePath === error.instancePath && (e.keyword === 'type' || e.keyword === 'const')));
    if (typed.length === 1 && typed[0]) {
      drop.add(error);
      extra.push(...typed[0]);
    }
  }
  // A bad name under `propertyNames` comes twice: as the keyword's own error (located at the key)
  // and as the failed check on the name (located at the whole mapping). Keep the first.
  for (const error of errors) if (error.propertyName !== undefined) drop.add(error);
  const kept = [...errors.filter((e) => !drop.has(e)), ...extra];
  const seen = new Set<string>();
  return kept.filter((e) => {
    const key = `${e.instancePath}|${e.keyword}|${JSON.stringify(e.params)}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

function schemaDiagnostic(source: SourceFile, doc: Document, error: ErrorObject): Diagnostic {
  const keys = error.instancePath.split('/').slice(1).map((k) => k.replace(/~1/g, '/').replace(/~0/g, '~'));
  const field = keys.join('.');
  const message = describeSchemaError(error);
  if (error.keyword === 'additionalProperties') {
    const extraKey = String((error.params as { additionalProperty: string }).additionalProperty);
    return at(source, rangeOf(doc, [...keys, extraKey], 'key'), 'schema', [...keys, extraKey].join('.'), message);
  }
  if (error.keyword === 'propertyNames') {
    const name = String((error.params as { propertyName: string }).propertyName);
    return at(source, rangeOf(doc, [...keys, name], 'key'), 'schema', [...keys, name].join('.'), message);
  }
  return at(source, rangeOf(doc, keys, error.keyword === 'required' ? 'key' : 'value'), 'schema', field, message);
}

export function describeSchemaError(error: ErrorObject): string {
  const p = error.params as Record<string, unknown>;
  switch (error.keyword) {
    case 'additionalProperties': {
      const schemaProps = (error.parentSchema as { properties?: Record<string, unknown> } | undefined)?.properties;
      const allowed = schemaProps ? Object.keys(schemaProps) : [];
      return `unknown field '${String(p['additionalProperty'])}'${allowed.length ? ` (expected one of: ${allowed.join(', ')})` : ''}`;
    }
    case 'required':
      return `missing required field '${String(p['missingProperty'])}'`;
    case 'type':
      return `expected ${article(String(p['type']).replace(',', ' or '))}, got ${describeValue(error.data)}`;
    case 'enum':
      return `expected one of ${(p['allowedValues'] as unknown[]).map((v) => JSON.stringify(v)).join(', ')}, got ${JSON.stringify(error.data)}`;
    case 'const':
      return `expected ${JSON.stringify(p['allowedValue'])}, got ${JSON.stringify(error.data)}`;
    case 'pattern':
      return `${JSON.stringify(error.data)} is not a valid name (expected letters, digits, '_' or '-')`;
    case 'propertyNames':
      return `${JSON.stringify(p['propertyName'])} is not a valid name (expected letters, digits, '_' or '-')`;
    case 'minimum':
    case 'exclusiveMinimum':
    case 'maximum':
    case 'exclusiveMaximum':
      return `expected a value ${String(p['comparison'])} ${String(p['limit'])}, got ${JSON.stringify(error.data)}`;
    case 'minProperties':
      return `expected at least ${String(p['limit'])} entr${p['limit'] === 1 ? 'y' : 'ies'}`;
    case 'minItems':
      return `expected at least ${String(p['limit'])} item${p['limit'] === 1 ? '' : 's'}`;
    case 'anyOf': {
      const alternatives = ((error.schema as Array<{ type?: string | string[]; const?: unknown }>) ?? [])
        .map((s) => (s.const !== undefined ? JSON.stringify(s.const) : [s.type].flat().join(' or ')))
        .filter(Boolean);
      return `expected ${alternatives.join(' or ')}, got ${describeValue(error.data)}`;
    }
    default:
      return error.message ?? error.keyword;
  }
}
