// Analysis: a structurally valid pipeline + overrides → a fully validated DAG of stages whose
// parameters are resolved and checked against their kinds. Every problem is collected.

import * as os from 'node:os';
import * as path from 'node:path';
import { at, type Diagnostic, type Result } from '../core/diagnostics.ts';
import {
  checkParamValue,
  describeSchemaError,
  rangeOf,
  simplifyErrors,
  type ParamDecl,
  type PipelineFile,
  type StageDecl,
} from './pipeline.ts';
import type { Resources, StageKind, StageKinds } from '../core/stage-kind.ts';
import { paramsValidator } from '../core/params-schema.ts';
import { shellQuote } from '../util/shell.ts';

export const COMMAND_KIND = 'command';

export interface AnalyzedStage {
  name: string;
  decl: StageDecl;
  /** The kind's name, or `command` for `run:` stages. */
  kindName: string;
  kind?: StageKind;
  /** Resolved parameters: kind params with defaults applied, or the command's referenced params. */
  params: Record<string, unknown>;
  /** Command stages: the resolved command. */
  command?: string | string[];
  /** Kind stages: input slot → upstream stage name. */
  inputs: Record<string, string>;
  /** Every stage this one waits for (sorted). */
  upstream: string[];
  deps: string[];
  outs: string[];
  metrics: string[];
  env: Record<string, string>;
  resources: Resources;
  timeout?: number;
  /** Absolute local paths whose content is an input (kind inputPaths, command deps not produced by a stage). */
  inputPaths: string[];
}

export interface AnalyzedPipeline {
  file: PipelineFile;
  /** Every pipeline param's resolved value (defaults and overrides). */
  params: Record<string, unknown>;
  /** Stages in a topological order (dependencies first; ties by declaration order). */
  stages: AnalyzedStage[];
}

export interface Override {
  name: string;
  /** The text after `=` as typed on the command line. */
  text: string;
  /** Where the override came from, for messages: e.g. `-p fine_tune_at=abc`. */
  origin: string;
}

/** Parses `name=value`; undefined when there is no `=`. */
export function parseOverride(arg: string, flag = '-p'): Override | undefined {
  const eq = arg.indexOf('=');
  if (eq <= 0) return undefined;
  return { name: arg.slice(0, eq).trim(), text: arg.slice(eq + 1), origin: `${flag} ${arg}` };
}

/** Converts override text to the param's type; an error message when it does not fit. */
export function convertOverride(decl: ParamDecl, text: string): { value: unknown } | { error: string } {
  const trimmed = text.trim();
  let value: unknown;
  switch (decl.type) {
    case 'integer':
      if (!/^[-+]?\d+$/.test(trimmed)) return { error: `expected an integer, got '${text}'` };
      value = Number(trimmed);
      break;
    case 'number':
      if (trimmed === '' || Number.isNaN(Number(trimmed))) return { error: `expected a number, got '${text}'` };
      value = Number(trimmed);
      break;
    case 'boolean':
      if (!/^(true|false)$/i.test(trimmed)) return { error: `expected true or false, got '${text}'` };
      value = trimmed.toLowerCase() === 'true';
      break;
    case 'array':
    case 'object':
      try {
        value = JSON.parse(trimmed);
      } catch {
        return { error: `expected ${decl.type === 'array' ? 'an array' : 'an object'} as JSON, got '${text}'` };
      }
      break;
    case 'null':
      value = trimmed === 'null' ? null : trimmed;
      break;
    case 'string':
    case 'path':
      value = text;
      break;
  }
  const problem = checkParamValue(decl, value);
  return problem ? { error: problem } : { value };
}

