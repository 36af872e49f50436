// Running `pipe` under fault injection: a run with its marker in its own process group (so that a
// signal can go to the group as a terminal or a CI cancel sends it), and the checks that follow
// every fault: the cache holds only complete entries, nothing half-written is left or reused, and
// MLflow holds one terminal record per run with the run's metrics.

import { randomBytes } from 'node:crypto';
import { existsSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { execa, type ResultPromise } from 'execa';
import type { MLflowClient, Run } from '../../src/tracking/mlflow-client.ts';
import { hashPath } from '../../src/util/hash.ts';
import { pipeBin } from '../helpers/cli.ts';
import { MARK_VARIABLE, type Leak, type ProcessWatch } from './processes.ts';
import type { Tally } from './tally.ts';

/** Markers of this suite start with this, so that whatever it leaves can be found and stopped. */
export const SUITE_MARK = `faults-${process.pid}-${randomBytes(3).toString('hex')}`;
let markers = 0;

export function newMarker(label: string): string {
  return `${SUITE_MARK}-${label}-${++markers}`;
}

export interface Ended {
  exitCode: number | undefined;
  signal: string | undefined;
  stdout: string;
  stderr: string;
  endedAt: number;
}

export interface StartedRun {
  marker: string;
  pid: number;
  startedAt: number;
  child: ResultPromise;
  ended: Promise<Ended>;
  /** Set once the process exited. */
  exited: boolean;
}

/** `pipe ARGS` in `dir`, leading its own process group, watched for leaks under a fresh marker. */
export function startPipeRun(dir: string, args: string[], env: Record<string, string>, watch: ProcessWatch, label: string): StartedRun {
  const marker = newMarker(label);
  const child = execa(process.execPath, [pipeBin, ...args], {
    cwd: dir,
    env: { PIPE_NO_TRACK: '1', CI: '1', ...env, [MARK_VARIABLE]: marker },
    reject: false,
    stdin: 'ignore',
    detached: true,
  });
  if (child.pid === undefined) throw new Error(`could not start pipe ${args.join(' ')}`);
  watch.watch(marker, [child.pid]);
  const run: StartedRun = {
    marker, pid: child.pid, startedAt: Date.now(), child, exited: false,
    ended: child.then((r) => {
      run.exited = true;
      return { exitCode: r.exitCode, signal: r.signal, stdout: String(r.stdout), stderr: String(r.stderr), endedAt: Date.now() };
    }),
  };
  return run;
}

/** Sends `signal` to the runner alone or to its process group; false when it had already exited. */
export function signalRun(run: StartedRun, signal: NodeJS.Signals, group: boolean): boolean {
  if (run.exited) return false;
  try {
    process.kill(group ? -run.pid : run.pid, signal);
    return true;
  } catch {
    return false;
  }
}

export function signalPid(pid: number, signal: NodeJS.Signals): boolean {
  try {
    process.kill(pid, signal);
    return true;
  } catch {
    return false;
  }
}

/** Waits for the run to end, then for its processes to go; returns the leaks. */
export async function settle(run: StartedRun, watch: ProcessWatch): Promise<{ ended: Ended; leaks: Leak[] }> {
  const ended = await run.ended;
  return { ended, leaks: await watch.finish(run.marker) };
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

// ---- the cache ----

interface EntryResult {
  outs?: Record<string, string>;
}

/**
 * Entries that are not complete and intact: no result.json or record.json, or a command output
 * whose content no longer has the hash its entry recorded.
 */
export async function brokenEntries(cacheDir: string): Promise<string[]> {
  const entries = path.join(cacheDir, 'entries');
  const broken: string[] = [];
  for (const fp of readdirSafe(entries)) {
    const dir = path.join(entries, fp);
    let result: EntryResult;
    try {
      JSON.parse(readFileSync(path.join(dir, 'record.json'), 'utf8'));
      result = JSON.parse(readFileSync(path.join(dir, 'result.json'), 'utf8')) as EntryResult;
    } catch (error) {
      broken.push(`${fp.slice(0, 10)}: ${(error as Error).message}`);
      continue;
    }
    for (const [out, hash] of Object.entries(result.outs ?? {})) {
      const actual = await hashPath(path.join(dir, 'out', out)).catch(() => 'missing');
      if (actual !== hash) broken.push(`${fp.slice(0, 10)}: out/${out} is ${actual === 'missing' ? 'missing' : 'not what its entry recorded'}`);
    }
  }
  return broken;
}

/** What is in the cache's tmp/ (entries being written, or left by a process that died). */
export function tmpDirs(cacheDir: string): string[] {
  return readdirSafe(path.join(cacheDir, 'tmp'));
}

export function entryNames(cacheDir: string): string[] {
  return readdirSafe(path.join(cacheDir, 'entries'));
}

export function readdirSafe(dir: string): string[] {
  try {
    return readdirSync(dir);
  } catch {
    return [];
  }
}

// ---- MLflow ----

export const TERMINAL = new Set(['FINISHED', 'FAILED', 'KILLED']);

export const tagOf = (run: Run, key: string) => run.data.tags?.find((t) => t.key === key)?.value;

export async function runsOfExperiment(client: MLflowClient, experiment: string): Promise<Run[]> {
  const found = await client.getExperimentByName(experiment);
  if (!found) return [];
  const runs: Run[] = [];
  let pageToken: string | undefined;
  do {
    const page = await client.searchRuns({ experimentIds: [found.experiment_id], maxResults: 1000, pageToken });
    runs.push(...page.runs);
    pageToken = page.nextPageToken;
  } while (pageToken);
  return runs;
}

/** The metrics a run's result is judged by: learned or computed values, not speeds or durations. */
export function resultMetrics(metrics: Record<string, number>): Record<string, number> {
  return Object.fromEntries(Object.entries(metrics).filter(([k]) => !/per_second|duration|^stage\./.test(k)).sort(([a], [b]) => a.localeCompare(b)));
}

export interface RecordCheck {
  /** Run directories with a journal whose MLflow run is missing, or whose finished run lacks its metrics. */
  lost: string[];
  /** MLflow runs of the experiment not in a terminal state. */
  notTerminal: string[];
  runs: number;
}

/**
 * After `pipe sync`: every run directory of the pipeline that has a journal has its MLflow run
 * (tag pipe.run_id), every run of the experiment is terminal, and a run that succeeded has the
 * metrics its summary.json reports.
 */
export async function checkRecords(client: MLflowClient, dir: string, pipelineName: string, experiment: string): Promise<RecordCheck> {
  const runs = await runsOfExperiment(client, experiment);
  const byRunId = new Map(runs.map((r) => [tagOf(r, 'pipe.run_id'), r]));
  const check: RecordCheck = { lost: [], notTerminal: [], runs: runs.length };
  for (const r of runs) if (!TERMINAL.has(r.info.status)) check.notTerminal.push(`${experiment}: MLflow run ${r.info.run_id} (${tagOf(r, 'pipe.run_id')}) is ${r.info.status}`);
  const pipelineDir = path.join(dir, 'runs', pipelineName);
  for (const runId of readdirSafe(pipelineDir)) {
    const runDir = path.join(pipelineDir, runId);
    if (lstatSync(runDir).isSymbolicLink() || !existsSync(path.join(runDir, 'mlflow-journal.jsonl'))) continue;
    const record = byRunId.get(runId);
    if (!record) {
      check.lost.push(`${experiment}: run ${runId} has a journal but no MLflow run`);
      continue;
    }
    const summaryFile = path.join(runDir, 'summary.json');
    if (!existsSync(summaryFile)) continue;
    const summary = JSON.parse(readFileSync(summaryFile, 'utf8')) as { status: string; metrics: Record<string, number> };
    if (summary.status !== 'succeeded') continue;
    const recorded = Object.fromEntries((record.data.metrics ?? []).map((m) => [m.key, m.value]));
    const expected = resultMetrics(summary.metrics);
    const got = Object.fromEntries(Object.keys(expected).map((k) => [k, recorded[k]]));
    if (record.info.status !== 'FINISHED' || JSON.stringify(got) !== JSON.stringify(expected)) {
      check.lost.push(`${experiment}: run ${runId} succeeded with ${JSON.stringify(expected)} but MLflow has ${record.info.status} ${JSON.stringify(got)}`);
    }
  }
  return check;
}

// ---- the checks every scenario makes after a run ----

/** Records the leaks of a run under the fault that preceded it. */
export function recordLeaks(tally: Tally, fault: string, where: string, leaks: Leak[]): void {
  for (const leak of leaks) tally.problem('processes leaked', fault, `${where}: ${leak.what}`);
}

/**
 * The cache after a run: only complete, intact entries; and when the run ended by itself (exit 0
 * or 1), nothing in tmp/: stale directories of killed runs are removed when a run starts, and its
 * own are published or discarded. `skip`: fingerprints the test corrupted on purpose.
 * `tmpMayHold`: false when a process that wrote into this cache was killed during the run (a
 * worker), whose directory only the next run can recognise as stale.
 */
export async function checkCacheAfter(tally: Tally, fault: string, where: string, cacheDir: string, ended: Ended, skip: string[] = [], tmpMayHold = false): Promise<void> {
  for (const broken of await brokenEntries(cacheDir)) {
    if (skip.some((fp) => broken.startsWith(fp.slice(0, 10)))) continue;
    tally.problem('broken promise', fault, `${where}: half or damaged cache entry ${broken}`);
  }
  if (!tmpMayHold && (ended.exitCode === 0 || ended.exitCode === 1)) {
    const left = tmpDirs(cacheDir);
    if (left.length > 0) tally.problem('broken promise', fault, `${where}: run exited ${ended.exitCode} leaving cache tmp/${left.join(', tmp/')}`);
  }
}

/**
 * `pipe sync` in each project directory that records to the experiment, then every run's MLflow
 * record (see checkRecords). All of them first: the check covers the whole experiment, so a project
 * not yet synced would show its killed runs as RUNNING.
 */
export async function syncAndCheckRecords(tally: Tally, client: MLflowClient, uri: string, dirs: readonly string[], pipelineName: string, experiment: string): Promise<void> {
  for (const dir of dirs) {
    const sync = await execa(process.execPath, [pipeBin, 'sync'], { cwd: dir, env: { CI: '1', MLFLOW_TRACKING_URI: uri }, reject: false });
    if (sync.exitCode !== 0) tally.problem('records lost', 'any fault (pipe sync)', `${experiment}: pipe sync exited ${sync.exitCode}: ${String(sync.stdout).slice(-300)}`);
  }
  const notTerminal = new Set<string>();
  for (const dir of dirs) {
    const records = await checkRecords(client, dir, pipelineName, experiment);
    for (const line of records.lost) tally.problem('records lost', 'any fault (after pipe sync)', line);
    for (const line of records.notTerminal) notTerminal.add(line);
  }
  for (const line of notTerminal) tally.problem('records lost', 'any fault (after pipe sync)', line);
}
