// Planning: an analyzed pipeline → the fingerprint of every stage and whether it must run, and why.
// The pure core (`fingerprintStages`, `decide`) does no I/O; `planPipeline` gathers the facts
// (input hashes, cache entries, the last recorded state) and calls it.

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { AnalyzedPipeline, AnalyzedStage } from '../pipeline/analyze.ts';
import type { Cache } from '../cache/cache.ts';
import type { Diagnostic } from '../core/diagnostics.ts';
import { at } from '../core/diagnostics.ts';
import { explainChange, fingerprintOf, type FingerprintRecord } from '../cache/fingerprint.ts';
import { hashPath, loadHashIndex, saveHashIndex } from '../util/hash.ts';
import { rangeOf } from '../pipeline/pipeline.ts';

export interface PlannedStage {
  name: string;
  kindName: string;
  stage: AnalyzedStage;
  record: FingerprintRecord;
  fingerprint: string;
  /** A complete cache entry exists and the stage is not forced. */
  cached: boolean;
  forced: boolean;
  /** Why the stage will run (empty when cached). */
  reasons: string[];
}

export interface Plan {
  pipeline: AnalyzedPipeline;
  /** Topological order. */
  stages: PlannedStage[];
}

/** Per-pipeline memory of the last fingerprint record of each stage, to explain changes. */
export interface PipelineState {
  stages: Record<string, { fingerprint: string; record: FingerprintRecord; at: number }>;
}

/** Pure: every stage's fingerprint record from resolved params, input hashes and the runtime. */
export function fingerprintStages(
  pipeline: AnalyzedPipeline,
  inputHashes: Record<string, string>,
  runtime: Record<string, string>,
): Array<{ stage: AnalyzedStage; record: FingerprintRecord; fingerprint: string }> {
  const fingerprints = new Map<string, string>();
  const out: Array<{ stage: AnalyzedStage; record: FingerprintRecord; fingerprint: string }> = [];
  for (const stage of pipeline.stages) {
    const inputs: Record<string, string> = {};
    for (const p of stage.inputPaths) inputs[relativeInput(pipeline.file.dir, p)] = inputHashes[p] ?? 'missing';
    const upstream: Record<string, string> = {};
    if (stage.kind) {
      for (const [slot, name] of Object.entries(stage.inputs)) upstream[slot] = fingerprints.get(name) ?? '';
      // Stages needed only for ordering still change this stage when they change.
      for (const name of stage.upstream) if (!Object.values(stage.inputs).includes(name)) upstream[`after:${name}`] = fingerprints.get(name) ?? '';
    } else {
      for (const name of stage.upstream) upstream[name] = fingerprints.get(name) ?? '';
    }
    const record: FingerprintRecord = stage.kind
      ? {
          schema: 1,
          kind: stage.kindName,
          version: stage.kind.version,
          params: stage.kind.fingerprintParams?.(stage.params as never) ?? stage.params,
          inputs,
          upstream,
          runtime: stage.kind.usesTensorflow ? runtime : undefined,
        }
      : {
          schema: 1,
          kind: stage.kindName,
          version: 0,
          params: stage.params,
          command: stage.command,
          env: stage.env,
          outs: stage.outs,
          inputs,
          upstream,
        };
    const fingerprint = fingerprintOf(record);
    fingerprints.set(stage.name, fingerprint);
    out.push({ stage, record, fingerprint });
  }
  return out;
}

/** Pure: which stages run and why. */
export function decide(
  fingerprinted: Array<{ stage: AnalyzedStage; record: FingerprintRecord; fingerprint: string }>,
  cachedFingerprints: ReadonlySet<string>,
  previous: PipelineState,
  force: ReadonlySet<string>,
): PlannedStage[] {
  const planned = new Map<string, PlannedStage>();
  for (const { stage, record, fingerprint } of fingerprinted) {
    const forcedUpstream = stage.upstream.filter((u) => planned.get(u)?.forced);
    const forced = force.has(stage.name) || forcedUpstream.length > 0;
    const cached = !forced && cachedFingerprints.has(fingerprint);
    const reasons: string[] = [];
    if (force.has(stage.name)) reasons.push('forced (--force)');
    else if (forcedUpstream.length > 0) reasons.push(`upstream stage '${forcedUpstream.join("', '")}' is forced`);
    else if (!cached) {
      const last = previous.stages[stage.name];
      if (!last) reasons.push('no cached result (first run of this stage)');
      else if (last.fingerprint === fingerprint) reasons.push('cache entry missing (removed by gc or never completed)');
      else {
        const slotNames: Record<string, string> = {};
        for (const [slot, name] of Object.entries(stage.inputs)) slotNames[slot] = name;
        for (const name of stage.upstream) slotNames[`after:${name}`] = name;
        const changes = explainChange(last.record, record, slotNames);
        reasons.push(...(changes.length ? changes : ['fingerprint changed']));
      }
    }
    planned.set(stage.name, { name: stage.name, kindName: stage.kindName, stage, record, fingerprint, cached, forced, reasons });
  }
  return [...planned.values()];
}

function relativeInput(dir: string, p: string): string {
  const rel = path.relative(dir, p);
  return rel.startsWith('..') || path.isAbsolute(rel) ? p : rel;
}

export interface PlanOptions {
  cache: Cache;
  statePath: string;
  hashIndexPath: string;
  runtime: Record<string, string>;
  force?: ReadonlySet<string>;
}

export type PlanResult = { ok: true; plan: Plan } | { ok: false; diagnostics: Diagnostic[] };

export async function planPipeline(pipeline: AnalyzedPipeline, options: PlanOptions): Promise<PlanResult> {
  const index = await loadHashIndex(options.hashIndexPath);
  const hashes: Record<string, string> = {};
  const diagnostics: Diagnostic[] = [];
  for (const stage of pipeline.stages) {
    for (const p of stage.inputPaths) {
      if (p in hashes) continue;
      try {
        hashes[p] = await hashPath(p, index);
      } catch {
        const { source, doc } = pipeline.file;
        const field = stage.kind ? 'with' : 'deps';
        diagnostics.push(at(source, rangeOf(doc, ['stages', stage.name, field]) ?? rangeOf(doc, ['stages', stage.name], 'key'), 'bad-path', `stages.${stage.name}.${field}`, `input path not found: ${p}`));
      }
    }
  }
  await saveHashIndex(options.hashIndexPath, index).catch(() => undefined);
  if (diagnostics.length) return { ok: false, diagnostics };

  const fingerprinted = fingerprintStages(pipeline, hashes, options.runtime);
  const cached = new Set<string>();
  for (const { fingerprint } of fingerprinted) if (await options.cache.has(fingerprint)) cached.add(fingerprint);
  const previous = await readState(options.statePath);
  const force = options.force ?? new Set<string>();
  return { ok: true, plan: { pipeline, stages: decide(fingerprinted, cached, previous, force) } };
}

export async function readState(file: string): Promise<PipelineState> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as PipelineState;
  } catch {
    return { stages: {} };
  }
}

/** Records the stage's fingerprint as its latest (atomic replace; concurrent runs: last wins). */
export async function recordState(file: string, name: string, fingerprint: string, record: FingerprintRecord): Promise<void> {
  const state = await readState(file);
  state.stages[name] = { fingerprint, record, at: Date.now() };
  await fs.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  await fs.writeFile(tmp, JSON.stringify(state, null, 2));
  await fs.rename(tmp, file);
}
