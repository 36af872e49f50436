// Which MLflow server a run talks to, and the embedded one pipe starts when the user names none.
//
// The embedded server is `mlflow server` from the project venv on a SQLite store and an artifact
// directory under runs/mlflow/. It is started detached so that it outlives the `pipe` process: the
// next run and `pipe ui` find it through runs/mlflow/server.json and reuse it while /health answers.

import { spawn, type ChildProcess } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { join, resolve } from 'node:path';
import { UnavailableError } from '../core/errors.ts';
import { processAlive } from '../util/files.ts';

export interface TrackingTarget {
  /** Base URL of the tracking server (no trailing slash). */
  uri: string;
  /** True for the local server pipe manages under runs/mlflow/. */
  embedded: boolean;
}

export type TrackingServerFailure = 'no-mlflow' | 'exited' | 'timeout' | 'busy-record';

/** The MLflow server cannot be started or reached: unavailable (exit 1). */
export class TrackingServerError extends UnavailableError {
  constructor(
    message: string,
    readonly reason: TrackingServerFailure,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}

export interface EmbeddedPaths {
  dir: string;
  db: string;
  artifacts: string;
  log: string;
  record: string;
  lock: string;
}

export function embeddedPaths(projectDir: string): EmbeddedPaths {
  const dir = resolve(projectDir, 'runs', 'mlflow');
  return {
    dir,
    db: join(dir, 'mlflow.db'),
    artifacts: join(dir, 'artifacts'),
    log: join(dir, 'server.log'),
    record: join(dir, 'server.json'),
    lock: join(dir, 'server.lock'),
  };
}

/** runs/mlflow/server.json */
export interface ServerRecord {
  pid: number;
  port: number;
  host: string;
  uri: string;
  startedAt: string;
}

export interface EmbeddedServer extends ServerRecord {
  /** False when this call started it. */
  reused: boolean;
}

export interface ResolveTrackingOptions {
  projectDir: string;
  /** A tracking URI named by the pipeline or the command line; wins over MLFLOW_TRACKING_URI. */
  trackingUri?: string;
  env?: NodeJS.ProcessEnv;
  /** Interface the embedded server binds to (default 127.0.0.1). */
  host?: string;
  startTimeoutMs?: number;
  /** Default: <projectDir>/.venv/bin/mlflow, or PIPE_MLFLOW_BIN. */
  mlflowBin?: string;
}

/**
 * The explicit URI, else MLFLOW_TRACKING_URI, else the embedded server (found or started). Only
 * http(s) URIs are supported: pipe speaks the REST API.
 */
export async function resolveTracking(opts: ResolveTrackingOptions): Promise<TrackingTarget> {
  const env = opts.env ?? process.env;
  const named = opts.trackingUri ?? env['MLFLOW_TRACKING_URI'];
  if (named !== undefined && named !== '') {
    if (!/^https?:\/\//.test(named)) {
      throw new TrackingServerError(
        `Tracking URI ${named} is not supported: pipe talks to an MLflow tracking server over HTTP ` +
          `(http://host:port); unset MLFLOW_TRACKING_URI to use the embedded server`,
        'no-mlflow',
      );
    }
    return { uri: named.replace(/\/+$/, ''), embedded: false };
  }
  const server = await ensureEmbeddedServer(opts);
  return { uri: server.uri, embedded: true };
}

/** The recorded embedded server if it answers /health, without starting one. */
export async function findEmbeddedServer(projectDir: string): Promise<EmbeddedServer | undefined> {
  const record = readRecord(embeddedPaths(projectDir).record);
  if (record !== undefined && (await isHealthy(record.uri))) return { ...record, reused: true };
  return undefined;
}

export interface EnsureServerOptions {
  projectDir: string;
  host?: string;
  startTimeoutMs?: number;
  /** Default: <projectDir>/.venv/bin/mlflow, or PIPE_MLFLOW_BIN. */
  mlflowBin?: string;
}

/** Finds the embedded server or starts it (one starter at a time: runs/mlflow/server.lock). */
export async function ensureEmbeddedServer(opts: EnsureServerOptions): Promise<EmbeddedServer> {
  const paths = embeddedPaths(opts.projectDir);
  const timeoutMs = opts.startTimeoutMs ?? 120_000;
  const deadline = Date.now() + timeoutMs;
  mkdirSync(paths.dir, { recursive: true });

  for (;;) {
    const found = await findEmbeddedServer(opts.projectDir);
    if (found !== undefined) return found;
    if (tryLock(paths.lock)) break;
    // Another pipe process is starting it: wait for its record to answer.
    if (Date.now() > deadline) {
      throw new TrackingServerError(
        `Timed out waiting for another pipe process to start the MLflow server (lock ${paths.lock}); see ${paths.log}`,
        'timeout',
      );
    }
    await sleep(500);
  }

  try {
    // Re-check under the lock: someone may have finished starting it meanwhile.
    const found = await findEmbeddedServer(opts.projectDir);
    if (found !== undefined) return found;
    const stale = readRecord(paths.record);
    if (stale !== undefined) stopRecordedServer(stale);

    const bin = opts.mlflowBin ?? process.env['PIPE_MLFLOW_BIN'] ?? join(resolve(opts.projectDir), '.venv', 'bin', 'mlflow');
    const host = opts.host ?? '127.0.0.1';
    const port = await freePort(host);
    const child = spawnMlflowServer({
      mlflowBin: bin,
      storeDir: paths.dir,
      host,
      port,
      logFile: paths.log,
      detached: true,
    });
    const uri = `http://${clientHost(host)}:${port}`;
    const record: ServerRecord = { pid: child.pid ?? -1, port, host, uri, startedAt: new Date().toISOString() };
    try {
      await waitForHealth(uri, { child, timeoutMs: Math.max(1000, deadline - Date.now()), logFile: paths.log });
    } catch (error) {
      if (child.pid !== undefined && child.exitCode === null) killGroup(child.pid);
      throw error;
    }
    writeJsonAtomic(paths.record, record);
    child.unref();
    return { ...record, reused: false };
  } finally {
    rmSync(paths.lock, { force: true });
  }
}

/** Stops the recorded embedded server (only a process whose command line is mlflow's). */
export async function stopEmbeddedServer(projectDir: string): Promise<boolean> {
  const paths = embeddedPaths(projectDir);
  const record = readRecord(paths.record);
  if (record === undefined) return false;
  const stopped = stopRecordedServer(record);
  rmSync(paths.record, { force: true });
  return stopped;
}

// ---- process plumbing (shared with the test helper) ----

export interface SpawnServerOptions {
  mlflowBin: string;
  /** Holds mlflow.db and artifacts/. */
  storeDir: string;
  host: string;
  port: number;
  logFile: string;
  /** Own process group, outliving the parent when unref'd. */
  detached: boolean;
  extraArgs?: string[];
}

/**
 * `mlflow server` with one worker and without the job runner (MLflow 3 starts a Huey consumer pool
 * for its GenAI jobs by default: about a gigabyte of memory that pipe never uses).
 */
export function spawnMlflowServer(o: SpawnServerOptions): ChildProcess {
  if (!existsSync(o.mlflowBin)) {
    throw new TrackingServerError(
      `Cannot start the MLflow server: ${o.mlflowBin} does not exist (run \`npm run setup\` to create the ` +
        `project venv, or set MLFLOW_TRACKING_URI to a running server)`,
      'no-mlflow',
    );
  }
  mkdirSync(o.storeDir, { recursive: true });
  const storeDir = resolve(o.storeDir);
  const args = [
    'server',
    '--backend-store-uri',
    `sqlite:///${join(storeDir, 'mlflow.db')}`,
    '--artifacts-destination',
    join(storeDir, 'artifacts'),
    '--host',
    o.host,
    '--port',
    String(o.port),
    '--workers',
    '1',
    ...(o.extraArgs ?? []),
  ];
  const logFd = openSync(o.logFile, 'a');
  try {
    return spawn(o.mlflowBin, args, {
      cwd: storeDir,
      detached: o.detached,
      stdio: ['ignore', logFd, logFd],
      env: { ...process.env, MLFLOW_SERVER_ENABLE_JOB_EXECUTION: 'false', PYTHONUNBUFFERED: '1' },
    });
  } finally {
    closeSync(logFd);
  }
}

/** Resolves when `<uri>/health` answers 200; fails when the child exits or the time is up. */
export async function waitForHealth(
  uri: string,
  opts: { timeoutMs: number; child?: ChildProcess; logFile?: string },
): Promise<void> {
  const deadline = Date.now() + opts.timeoutMs;
  const where = opts.logFile ? `; see ${opts.logFile}` : '';
  let exited: { code: number | null; signal: NodeJS.Signals | null } | undefined;
  let spawnError: Error | undefined;
  const onExit = (code: number | null, signal: NodeJS.Signals | null): void => {
    exited = { code, signal };
  };
  const onError = (err: Error): void => {
    spawnError = err;
  };
  opts.child?.once('exit', onExit);
  opts.child?.once('error', onError);
  try {
    for (;;) {
      if (spawnError !== undefined) {
        throw new TrackingServerError(`Could not start the MLflow server: ${spawnError.message}${where}`, 'exited', {
          cause: spawnError,
        });
      }
      if (exited !== undefined) {
        const how = exited.signal ? `signal ${exited.signal}` : `code ${exited.code}`;
        throw new TrackingServerError(`The MLflow server exited (${how}) before answering ${uri}/health${where}`, 'exited');
      }
      if (await isHealthy(uri)) return;
      if (Date.now() > deadline) {
        throw new TrackingServerError(
          `The MLflow server did not answer ${uri}/health within ${Math.round(opts.timeoutMs / 1000)} s${where}`,
          'timeout',
        );
      }
      await sleep(250);
    }
  } finally {
    opts.child?.off('exit', onExit);
    opts.child?.off('error', onError);
  }
}

export async function isHealthy(uri: string, timeoutMs = 2000): Promise<boolean> {
  try {
    const res = await fetch(`${uri}/health`, { signal: AbortSignal.timeout(timeoutMs) });
    const body = await res.text();
    return res.ok && body.trim() === 'OK';
  } catch {
    return false;
  }
}

/** A port nobody listens on right now (the OS picks it). */
export function freePort(host = '127.0.0.1'): Promise<number> {
  return new Promise((resolvePort, reject) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', reject);
    srv.listen(0, host, () => {
      const addr = srv.address();
      const port = typeof addr === 'object' && addr !== null ? addr.port : 0;
      srv.close(() => resolvePort(port));
    });
  });
}