/** A path-typed value that names a local file (not a URL or a bare word like `imagenet`). */
export function isLocalPathLike(value: string): boolean {
  if (/^[a-z][a-z0-9+.-]*:\/\//i.test(value)) return false;
  return value.startsWith('.') || value.startsWith('/') || value.startsWith('~') || value.includes('/') || value.includes(path.sep);
}

function resolvePathValue(value: string, base: string): string {
  if (!isLocalPathLike(value)) return value;
  if (value === '~' || value.startsWith('~/')) return path.join(os.homedir(), value.slice(1));
  return path.resolve(base, value);
}

const PARAM_REF = /\$\{\s*params\.([A-Za-z_][A-Za-z0-9_]*)\s*\}/g;
const WHOLE_REF = /^\$\{\s*params\.([A-Za-z_][A-Za-z0-9_]*)\s*\}$/;

interface Interpolation {
  value: unknown;
  /** Names of the params referenced anywhere in the value. */
  refs: Set<string>;
}

/**
 * Substitutes `${params.NAME}` in every string of `value`; unknown names become diagnostics.
 * `quote` formats each substituted text (a shell command's words); without it a value that is only
 * a reference keeps the param's type.
 */
function interpolate(
  value: unknown,
  params: Record<string, unknown>,
  report: (keys: Array<string | number>, name: string) => void,
  keys: Array<string | number> = [],
  refs: Set<string> = new Set(),
  quote?: (text: string) => string,
): Interpolation {
  if (typeof value === 'string') {
    const whole = quote ? undefined : WHOLE_REF.exec(value);
    if (whole?.[1]) {
      const name = whole[1];
      refs.add(name);
      if (!(name in params)) report(keys, name);
      return { value: params[name], refs };
    }
    const replaced = value.replace(PARAM_REF, (_m, name: string) => {
      refs.add(name);
      if (!(name in params)) {
        report(keys, name);
        return '';
      }
      const v = params[name];
      const text = typeof v === 'string' ? v : JSON.stringify(v);
      return quote ? quote(text) : text;
    });
    return { value: replaced, refs };
  }
  if (Array.isArray(value)) {
    return { value: value.map((v, i) => interpolate(v, params, report, [...keys, i], refs).value), refs };
  }
  if (value !== null && typeof value === 'object') {
    const out: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(value)) out[k] = interpolate(v, params, report, [...keys, k], refs).value;
    return { value: out, refs };
  }
  return { value, refs };
}

export interface AnalyzeOptions {
  /** The stage kinds a pipeline may name (src/stages/index.ts's registry). */
  kinds: StageKinds;
  overrides?: Override[];
  /** Where relative paths in overrides are resolved from (the user's working directory). */
  cwd?: string;
  /** Param values that replace defaults without command-line text (sweep trials). */
  values?: Record<string, unknown>;
}

export async function analyze(file: PipelineFile, options: AnalyzeOptions): Promise<Result<AnalyzedPipeline>> {
  const diagnostics: Diagnostic[] = [];
  const params = resolveParams(file, options, diagnostics);
  const scope: Scope = {
    file,
    params,
    declared: file.params.map((p) => p.name),
    byName: new Map(file.stages.map((s) => [s.name, s])),
    kinds: await loadKinds(file, options.kinds),
    kindNames: options.kinds.names,
    diagnostics,
  };
  const analyzed: AnalyzedStage[] = [];
  for (const stage of file.stages) {
    checkNeeds(scope, stage);
    const env = interpolateEnv(scope, stage);
    const result = stage.run !== undefined ? analyzeCommandStage(scope, stage, env) : analyzeKindStage(scope, stage, env);
    if (result) analyzed.push(result);
  }
  linkStages(file, analyzed, scope.byName);
  reportCycle(file, analyzed, diagnostics);
  if (diagnostics.length > 0) return { ok: false, diagnostics };
  return { ok: true, value: { file, params, stages: topologicalOrder(analyzed) } };
}

/** What analysing one stage needs to know about the pipeline; problems go to `diagnostics`. */
interface Scope {
  file: PipelineFile;
  /** Every pipeline param's resolved value. */
  params: Record<string, unknown>;
  /** The names of the declared params, for messages. */
  declared: string[];
  byName: Map<string, StageDecl>;
  /** The kinds the pipeline names that exist. */
  kinds: Map<string, StageKind>;
  /** Every kind there is, for messages. */
  kindNames: readonly string[];
  diagnostics: Diagnostic[];
}

