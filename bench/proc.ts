// Runs one command of the benchmark as a user would (a whole process, spawn to exit) and watches
// the memory of its process tree: /proc is sampled every 200 ms, the resident set sizes of the
// process and all its descendants are summed. Processes whose command line names mlflow (the
// embedded tracking server pipe starts, and its workers) are counted apart: the server is shared
// between runs and outlives them.

import { spawn } from 'node:child_process';
import { createWriteStream } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import os from 'node:os';

const PAGE_BYTES = 4096;
const MB = 1024 * 1024;

export interface MemoryPeak {
  /** Largest sum of RSS over the process tree (mlflow excluded), MiB. */
  treeMb: number;
  /** Largest RSS of any one process of the tree (mlflow excluded), MiB, and its command. */
  processMb: number;
  processCommand: string;
  /** Largest RSS sum of mlflow processes seen in the tree, MiB (0 when none). */
  mlflowMb: number;
  samples: number;
}

export interface TimedRun {
  command: string[];
  cwd: string;
  exitCode: number | null;
  signal: string | null;
  wallS: number;
  startedAt: string;
  loadAverage: { start: number[]; end: number[] };
  memory: MemoryPeak;
  log: string;
  /** The child's stdout (also in the log). */
  stdout: string;
}

interface ProcInfo {
  pid: number;
  ppid: number;
  rssMb: number;
}

async function readProcs(): Promise<Map<number, ProcInfo>> {
  const procs = new Map<number, ProcInfo>();
  const entries = await readdir('/proc').catch(() => [] as string[]);
  await Promise.all(
    entries
      .filter((e) => /^\d+$/.test(e))
      .map(async (e) => {
        const stat = await readFile(`/proc/${e}/stat`, 'utf8').catch(() => undefined);
        if (stat === undefined) return;
        // the command name (field 2) may hold spaces and parentheses: parse after the last ')'
        const rest = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
        // rest[0] is field 3 (state): ppid is field 4, rss (pages) field 24
        procs.set(Number(e), { pid: Number(e), ppid: Number(rest[1]), rssMb: (Number(rest[21]) * PAGE_BYTES) / MB });
      }),
  );
  return procs;
}

const commandCache = new Map<number, string>();
async function commandOf(pid: number): Promise<string> {
  const known = commandCache.get(pid);
  if (known !== undefined) return known;
  const text = await readFile(`/proc/${pid}/cmdline`, 'utf8').catch(() => '');
  const command = text.split('\0').filter(Boolean).join(' ').slice(0, 200);
  if (command) commandCache.set(pid, command);
  return command;
}

/** Samples the tree under `root` until `stop()`; returns the peaks. */
export function watchMemory(root: number, intervalMs = 200): { stop: () => Promise<MemoryPeak> } {
  const peak: MemoryPeak = { treeMb: 0, processMb: 0, processCommand: '', mlflowMb: 0, samples: 0 };
  let running = true;
  const sample = async () => {
    const procs = await readProcs();
    const children = new Map<number, number[]>();
    for (const p of procs.values()) {
      const list = children.get(p.ppid) ?? [];
      list.push(p.pid);
      children.set(p.ppid, list);
    }
    let tree = 0;
    let mlflow = 0;
    const visit = async (pid: number, inMlflow: boolean) => {
      const p = procs.get(pid);
      if (!p) return;
      const command = await commandOf(pid);
      const isMlflow = inMlflow || /mlflow/.test(command);
      if (isMlflow) mlflow += p.rssMb;
      else {
        tree += p.rssMb;
        if (p.rssMb > peak.processMb) {
          peak.processMb = p.rssMb;
          peak.processCommand = command;
        }
      }
      for (const child of children.get(pid) ?? []) await visit(child, isMlflow);
    };
    await visit(root, false);
    peak.treeMb = Math.max(peak.treeMb, tree);
    peak.mlflowMb = Math.max(peak.mlflowMb, mlflow);
    peak.samples++;
  };
  const loop = (async () => {
    while (running) {
      await sample().catch(() => undefined);
      await new Promise((r) => setTimeout(r, intervalMs));
    }
  })();
  return {
    stop: async () => {
      running = false;
      await loop;
      return { ...peak, treeMb: round1(peak.treeMb), processMb: round1(peak.processMb), mlflowMb: round1(peak.mlflowMb) };
    },
  };
}

function round1(x: number): number {
  return Math.round(x * 10) / 10;
}

export function loadAverage(): number[] {
  return os.loadavg().map((x) => Math.round(x * 100) / 100);
}

/**
 * Runs `command` in `cwd` with `env`, its stdout and stderr appended to `logFile` (and echoed to
 * this process's stderr when `echo`), and measures wall time from spawn to exit.
 */
export async function timedRun(
  command: string[],
  opts: { cwd: string; env: NodeJS.ProcessEnv; logFile: string; echo?: boolean },
): Promise<TimedRun> {
  const [file, ...args] = command;
  if (file === undefined) throw new Error('timedRun: empty command');
  const log = createWriteStream(opts.logFile, { flags: 'a' });
  log.write(`$ ${command.join(' ')}\n  (cwd ${opts.cwd})\n`);
  const loadStart = loadAverage();
  const startedAt = new Date().toISOString();
  const start = performance.now();
  const child = spawn(file, args, { cwd: opts.cwd, env: opts.env, stdio: ['ignore', 'pipe', 'pipe'] });
  const watcher = child.pid === undefined ? undefined : watchMemory(child.pid);
  let stdout = '';
  child.stdout.on('data', (chunk: Buffer) => {
    stdout += chunk.toString();
  });
  for (const stream of [child.stdout, child.stderr]) {
    stream.on('data', (chunk: Buffer) => {
      log.write(chunk);
      if (opts.echo) process.stderr.write(chunk);
    });
  }
  const { code, signal } = await new Promise<{ code: number | null; signal: string | null }>((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => resolve({ code, signal }));
  });
  const wallS = (performance.now() - start) / 1000;
  const memory = (await watcher?.stop()) ?? { treeMb: 0, processMb: 0, processCommand: '', mlflowMb: 0, samples: 0 };
  await new Promise<void>((resolve) => log.end(resolve));
  return {
    command,
    cwd: opts.cwd,
    exitCode: code,
    signal,
    wallS: Math.round(wallS * 1000) / 1000,
    startedAt,
    loadAverage: { start: loadStart, end: loadAverage() },
    memory,
    log: opts.logFile,
    stdout,
  };
}
