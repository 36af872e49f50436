// `pipe sync`: sends what runs could not send to their MLflow server (their journals), exactly once,
// and marks runs whose runner died as KILLED. Every `pipe run` does the same in the background.

import { existsSync, lstatSync, readdirSync, readFileSync, renameSync, statSync, writeFileSync } from 'node:fs';
import { hostname } from 'node:os';
import { join, resolve } from 'node:path';
import { Journal, JOURNAL_FILE, lockJournal, redirectJournal, replayJournal, ReplaySession, unlockJournal, type ReplayResult, type TrackingRef } from './journal.ts';
import { authFromEnv, MLflowClient, type RetryOptions } from './mlflow-client.ts';
import { ensureEmbeddedServer, isPidAlive, TrackingServerError } from './server.ts';

export const TRACKING_FILE = 'tracking.json';

/** `<runDir>/tracking.json`: which MLflow run a pipe run is, and which process records it. */
export interface TrackingRecord {
  run_id: string | null;
  experiment_id: string | null;
  journal_id: string;
  pid: number;
  host: string;
  started_at: number;
  /** Set when the tracker closed (the run's final status, as recorded in the journal). */
  ended?: string;
}

export function readTrackingRecord(runDir: string): TrackingRecord | undefined {
  try {
    return JSON.parse(readFileSync(join(runDir, TRACKING_FILE), 'utf8')) as TrackingRecord;
  } catch {
    return undefined;
  }
}

/** Replaces tracking.json whole (a temporary file renamed into place): a kill never leaves it torn. */
export function writeTrackingRecord(runDir: string, record: TrackingRecord): void {
  const path = join(runDir, TRACKING_FILE);
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(record, null, 2) + '\n');
  renameSync(tmp, path);
}

/** Run directories (runs/<pipeline>/<run-id>/, a sweep's runs/<pipeline>/<sweep-id>/<trial>/) that have a journal. */
export function findRunDirs(projectDir: string): string[] {
  const runsDir = resolve(projectDir, 'runs');
  const out: string[] = [];
  for (const pipeline of safeReaddir(runsDir)) {
    if (pipeline === 'mlflow') continue;
    const pDir = join(runsDir, pipeline);
    for (const run of safeReaddir(pDir)) {
      const runDir = join(pDir, run);
      // `latest` is a link to a run directory listed under its own name.
      if (lstatSync(runDir, { throwIfNoEntry: false })?.isSymbolicLink() !== false) continue;
      if (existsSync(join(runDir, JOURNAL_FILE))) out.push(runDir);
      else for (const trial of safeReaddir(runDir)) if (existsSync(join(runDir, trial, JOURNAL_FILE))) out.push(join(runDir, trial));
    }
  }
  return out.sort();
}

/**
 * A run is orphaned when its runner (tracking.json's pid, on this host) is dead and its journal has
 * no final status: the runner was killed. Appends status KILLED (at the time of the run's last
 * record) to the journal; the next replay sends it. Returns the run directories marked.
 */
export function markOrphanedJournals(projectDir: string, exclude: readonly string[] = []): string[] {
  const marked: string[] = [];
  const skip = new Set(exclude.map((d) => resolve(d)));
  for (const runDir of findRunDirs(projectDir)) {
    if (skip.has(resolve(runDir))) continue;
    const rec = readTrackingRecord(runDir);
    if (rec === undefined || rec.host !== hostname() || isPidAlive(rec.pid)) continue;
    if (!lockJournal(runDir)) continue;
    try {
      const journal = Journal.open(runDir);
      if (journal === undefined || journal.hasTerminalStatus()) continue;
      const lastAt = Math.max(rec.started_at, ...journal.all().map((e) => e.at));
      journal.append({ kind: 'update-run', status: 'KILLED', endTime: lastAt });
      writeTrackingRecord(runDir, { ...rec, ended: 'KILLED' });
      marked.push(runDir);
    } finally {
      unlockJournal(runDir);
    }
  }
  return marked;
}

export interface SyncOptions {
  projectDir: string;
  env?: NodeJS.ProcessEnv;
  /** Run directories to leave alone (the tracker's own run). */
  exclude?: string[];
  /** Only these run directories (default: every one under runs/). */
  only?: string[];
  /** Send to this server instead of the one each journal was recorded for (`pipe sync --to`). */
  to?: string;
  retry?: Partial<RetryOptions>;
}

export interface RunSyncReport {
  runDir: string;
  /** Where its requests go. */
  uri?: string;
  result?: ReplayResult;
  /** Why nothing could be sent: in use by a live runner, server not available, ... */
  skipped?: string;
}

export interface SyncReport {
  orphansMarked: string[];
  runs: RunSyncReport[];
  /** Requests still not sent, over all runs. */
  pending: number;
}