const COMMAND_LINE = '<command line>';

/** 1. Params: defaults, then trial values, then `-p` overrides typed by their declaration. */
function resolveParams(file: PipelineFile, options: AnalyzeOptions, diagnostics: Diagnostic[]): Record<string, unknown> {
  const cwd = options.cwd ?? process.cwd();
  const declared = new Map(file.params.map((p) => [p.name, p]));
  const valueOf = (decl: ParamDecl, value: unknown, base: string) => (decl.type === 'path' && typeof value === 'string' ? resolvePathValue(value, base) : value);
  const params: Record<string, unknown> = {};
  for (const decl of file.params) params[decl.name] = valueOf(decl, decl.default, file.dir);
  for (const [name, value] of Object.entries(options.values ?? {})) {
    const decl = declared.get(name);
    if (decl) params[name] = valueOf(decl, value, cwd);
  }
  for (const override of options.overrides ?? []) {
    const decl = declared.get(override.name);
    if (!decl) {
      const known = [...declared.keys()];
      const where = known.length ? `params of ${file.source.path}: ${known.join(', ')}` : `${file.source.path} declares no params`;
      diagnostics.push(commandLineDiagnostic('unknown-param', override.origin, `unknown param '${override.name}' (${where})`));
      continue;
    }
    const converted = convertOverride(decl, override.text);
    if ('error' in converted) {
      diagnostics.push(commandLineDiagnostic('bad-override', override.origin, `param '${decl.name}': ${converted.error}`));
      continue;
    }
    params[decl.name] = valueOf(decl, converted.value, cwd);
  }
  return params;
}

function commandLineDiagnostic(code: Diagnostic['code'], field: string, message: string): Diagnostic {
  return { code, file: COMMAND_LINE, line: 0, col: 0, length: 0, field, message };
}

/** 2. Kinds: the ones the pipeline names, loaded once each (unknown names are reported per stage). */
async function loadKinds(file: PipelineFile, registry: StageKinds): Promise<Map<string, StageKind>> {
  const kinds = new Map<string, StageKind>();
  for (const stage of file.stages) {
    if (stage.kind && !kinds.has(stage.kind)) {
      const kind = await registry.load(stage.kind);
      if (kind) kinds.set(stage.kind, kind);
    }
  }
  return kinds;
}

/** Where a stage's problems are reported: its field paths and its YAML nodes. */
function stageField(stage: StageDecl, ...rest: Array<string | number>): string {
  return ['stages', stage.name, ...rest].join('.');
}

function stageRange(scope: Scope, stage: StageDecl, keys: Array<string | number>, which: 'value' | 'key' = 'value') {
  return rangeOf(scope.file.doc, ['stages', stage.name, ...keys], which);
}

function report(scope: Scope, range: [number, number] | undefined, code: Diagnostic['code'], field: string, message: string): void {
  scope.diagnostics.push(at(scope.file.source, range, code, field, message));
}

/** `${params.NAME}` substituted in a stage field; unknown names are reported at their node. */
function interpolateField(scope: Scope, stage: StageDecl, root: string, value: unknown, quote?: (text: string) => string): Interpolation {
  return interpolate(value, scope.params, (keys, name) => {
    const known = scope.declared.length ? `declared params: ${scope.declared.join(', ')}` : 'the pipeline declares no params';
    report(scope, stageRange(scope, stage, [root, ...keys]), 'missing-param', stageField(stage, root, ...keys), `unknown param '${name}' in \${params.${name}} (${known})`);
  }, [], new Set(), quote);
}

