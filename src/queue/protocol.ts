// What the submitting `pipe run|sweep --queue` and the `pipe worker`s agree on: the Redis
// connection, the BullMQ queue names, and the JSON a stage job carries.
//
// A run becomes one BullMQ flow per stage that has to run: the stage's job is the parent, and each
// of its upstream stages that also has to run is one child "edge" job (in a queue no worker takes).
// BullMQ keeps the stage in waiting-children until every edge is gone; the worker that completes
// an upstream stage removes the edges it releases. (A BullMQ job has at most one parent, so an
// upstream stage cannot itself be the child of all its dependents; the edges make a DAG out of
// trees.) A stage that fails for good leaves its edges: its dependents never start, and the
// submitter removes them and reports them as skipped.

import type { RedisOptions } from 'bullmq';
import { UsageError } from '../core/errors.ts';
import type { Flavour } from '../core/stage-kind.ts';
import type { PrunedAt } from '../core/events.ts';
import type { Outcome } from '../exec/run-book.ts';
import type { StageJob } from '../exec/stage-job.ts';

export const PREFIX = 'pipe';
export const STAGE_QUEUE = 'stages';
export const EDGE_QUEUE = 'edges';
/** Pub/sub channel on which a submitter asks workers to stop jobs (JSON: { jobIds }). */
export const CANCEL_CHANNEL = 'pipe:cancel';
/** Pub/sub channel on which a submitter answers a watched stage's epoch (JSON: EpochAnswer). */
export const DECISION_CHANNEL = 'pipe:decision';

/** The submitter's early-stopping decision after an epoch of a stage job. */
export interface EpochAnswer {
  jobId: string;
  epoch: number;
  stop: boolean;
}

export interface StageJobData {
  /** The stage, with `cwd` relative to the submitter's project directory. */
  job: StageJob;
  runId: string;
  /** The cache as the submitter sees it; a worker started with --cache uses its own path. */
  cacheDir: string;
  /** The run's tfjs flavour (the wire name stays `backend`: workers of an older pipe read it). */
  backend: Flavour;
  /** Edge jobs (in EDGE_QUEUE) to remove when this stage's entry is in the cache. */
  releases: string[];
  submitter: string;
  /** A sweep's scheduler watches the stage: after each epoch the worker asks the submitter whether it stops. */
  scheduled?: boolean;
}

/** What a worker returns for a completed stage job. */
export interface StageJobResult {
  /** pruned: stopped by the sweep's scheduler; its result is under the pruned key (cache.ts prunedKey). */
  status: 'ran' | 'cached' | 'pruned';
  pruned?: PrunedAt;
  durationMs: number;
  summary: Outcome['summary'];
  worker: string;
}

/** The progress payloads: run events of the stage, stamped with the worker. */
export type StageJobProgress =
  | { type: 'stage-start'; startedAt: number; worker: string }
  | { type: 'stage-log'; stream: 'stdout' | 'stderr' | 'log'; line: string }
  | { type: 'stage-progress'; done: number; total?: number; label?: string }
  | { type: 'stage-metric'; point: { key: string; value: number; step: number; timestamp: number } }
  /** A watched stage finished an epoch and waits for the submitter's EpochAnswer. */
  | { type: 'stage-epoch'; epoch: number; of: number };

/** `redis://[user:password@]host[:port][/db]` → connection options. */
export function parseQueueUrl(url: string): RedisOptions & { host: string; port: number; db: number } {
  let parsed: URL;
  try {
    parsed = new URL(url);
  } catch {
    throw new QueueUrlError(`--queue ${url}: expected redis://HOST:PORT`);
  }
  if (parsed.protocol !== 'redis:' && parsed.protocol !== 'rediss:') throw new QueueUrlError(`--queue ${url}: expected a redis:// URL`);
  const db = parsed.pathname && parsed.pathname !== '/' ? Number(parsed.pathname.slice(1)) : 0;
  if (!Number.isInteger(db) || db < 0) throw new QueueUrlError(`--queue ${url}: the database must be a number (redis://HOST:PORT/DB)`);
  return {
    host: parsed.hostname || '127.0.0.1',
    port: parsed.port ? Number(parsed.port) : 6379,
    db,
    ...(parsed.username ? { username: decodeURIComponent(parsed.username) } : {}),
    ...(parsed.password ? { password: decodeURIComponent(parsed.password) } : {}),
    ...(parsed.protocol === 'rediss:' ? { tls: {} } : {}),
    // BullMQ's blocking commands must not give up while Redis restarts.
    maxRetriesPerRequest: null,
  };
}

/** A malformed --queue: a usage error (exit 2). */
export class QueueUrlError extends UsageError {}

/** BullMQ job ids may not contain ':'; ours are `<run id>.<fingerprint prefix>`. */
export function stageJobId(runId: string, fingerprint: string): string {
  return `${runId}.${fingerprint.slice(0, 24)}`;
}

export function edgeJobId(runId: string, from: string, to: string): string {
  return `${runId}.${from.slice(0, 16)}-${to.slice(0, 16)}`;
}