/** Sends SIGTERM to a process group we started (detached children lead their own group). */
export function killGroup(pid: number, signal: NodeJS.Signals = 'SIGTERM'): boolean {
  try {
    process.kill(-pid, signal);
    return true;
  } catch {
    try {
      process.kill(pid, signal);
      return true;
    } catch {
      return false;
    }
  }
}

/** Whether the pid runs on this machine (kept under this name for the tracking modules). */
export const isPidAlive = processAlive;

// ---- internals ----

function clientHost(bindHost: string): string {
  if (bindHost === '0.0.0.0' || bindHost === '::' || bindHost === '') return '127.0.0.1';
  return bindHost.includes(':') ? `[${bindHost}]` : bindHost;
}

function readRecord(path: string): ServerRecord | undefined {
  try {
    const r = JSON.parse(readFileSync(path, 'utf8')) as Partial<ServerRecord>;
    if (typeof r.pid === 'number' && typeof r.port === 'number' && typeof r.uri === 'string') {
      return { pid: r.pid, port: r.port, host: r.host ?? '127.0.0.1', uri: r.uri, startedAt: r.startedAt ?? '' };
    }
  } catch {
    // missing or torn: treated as no record
  }
  return undefined;
}

/** Stops a recorded server only when its pid still runs mlflow (the pid may have been reused). */
function stopRecordedServer(record: ServerRecord): boolean {
  if (!isPidAlive(record.pid)) return false;
  let cmdline = '';
  try {
    cmdline = readFileSync(`/proc/${record.pid}/cmdline`, 'utf8');
  } catch {
    return false;
  }
  if (!cmdline.includes('mlflow')) return false;
  return killGroup(record.pid);
}

function tryLock(lockPath: string): boolean {
  try {
    writeFileSync(lockPath, JSON.stringify({ pid: process.pid, at: Date.now() }), { flag: 'wx' });
    return true;
  } catch {
    try {
      const held = JSON.parse(readFileSync(lockPath, 'utf8')) as { pid?: number; at?: number };
      const stale = typeof held.pid !== 'number' || !isPidAlive(held.pid) || Date.now() - (held.at ?? 0) > 300_000;
      if (stale) rmSync(lockPath, { force: true });
    } catch {
      // Unreadable: being written right now, or torn by a crash (then old).
      try {
        if (Date.now() - statSync(lockPath).mtimeMs > 10_000) rmSync(lockPath, { force: true });
      } catch {
        // gone meanwhile
      }
    }
    return false;
  }
}

function writeJsonAtomic(path: string, value: unknown): void {
  const tmp = `${path}.${process.pid}.tmp`;
  writeFileSync(tmp, JSON.stringify(value, null, 2) + '\n');
  renameSync(tmp, path);
}

function sleep(ms: number): Promise<void> {
  return new Promise((r) => setTimeout(r, ms));
}