/** needs: every name is a stage, and not this one. */
function checkNeeds(scope: Scope, stage: StageDecl): void {
  const names = needsOf(stage);
  for (const [i, needed] of names.entries()) {
    if (!scope.byName.has(needed)) {
      const keys = Array.isArray(stage.needs) ? ['needs', i] : ['needs', Object.keys(stage.needs)[i] ?? ''];
      report(scope, stageRange(scope, stage, keys), 'missing-stage', stageField(stage, ...keys), `no stage named '${needed}' (stages: ${[...scope.byName.keys()].join(', ')})`);
    }
    if (needed === stage.name) report(scope, stageRange(scope, stage, ['needs']), 'cycle', stageField(stage, 'needs'), `stage '${stage.name}' needs itself`);
  }
}

function needsOf(stage: StageDecl): string[] {
  return Array.isArray(stage.needs) ? stage.needs : Object.values(stage.needs);
}

interface StageEnv {
  env: Record<string, string>;
  /** The params the env references (part of a command stage's params). */
  refs: Set<string>;
}

function interpolateEnv(scope: Scope, stage: StageDecl): StageEnv {
  const interpolated = interpolateField(scope, stage, 'env', stage.env);
  const env: Record<string, string> = {};
  for (const [k, v] of Object.entries(interpolated.value as Record<string, unknown>)) env[k] = typeof v === 'string' ? v : JSON.stringify(v);
  return { env, refs: interpolated.refs };
}

/** A `run:` stage: its command, deps, outs and metrics with params substituted. */
function analyzeCommandStage(scope: Scope, stage: StageDecl, { env, refs }: StageEnv): AnalyzedStage {
  // A string is run by /bin/sh: each value must arrive as one word, never as shell syntax.
  const command = interpolateField(scope, stage, 'run', stage.run, typeof stage.run === 'string' ? shellQuote : undefined);
  const strings = (root: 'deps' | 'outs' | 'metrics') => (interpolateField(scope, stage, root, stage[root]).value as unknown[]).map(String);
  const deps = strings('deps');
  const outs = strings('outs');
  const metrics = strings('metrics');
  // The params a command uses are its params: they enter its fingerprint.
  const referenced: Record<string, unknown> = {};
  for (const name of [...command.refs, ...refs].sort()) if (name in scope.params) referenced[name] = scope.params[name];
  return {
    name: stage.name,
    decl: stage,
    kindName: COMMAND_KIND,
    params: referenced,
    command: Array.isArray(command.value) ? (command.value as unknown[]).map(String) : String(command.value),
    inputs: {},
    upstream: [],
    deps,
    outs,
    metrics,
    env,
    resources: { cpu: 1, gpu: 0, ...stage.resources },
    timeout: stage.timeout,
    inputPaths: [],
  };
}

/** A `kind:` stage: a known kind, params valid against its schema, input slots bound. */
function analyzeKindStage(scope: Scope, stage: StageDecl, { env }: StageEnv): AnalyzedStage | undefined {
  const kindName = stage.kind ?? '';
  const kind = scope.kinds.get(kindName);
  if (!kind) {
    const expected = `expected one of: ${scope.kindNames.join(', ')}, or 'run:' for a command`;
    report(scope, stageRange(scope, stage, ['kind']), 'unknown-kind', stageField(stage, 'kind'), `unknown stage kind '${kindName}' (${expected})`);
    return undefined;
  }
  const params = resolveStageParams(scope, stage, kind);
  if (!params) return undefined;
  const inputs = bindInputs(scope, stage, kind);
  const local = (p: string) => (p.startsWith('.') || p.startsWith('/') || p.startsWith('~') ? p : `./${p}`);
  const inputPaths = (kind.inputPaths?.(params as never) ?? []).map((p) => resolvePathValue(local(p), scope.file.dir));
  return {
    name: stage.name,
    decl: stage,
    kindName: kind.name,
    kind,
    params,
    inputs,
    upstream: [],
    deps: [],
    outs: [],
    metrics: [],
    env,
    resources: { ...(kind.resources ?? { cpu: 1 }), ...stage.resources },
    timeout: stage.timeout,
    inputPaths,
  };
}