/** Marks orphans, then replays every journal with pending requests, each to the server it was recorded for. */
export async function syncRuns(opts: SyncOptions): Promise<SyncReport> {
  const env = opts.env ?? process.env;
  const exclude = new Set((opts.exclude ?? []).map((d) => resolve(d)));
  const orphansMarked = markOrphanedJournals(opts.projectDir, [...exclude]);
  const only = opts.only?.map((d) => resolve(d));
  const report: SyncReport = { orphansMarked, runs: [], pending: 0 };
  const clients = new Map<string, Promise<MLflowClient>>();

  const clientFor = (ref: TrackingRef): Promise<MLflowClient> => {
    const key = ref.embedded ? 'embedded' : ref.uri;
    let c = clients.get(key);
    if (c === undefined) {
      c = (async () => {
        const uri = ref.embedded ? (await ensureEmbeddedServer({ projectDir: opts.projectDir })).uri : ref.uri;
        const options: ConstructorParameters<typeof MLflowClient>[0] = { uri };
        const auth = ref.embedded ? undefined : authFromEnv(env);
        if (auth !== undefined) options.auth = auth;
        if (opts.retry !== undefined) options.retry = opts.retry;
        return new MLflowClient(options);
      })();
      clients.set(key, c);
    }
    return c;
  };

  for (const runDir of findRunDirs(opts.projectDir)) {
    if (exclude.has(resolve(runDir))) continue;
    if (only !== undefined && !only.includes(resolve(runDir))) continue;
    const peek = Journal.open(runDir);
    if (peek === undefined || peek.pending().length === 0) continue;
    const entry: RunSyncReport = { runDir };
    report.runs.push(entry);
    if (!lockJournal(runDir)) {
      entry.skipped = 'in use by a running pipe process';
      report.pending += peek.pending().length;
      continue;
    }
    try {
      // Re-read under the lock: the previous holder may have appended since.
      let journal = Journal.open(runDir)!;
      if (opts.to !== undefined) {
        const redirected = redirect(runDir, journal, opts.to);
        if (typeof redirected === 'string') {
          entry.skipped = redirected;
          report.pending += journal.pending().length;
          continue;
        }
        journal = redirected;
      }
      let client: MLflowClient;
      try {
        client = await clientFor(journal.header.tracking);
      } catch (error) {
        if (!(error instanceof TrackingServerError)) throw error;
        entry.skipped = error.message;
        report.pending += journal.pending().length;
        continue;
      }
      entry.uri = client.uri;
      entry.result = await replayJournal(journal, client, new ReplaySession(true));
      report.pending += entry.result.pending;
      const rec = readTrackingRecord(runDir);
      const run = journal.run;
      if (rec !== undefined && run !== undefined && rec.run_id !== run.runId) {
        writeTrackingRecord(runDir, { ...rec, run_id: run.runId, experiment_id: run.experimentId });
      }
    } finally {
      unlockJournal(runDir);
    }
  }
  return report;
}

/**
 * Points a journal at another server, for good (later syncs go there too). Only a run not yet
 * created on its server can move: its other requests refer to that server's run. Returns the
 * reopened journal, or why it cannot move.
 */
function redirect(runDir: string, journal: Journal, uri: string): Journal | string {
  const from = journal.header.tracking;
  if (!from.embedded && from.uri === uri) return journal;
  if (journal.run !== undefined) {
    return `its MLflow run ${journal.run.runId} is on ${from.embedded ? 'the local server' : from.uri}; only runs not yet created there can go --to another server (or --drop it)`;
  }
  redirectJournal(runDir, { embedded: false, uri });
  return Journal.open(runDir)!;
}

/** Marks orphaned runs KILLED on their server (through their journals), now. */
export async function markOrphans(projectDir: string, opts: Omit<SyncOptions, 'projectDir' | 'only'> = {}): Promise<string[]> {
  const marked = markOrphanedJournals(projectDir, opts.exclude ?? []);
  if (marked.length > 0) await syncRuns({ ...opts, projectDir, only: marked });
  return marked;
}

function safeReaddir(dir: string): string[] {
  try {
    return readdirSync(dir).filter((n) => {
      try {
        return statSync(join(dir, n)).isDirectory();
      } catch {
        return false;
      }
    });
  } catch {
    return [];
  }
}

/** A client for the server a journal was recorded for (starting the embedded one if need be). */
export async function clientForJournal(projectDir: string, journal: Journal, env: NodeJS.ProcessEnv = process.env): Promise<MLflowClient> {
  const ref = journal.header.tracking;
  const uri = ref.embedded ? (await ensureEmbeddedServer({ projectDir })).uri : ref.uri;
  const options: ConstructorParameters<typeof MLflowClient>[0] = { uri };
  const auth = ref.embedded ? undefined : authFromEnv(env);
  if (auth !== undefined) options.auth = auth;
  return new MLflowClient(options);
}
