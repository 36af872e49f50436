// A stage's fingerprint: one documented record of everything that can change its artifacts,
// serialised canonically and hashed. The record (not only the hash) is stored beside the artifacts
// and in the pipeline's state, so a cache miss is explained field by field.

import { createHash } from 'node:crypto';

export interface FingerprintRecord {
  /** Bumped when the record's shape or meaning changes. */
  schema: 1;
  /** `command` or the stage kind's name. */
  kind: string;
  /** The kind's implementation version (0 for commands). */
  version: number;
  /** Resolved parameters as they enter the fingerprint (kind params after fingerprintParams). */
  params: Record<string, unknown>;
  /** Command stages: the command, its environment and declared outputs. */
  command?: string | string[];
  env?: Record<string, string>;
  outs?: string[];
  /** Content hash of each input path (absolute path → sha256, `dir:` prefix for directories). */
  inputs: Record<string, string>;
  /** Upstream fingerprints: input slot (kinds) or stage name (commands) → fingerprint. */
  upstream: Record<string, string>;
  /** What in the runtime changes results: tfjs version and native flavour, for TF stages. */
  runtime?: Record<string, string>;
}

/** JSON with object keys sorted at every level: the same record always gives the same bytes. */
export function canonicalJson(value: unknown): string {
  if (value === undefined) return 'null';
  if (value === null || typeof value !== 'object') return JSON.stringify(value);
  if (Array.isArray(value)) return `[${value.map(canonicalJson).join(',')}]`;
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, v]) => `${JSON.stringify(k)}:${canonicalJson(v)}`).join(',')}}`;
}

export function fingerprintOf(record: FingerprintRecord): string {
  return createHash('sha256').update(canonicalJson(record)).digest('hex');
}

/**
 * The entry of shard `index` of `count` of a sharded pass (a part, merged into the entry
 * `stage` names): the stage's fingerprint and the shard, hashed.
 */
export function shardFingerprint(stage: string, index: number, count: number): string {
  return createHash('sha256').update(canonicalJson({ stage, shard: index, shards: count })).digest('hex');
}

export function shortFingerprint(fp: string): string {
  return fp.slice(0, 10);
}

/** Why `current` differs from `previous`, one sentence per changed field; names upstream stages. */
export function explainChange(
  previous: FingerprintRecord,
  current: FingerprintRecord,
  upstreamNames: Record<string, string> = {},
): string[] {
  const reasons: string[] = [];
  if (previous.kind !== current.kind) reasons.push(`kind changed: ${previous.kind} → ${current.kind}`);
  else if (previous.version !== current.version) reasons.push(`${current.kind} implementation changed: version ${previous.version} → ${current.version}`);
  diffMaps(previous.params, current.params, (key, before, after) => {
    if (before === undefined) reasons.push(`param ${key} added: ${show(after)}`);
    else if (after === undefined) reasons.push(`param ${key} removed (was ${show(before)})`);
    else reasons.push(`param ${key} changed: ${show(before)} → ${show(after)}`);
  });
  if (canonicalJson(previous.command) !== canonicalJson(current.command)) reasons.push(`command changed: ${show(previous.command)} → ${show(current.command)}`);
  diffMaps(previous.env ?? {}, current.env ?? {}, (key, before, after) => reasons.push(`env ${key} changed: ${show(before)} → ${show(after)}`));
  if (canonicalJson(previous.outs) !== canonicalJson(current.outs)) reasons.push(`outs changed: ${show(previous.outs)} → ${show(current.outs)}`);
  diffMaps(previous.inputs, current.inputs, (key, before, after) => {
    if (before === undefined) reasons.push(`new input ${key}`);
    else if (after === undefined) reasons.push(`input ${key} removed`);
    else reasons.push(`input ${key} changed (content ${String(before).slice(-8)} → ${String(after).slice(-8)})`);
  });
  diffMaps(previous.upstream, current.upstream, (key, before, after) => {
    const name = upstreamNames[key] ?? key;
    if (before === undefined) reasons.push(`new upstream stage '${name}'`);
    else if (after === undefined) reasons.push(`upstream stage '${name}' removed`);
    else reasons.push(`upstream stage '${name}' changed`);
  });
  diffMaps(previous.runtime ?? {}, current.runtime ?? {}, (key, before, after) => reasons.push(`runtime ${key} changed: ${show(before)} → ${show(after)}`));
  return reasons;
}

function diffMaps(
  before: Record<string, unknown>,
  after: Record<string, unknown>,
  report: (key: string, before: unknown, after: unknown) => void,
): void {
  const keys = [...new Set([...Object.keys(before), ...Object.keys(after)])].sort();
  for (const key of keys) {
    if (canonicalJson(before[key]) !== canonicalJson(after[key])) report(key, before[key], after[key]);
  }
}

function show(value: unknown): string {
  if (value === undefined) return 'nothing';
  const text = typeof value === 'string' ? value : JSON.stringify(value);
  return text.length > 80 ? `${text.slice(0, 77)}...` : text;
}
