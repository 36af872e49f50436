// A real MLflow server from the project venv for tests: a temporary SQLite store and artifact
// directory, a free loopback port. Starting takes several seconds: share one per test file.
//
//   const mlflow = await startTestMlflow();
//   ... mlflow.uri, mlflow.client ...
//   await mlflow.stop();      // the store stays
//   await mlflow.start();     // same store, same port
//   await mlflow.dispose();   // stop and delete the temporary directory

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import { MLflowClient } from '../../src/tracking/mlflow-client.ts';
import { freePort, killGroup, spawnMlflowServer, waitForHealth } from '../../src/tracking/server.ts';

const repoDir = resolve(fileURLToPath(import.meta.url), '..', '..', '..');

export interface TestMlflow {
  uri: string;
  port: number;
  /** Holds mlflow.db, artifacts/ and server.log. */
  dir: string;
  logFile: string;
  client: MLflowClient;
  /** Starts the server again on the same store and port (after stop). */
  start(): Promise<void>;
  /** Stops the server (SIGTERM to its process group; SIGKILL after 10 s). */
  stop(): Promise<void>;
  /** Kills the server without warning (SIGKILL to its process group), as a crash would. */
  kill(): Promise<void>;
  dispose(): Promise<void>;
}

export async function startTestMlflow(opts: { dir?: string; port?: number; timeoutMs?: number } = {}): Promise<TestMlflow> {
  const dir = opts.dir ?? mkdtempSync(join(tmpdir(), 'pipe-mlflow-'));
  const port = opts.port ?? (await freePort());
  const uri = `http://127.0.0.1:${port}`;
  const logFile = join(dir, 'server.log');
  const mlflowBin = process.env['PIPE_MLFLOW_BIN'] ?? join(repoDir, '.venv', 'bin', 'mlflow');
  let child: ChildProcess | undefined;

  const start = async (): Promise<void> => {
    if (child !== undefined) return;
    const c = spawnMlflowServer({ mlflowBin, storeDir: dir, host: '127.0.0.1', port, logFile, detached: true });
    child = c;
    try {
      await waitForHealth(uri, { child: c, timeoutMs: opts.timeoutMs ?? 120_000, logFile });
    } catch (error) {
      await stop();
      throw error;
    }
  };

  const stop = async (signal: NodeJS.Signals = 'SIGTERM'): Promise<void> => {
    const c = child;
    child = undefined;
    if (c === undefined || c.pid === undefined) return;
    if (c.exitCode !== null || c.signalCode !== null) return;
    const exited = new Promise<void>((r) => c.once('exit', () => r()));
    killGroup(c.pid, signal);
    const timer = setTimeout(() => killGroup(c.pid!, 'SIGKILL'), 10_000);
    await exited;
    clearTimeout(timer);
    // uvicorn's worker is in the same group; give the port a moment to be released.
    for (let i = 0; i < 40 && !(await portFree(port)); i++) await new Promise((r) => setTimeout(r, 250));
  };

  await start();
  return {
    uri,
    port,
    dir,
    logFile,
    client: new MLflowClient({ uri, retry: { retries: 1, baseDelayMs: 100 } }),
    start,
    stop: () => stop(),
    kill: () => stop('SIGKILL'),
    async dispose() {
      await stop();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

async function portFree(port: number): Promise<boolean> {
  const { createServer } = await import('node:net');
  return new Promise((r) => {
    const s = createServer();
    s.once('error', () => r(false));
    s.listen(port, '127.0.0.1', () => s.close(() => r(true)));
  });
}
