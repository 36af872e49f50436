// `pipe worker` processes for the cluster tests: each in its own temporary working directory.

import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { ResultPromise } from 'execa';
import { startPipe } from './cli.ts';

export interface Worker {
  name: string;
  dir: string;
  process: ResultPromise;
  output: () => string;
}

export function startWorker(name: string, url: string, shared: string, env: Record<string, string> = {}): Worker {
  const dir = mkdtempSync(path.join(os.tmpdir(), `pipe-${name}-`));
  const child = startPipe(dir, ['worker', '--queue', url, '--cache', shared, '--cpus', '1', '--name', name], env);
  let text = '';
  child.stdout?.on('data', (d: Buffer) => (text += d.toString()));
  child.stderr?.on('data', (d: Buffer) => (text += d.toString()));
  return { name, dir, process: child, output: () => text };
}

export async function waitFor(what: string, check: () => boolean, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!check()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

/** Lines in `file` summed over the workers' working directories. */
export function countIn(workers: Worker[], file: string): number {
  let n = 0;
  for (const w of workers) {
    const f = path.join(w.dir, file);
    if (existsSync(f)) n += readFileSync(f, 'utf8').trim().split('\n').length;
  }
  return n;
}

export async function stopWorkers(workers: Worker[]): Promise<void> {
  for (const w of workers) if (w.process.exitCode === null && w.process.signalCode === null) w.process.kill('SIGTERM');
  await Promise.all(workers.map((w) => w.process.catch(() => undefined)));
}