/** 3. Stage params: `with:` interpolated, checked against the kind's schema, defaults filled in by ajv. */
function resolveStageParams(scope: Scope, stage: StageDecl, kind: StageKind): Record<string, unknown> | undefined {
  const resolved = structuredClone(interpolateField(scope, stage, 'with', stage.with).value) as Record<string, unknown>;
  const validate = paramsValidator(kind.params);
  if (validate(resolved)) return resolved;
  for (const error of simplifyErrors(validate.errors ?? [])) {
    const keys = error.instancePath.split('/').slice(1);
    if (error.keyword === 'additionalProperties') {
      const extra = String((error.params as { additionalProperty: string }).additionalProperty);
      const expected = `expected one of: ${Object.keys(kind.params.properties).join(', ')}`;
      report(scope, stageRange(scope, stage, ['with', ...keys, extra], 'key'), 'unknown-param', stageField(stage, 'with', ...keys, extra), `unknown parameter '${extra}' for stage kind '${kind.name}' (${expected})`);
      continue;
    }
    const node = keys[0];
    const rawValue = node !== undefined ? stage.with[node] : undefined;
    const via = typeof rawValue === 'string' && WHOLE_REF.test(rawValue) ? ` (from ${rawValue.trim()})` : '';
    const keyPath = error.keyword === 'required' ? [] : keys;
    const range = stageRange(scope, stage, ['with', ...keyPath], error.keyword === 'required' ? 'key' : 'value') ?? stageRange(scope, stage, ['kind']);
    report(scope, range, 'bad-param-type', stageField(stage, 'with', ...keyPath), `${describeSchemaError(error)}${via}`);
  }
  return undefined;
}

interface Slot {
  slot: string;
  optional: boolean;
  accepts: readonly string[];
}

/** 4. Inputs: each of the kind's slots bound to a needed stage of an accepted kind. */
function bindInputs(scope: Scope, stage: StageDecl, kind: StageKind): Record<string, string> {
  const slots: Slot[] = Object.entries(kind.inputs).map(([slot, accepts]) => ({ slot: slot.replace(/\?$/, ''), optional: slot.endsWith('?'), accepts }));
  const inputs = Array.isArray(stage.needs) ? {} : bindExplicitInputs(scope, stage, kind, slots, stage.needs);
  const needList = Array.isArray(stage.needs) ? stage.needs : [];
  for (const spec of slots) {
    if (inputs[spec.slot]) continue;
    const candidates = needList.filter((n) => spec.accepts.includes(kindOf(scope, n) ?? ''));
    if (candidates.length === 1 && candidates[0]) {
      inputs[spec.slot] = candidates[0];
    } else if (candidates.length > 1) {
      report(scope, stageRange(scope, stage, ['needs']), 'bad-input', stageField(stage, 'needs'), `input '${spec.slot}' could be any of ${candidates.join(', ')}: bind it with needs: {${spec.slot}: STAGE}`);
    } else if (!spec.optional && (Array.isArray(stage.needs) || !(spec.slot in stage.needs))) {
      const range = stageRange(scope, stage, [stage.needs && needList.length ? 'needs' : 'kind']);
      report(scope, range, 'bad-input', stageField(stage, 'needs'), `stage kind '${kind.name}' needs a stage of kind ${spec.accepts.join(' or ')} for its input '${spec.slot}'`);
    }
  }
  return inputs;
}

/** `needs: {slot: stage}`: each slot exists and the stage is of a kind it accepts. */
function bindExplicitInputs(scope: Scope, stage: StageDecl, kind: StageKind, slots: Slot[], needs: Record<string, string>): Record<string, string> {
  const inputs: Record<string, string> = {};
  for (const [slot, target] of Object.entries(needs)) {
    const spec = slots.find((s) => s.slot === slot);
    if (!spec) {
      const known = slots.map((s) => s.slot).join(', ') || 'none';
      report(scope, stageRange(scope, stage, ['needs', slot], 'key'), 'bad-input', stageField(stage, 'needs', slot), `stage kind '${kind.name}' has no input '${slot}' (inputs: ${known})`);
      continue;
    }
    const targetKind = kindOf(scope, target);
    if (targetKind && !spec.accepts.includes(targetKind)) {
      report(scope, stageRange(scope, stage, ['needs', slot]), 'bad-input', stageField(stage, 'needs', slot), `input '${slot}' takes a stage of kind ${spec.accepts.join(' or ')}, but '${target}' is ${targetKind}`);
      continue;
    }
    if (scope.byName.has(target)) inputs[slot] = target;
  }
  return inputs;
}

