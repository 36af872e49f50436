// Analysis: a structurally valid pipeline + overrides → a fully validated DAG of stages whose
// parameters are resolved and checked against their kinds. Every problem is collected.

import * as os from 'node:os';
import * as path from 'node:path';
import { Ajv } from 'ajv';
import { at, type Diagnostic, type Result } from '../core/diagnostics.ts';
import {
  checkParamValue,
  describeSchemaError,
  rangeOf,
  simplifyErrors,
  type ParamDecl,
  type PipelineFile,
  type Resources,
  type StageDecl,
} from './pipeline.ts';
import type { StageKind, StageKinds } from '../core/stage-kind.ts';
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

const kindAjv = new Ajv({ allErrors: true, strict: false, useDefaults: true, verbose: true });
const kindValidators = new WeakMap<StageKind, ReturnType<typeof kindAjv.compile>>();

function validatorFor(kind: StageKind) {
  let validate = kindValidators.get(kind);
  if (!validate) {
    validate = kindAjv.compile({ ...kind.params, additionalProperties: false });
    kindValidators.set(kind, validate);
  }
  return validate;
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
  const { source, doc } = file;
  const diagnostics: Diagnostic[] = [];
  const cwd = options.cwd ?? process.cwd();
  const commandLine = '<command line>';

  // 1. Params: defaults, then overrides typed by their declaration.
  const declared = new Map(file.params.map((p) => [p.name, p]));
  const params: Record<string, unknown> = {};
  for (const decl of file.params) {
    params[decl.name] = decl.type === 'path' && typeof decl.default === 'string' ? resolvePathValue(decl.default, file.dir) : decl.default;
  }
  for (const [name, value] of Object.entries(options.values ?? {})) {
    const decl = declared.get(name);
    if (!decl) continue;
    params[name] = decl.type === 'path' && typeof value === 'string' ? resolvePathValue(value, cwd) : value;
  }
  for (const override of options.overrides ?? []) {
    const decl = declared.get(override.name);
    if (!decl) {
      const known = [...declared.keys()];
      diagnostics.push({
        code: 'unknown-param', file: commandLine, line: 0, col: 0, length: 0, field: override.origin,
        message: `unknown param '${override.name}' (${known.length ? `params of ${source.path}: ${known.join(', ')}` : `${source.path} declares no params`})`,
      });
      continue;
    }
    const converted = convertOverride(decl, override.text);
    if ('error' in converted) {
      diagnostics.push({ code: 'bad-override', file: commandLine, line: 0, col: 0, length: 0, field: override.origin, message: `param '${decl.name}': ${converted.error}` });
      continue;
    }
    params[decl.name] = decl.type === 'path' && typeof converted.value === 'string' ? resolvePathValue(converted.value, cwd) : converted.value;
  }

  // 2. Stages: kinds, params, inputs.
  const byName = new Map(file.stages.map((s) => [s.name, s]));
  const kinds = new Map<string, StageKind>();
  for (const stage of file.stages) {
    if (stage.kind && !kinds.has(stage.kind)) {
      const kind = await options.kinds.load(stage.kind);
      if (kind) kinds.set(stage.kind, kind);
    }
  }

  const analyzed: AnalyzedStage[] = [];
  for (const stage of file.stages) {
    const base = ['stages', stage.name];
    const field = (...rest: Array<string | number>) => [...base, ...rest].join('.');
    const reportMissingParam = (root: string) => (keys: Array<string | number>, name: string) => {
      diagnostics.push(
        at(source, rangeOf(doc, [...base, root, ...keys]), 'missing-param', field(root, ...keys),
          `unknown param '${name}' in \${params.${name}} (${declared.size ? `declared params: ${[...declared.keys()].join(', ')}` : 'the pipeline declares no params'})`),
      );
    };

    // needs: names must exist.
    const needsList = Array.isArray(stage.needs) ? stage.needs : Object.values(stage.needs);
    for (const [i, needed] of needsList.entries()) {
      if (!byName.has(needed)) {
        const keys = Array.isArray(stage.needs) ? ['needs', i] : ['needs', Object.keys(stage.needs)[i] ?? ''];
        diagnostics.push(at(source, rangeOf(doc, [...base, ...keys]), 'missing-stage', field(...keys), `no stage named '${needed}' (stages: ${[...byName.keys()].join(', ')})`));
      }
      if (needed === stage.name) {
        diagnostics.push(at(source, rangeOf(doc, [...base, 'needs']), 'cycle', field('needs'), `stage '${stage.name}' needs itself`));
      }
    }

    const env: Record<string, string> = {};
    const envInterp = interpolate(stage.env, params, reportMissingParam('env'));
    for (const [k, v] of Object.entries(envInterp.value as Record<string, unknown>)) env[k] = typeof v === 'string' ? v : JSON.stringify(v);

    if (stage.run !== undefined) {
      // A string is run by /bin/sh: each value must arrive as one word, never as shell syntax.
      const quote = typeof stage.run === 'string' ? shellQuote : undefined;
      const commandInterp = interpolate(stage.run, params, reportMissingParam('run'), [], new Set(), quote);
      const deps = interpolate(stage.deps, params, reportMissingParam('deps')).value as unknown[];
      const outs = interpolate(stage.outs, params, reportMissingParam('outs')).value as unknown[];
      const metrics = interpolate(stage.metrics, params, reportMissingParam('metrics')).value as unknown[];
      const referenced: Record<string, unknown> = {};
      for (const name of [...commandInterp.refs, ...envInterp.refs].sort()) if (name in params) referenced[name] = params[name];
      analyzed.push({
        name: stage.name,
        decl: stage,
        kindName: COMMAND_KIND,
        params: referenced,
        command: Array.isArray(commandInterp.value) ? (commandInterp.value as unknown[]).map(String) : String(commandInterp.value),
        inputs: {},
        upstream: [],
        deps: deps.map(String),
        outs: outs.map(String),
        metrics: metrics.map(String),
        env,
        resources: { cpu: 1, gpu: 0, ...stage.resources },
        timeout: stage.timeout,
        inputPaths: [],
      });
      continue;
    }

    const kindName = stage.kind ?? '';
    const kind = kinds.get(kindName);
    if (!kind) {
      diagnostics.push(at(source, rangeOf(doc, [...base, 'kind']), 'unknown-kind', field('kind'), `unknown stage kind '${kindName}' (expected one of: ${options.kinds.names.join(', ')}, or 'run:' for a command)`));
      continue;
    }
    const withInterp = interpolate(stage.with, params, reportMissingParam('with'));
    const resolved = structuredClone(withInterp.value) as Record<string, unknown>;
    const validate = validatorFor(kind);
    if (!validate(resolved)) {
      for (const error of simplifyErrors(validate.errors ?? [])) {
        const keys = error.instancePath.split('/').slice(1);
        if (error.keyword === 'additionalProperties') {
          const extra = String((error.params as { additionalProperty: string }).additionalProperty);
          diagnostics.push(
            at(source, rangeOf(doc, [...base, 'with', ...keys, extra], 'key'), 'unknown-param', field('with', ...keys, extra),
              `unknown parameter '${extra}' for stage kind '${kind.name}' (expected one of: ${Object.keys(kind.params.properties).join(', ')})`),
          );
          continue;
        }
        const node = keys[0];
        const rawValue = node !== undefined ? stage.with[node] : undefined;
        const via = typeof rawValue === 'string' && WHOLE_REF.test(rawValue) ? ` (from ${rawValue.trim()})` : '';
        const keyPath = error.keyword === 'required' ? [] : keys;
        diagnostics.push(
          at(source, rangeOf(doc, [...base, 'with', ...keyPath], error.keyword === 'required' ? 'key' : 'value') ?? rangeOf(doc, [...base, 'kind']),
            'bad-param-type', field('with', ...keyPath), `${describeSchemaError(error)}${via}`),
        );
      }
      continue;
    }

    // Bind input slots to needed stages.
    const inputs: Record<string, string> = {};
    const needs = stage.needs;
    const slots = Object.entries(kind.inputs).map(([slot, accepts]) => ({ slot: slot.replace(/\?$/, ''), optional: slot.endsWith('?'), accepts }));
    const kindOf = (name: string) => {
      const s = byName.get(name);
      return s?.run !== undefined ? COMMAND_KIND : s?.kind;
    };
    if (!Array.isArray(needs)) {
      for (const [slot, target] of Object.entries(needs)) {
        const spec = slots.find((s) => s.slot === slot);
        if (!spec) {
          diagnostics.push(at(source, rangeOf(doc, [...base, 'needs', slot], 'key'), 'bad-input', field('needs', slot), `stage kind '${kind.name}' has no input '${slot}' (inputs: ${slots.map((s) => s.slot).join(', ') || 'none'})`));
          continue;
        }
        const targetKind = kindOf(target);
        if (targetKind && !spec.accepts.includes(targetKind)) {
          diagnostics.push(at(source, rangeOf(doc, [...base, 'needs', slot]), 'bad-input', field('needs', slot), `input '${slot}' takes a stage of kind ${spec.accepts.join(' or ')}, but '${target}' is ${targetKind}`));
          continue;
        }
        if (byName.has(target)) inputs[slot] = target;
      }
    }
    const needList = Array.isArray(needs) ? needs : [];
    for (const spec of slots) {
      if (inputs[spec.slot]) continue;
      const candidates = needList.filter((n) => spec.accepts.includes(kindOf(n) ?? ''));
      if (candidates.length === 1 && candidates[0]) {
        inputs[spec.slot] = candidates[0];
      } else if (candidates.length > 1) {
        diagnostics.push(at(source, rangeOf(doc, [...base, 'needs']), 'bad-input', field('needs'), `input '${spec.slot}' could be any of ${candidates.join(', ')}: bind it with needs: {${spec.slot}: STAGE}`));
      } else if (!spec.optional && (Array.isArray(needs) || !(spec.slot in needs))) {
        diagnostics.push(
          at(source, rangeOf(doc, [...base, stage.needs && needList.length ? 'needs' : 'kind']), 'bad-input', field('needs'),
            `stage kind '${kind.name}' needs a stage of kind ${spec.accepts.join(' or ')} for its input '${spec.slot}'`),
        );
      }
    }

    const inputPaths = (kind.inputPaths?.(resolved as never) ?? []).map((p) => resolvePathValue(p.startsWith('.') || p.startsWith('/') || p.startsWith('~') ? p : `./${p}`, file.dir));
    analyzed.push({
      name: stage.name,
      decl: stage,
      kindName: kind.name,
      kind,
      params: resolved,
      inputs,
      upstream: [],
      deps: [],
      outs: [],
      metrics: [],
      env,
      resources: { ...(kind.resources ?? { cpu: 1 }), ...stage.resources },
      timeout: stage.timeout,
      inputPaths,
    });
  }

  // 3. Edges: needs, bound inputs, and command deps that are another stage's outs.
  const outsOwner = new Map<string, string>();
  for (const s of analyzed) for (const out of s.outs) outsOwner.set(path.resolve(file.dir, out), s.name);
  for (const s of analyzed) {
    const up = new Set<string>([...(Array.isArray(s.decl.needs) ? s.decl.needs : Object.values(s.decl.needs)), ...Object.values(s.inputs)]);
    for (const dep of s.deps) {
      const abs = path.resolve(file.dir, dep);
      let owner: string | undefined;
      for (const [out, name] of outsOwner) {
        if (abs === out || abs.startsWith(out + path.sep) || out.startsWith(abs + path.sep)) owner = name;
      }
      if (owner && owner !== s.name) up.add(owner);
      else s.inputPaths.push(abs);
    }
    s.upstream = [...up].filter((n) => byName.has(n) && n !== s.name).sort();
  }

  // 4. Cycles.
  const cycle = findCycle(analyzed);
  if (cycle) {
    const first = cycle[0] ?? '';
    diagnostics.push(at(source, rangeOf(doc, ['stages', first, 'needs']) ?? rangeOf(doc, ['stages', first], 'key'), 'cycle', `stages.${first}.needs`, `dependency cycle: ${cycle.join(' → ')}`));
  }

  if (diagnostics.length > 0) return { ok: false, diagnostics };
  return { ok: true, value: { file, params, stages: topologicalOrder(analyzed) } };
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
