// A stage as a self-contained unit of work, the same for a local run and a queued one.

import { shardFingerprint, type FingerprintRecord } from '../cache/fingerprint.ts';
import type { Plan, PlannedStage } from '../plan/plan.ts';
import type { Flavour, Shard } from '../core/stage-kind.ts';

/**
 * One stage as a self-contained unit of work: everything a process needs to compute its cache
 * entry, whether that process is this runner or a `pipe worker` on another machine (which gets it
 * as JSON). Inputs are named by fingerprint, so each side resolves them in its own view of the cache.
 */
export interface StageJob {
  name: string;
  fingerprint: string;
  record: FingerprintRecord;
  /** Re-run even if the entry exists (--force): the old entry is replaced. */
  forced: boolean;
  kind: string;
  usesTensorflow: boolean;
  params: Record<string, unknown>;
  /** Input slot → the fingerprint of the upstream entry that fills it. */
  inputs: Record<string, string>;
  /** Every upstream stage's fingerprint (a worker restores their command outputs before a command runs). */
  upstream: string[];
  command?: string | string[];
  /** Where a command runs: the pipeline file's directory. */
  cwd: string;
  env: Record<string, string>;
  outs: string[];
  metrics: string[];
  timeout?: number;
  cpu: number | 'all';
  gpu: number;
  /** A shard job of a sharded pass: computes one part, into an entry of its own (`fingerprint`). */
  shard?: Shard;
  /** The merge job of a sharded pass: the parts' fingerprints, in shard order. */
  parts?: string[];
}

/**
 * A stage whose kind maps over its input, as `count` shard jobs and one merge job. Each shard
 * computes its part into a cache entry of its own (shardFingerprint), under its own lock, so a
 * killed shard is recomputed by whoever takes its job over and never leaves half a part; the
 * merge job computes the stage's entry (the stage's fingerprint, the same as one job's) from the
 * parts, with no TensorFlow and one CPU, and removes the parts once that entry is published.
 */
export function shardJobs(job: StageJob, count: number): { shards: StageJob[]; merge: StageJob } {
  const shards = Array.from({ length: count }, (_, index): StageJob => ({
    ...job,
    fingerprint: shardFingerprint(job.fingerprint, index, count),
    shard: { index, count },
  }));
  const merge: StageJob = { ...job, usesTensorflow: false, cpu: 1, gpu: 0, parts: shards.map((s) => s.fingerprint) };
  return { shards, merge };
}

export function stageJob(plan: Plan, stage: PlannedStage, flavour: Flavour): StageJob {
  const a = stage.stage;
  return {
    name: stage.name,
    fingerprint: stage.fingerprint,
    record: stage.record,
    forced: stage.forced,
    kind: stage.kindName,
    usesTensorflow: Boolean(a.kind?.usesTensorflow),
    params: a.params,
    inputs: Object.fromEntries(Object.entries(a.inputs).map(([slot, name]) => [slot, upstreamFingerprint(plan, name)])),
    upstream: a.upstream.map((name) => upstreamFingerprint(plan, name)),
    command: a.command,
    cwd: plan.pipeline.file.dir,
    env: a.env,
    outs: a.outs,
    metrics: a.metrics,
    timeout: a.timeout,
    cpu: a.resources.cpu ?? 1,
    gpu: gpusWanted(stage, flavour),
  };
}

/** A TensorFlow stage on the GPU flavour takes one GPU unless its resources say otherwise. */
function gpusWanted(stage: PlannedStage, flavour: Flavour): number {
  const declared = stage.stage.decl.resources.gpu;
  if (declared !== undefined) return declared;
  return stage.stage.kind?.usesTensorflow && flavour === 'gpu' ? 1 : (stage.stage.resources.gpu ?? 0);
}

function upstreamFingerprint(plan: Plan, name: string): string {
  const found = plan.stages.find((s) => s.name === name);
  if (!found) throw new Error(`bug: no planned stage ${name}`);
  return found.fingerprint;
}