/** The kind name of stage `name` (`command` for a run: stage), or undefined when there is none. */
function kindOf(scope: Scope, name: string): string | undefined {
  const stage = scope.byName.get(name);
  return stage?.run !== undefined ? COMMAND_KIND : stage?.kind;
}

/** 5. Edges: needs, bound inputs, and command deps that are another stage's outs (those deps are not hashed). */
function linkStages(file: PipelineFile, analyzed: AnalyzedStage[], byName: Map<string, StageDecl>): void {
  const outsOwner = new Map<string, string>();
  for (const s of analyzed) for (const out of s.outs) outsOwner.set(path.resolve(file.dir, out), s.name);
  for (const s of analyzed) {
    const up = new Set<string>([...needsOf(s.decl), ...Object.values(s.inputs)]);
    for (const dep of s.deps) {
      const abs = path.resolve(file.dir, dep);
      const owner = ownerOf(abs, outsOwner);
      if (owner && owner !== s.name) up.add(owner);
      else s.inputPaths.push(abs);
    }
    s.upstream = [...up].filter((n) => byName.has(n) && n !== s.name).sort();
  }
}

/** The stage whose out is `abs`, contains it or lies inside it (the last one declared wins). */
function ownerOf(abs: string, outsOwner: Map<string, string>): string | undefined {
  let owner: string | undefined;
  for (const [out, name] of outsOwner) {
    if (abs === out || abs.startsWith(out + path.sep) || out.startsWith(abs + path.sep)) owner = name;
  }
  return owner;
}

/** 6. Cycles: one is reported at the `needs:` of its first stage. */
function reportCycle(file: PipelineFile, analyzed: AnalyzedStage[], diagnostics: Diagnostic[]): void {
  const cycle = findCycle(analyzed);
  if (!cycle) return;
  const first = cycle[0] ?? '';
  const range = rangeOf(file.doc, ['stages', first, 'needs']) ?? rangeOf(file.doc, ['stages', first], 'key');
  diagnostics.push(at(file.source, range, 'cycle', `stages.${first}.needs`, `dependency cycle: ${cycle.join(' → ')}`));
}

/** A cycle as a list of names that starts and ends with the same stage, or undefined. */
export function findCycle(stages: Array<{ name: string; upstream: string[] }>): string[] | undefined {
  const byName = new Map(stages.map((s) => [s.name, s]));
  const state = new Map<string, 'visiting' | 'done'>();
  const stack: string[] = [];
  const visit = (name: string): string[] | undefined => {
    state.set(name, 'visiting');
    stack.push(name);
    for (const up of byName.get(name)?.upstream ?? []) {
      if (state.get(up) === 'visiting') {
        const from = stack.indexOf(up);
        // Print in execution order: upstream first.
        return [...stack.slice(from), up].reverse();
      }
      if (!state.has(up)) {
        const found = visit(up);
        if (found) return found;
      }
    }
    stack.pop();
    state.set(name, 'done');
    return undefined;
  };
  for (const s of stages) {
    if (!state.has(s.name)) {
      const found = visit(s.name);
      if (found) return found;
    }
  }
  return undefined;
}

function topologicalOrder<T extends { name: string; upstream: string[] }>(stages: T[]): T[] {
  const done = new Set<string>();
  const order: T[] = [];
  const pending = [...stages];
  while (pending.length > 0) {
    const index = pending.findIndex((s) => s.upstream.every((u) => done.has(u)));
    if (index < 0) break; // cycles were reported before
    const [next] = pending.splice(index, 1);
    if (!next) break;
    order.push(next);
    done.add(next.name);
  }
  return order;
}
