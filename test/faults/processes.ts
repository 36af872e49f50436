// Finding the processes of one run, and those that outlive it, from /proc.
//
// Every run the suite starts carries a marker in its environment (PIPE_FAULT_MARK=<unique>), which
// its stage processes, their commands and the commands' children inherit. A process of a run is
// *orphaned* when its parent is not a process of the same run and it is not the run's root (the
// runner or the worker the test started): its parent died and it was re-parented to init. An
// orphan that still has children of the run after ORPHAN_GRACE_MS (a command going on without its
// stage process or runner) is a leak; so is any process of the run still alive LEAVE_GRACE_MS
// after its parent or the runner went (a stage process that is still starting when its runner dies
// may take a few seconds on a loaded machine to notice and exit). Leaks are recorded and then
// killed, so that one fault does not disturb the next.

import { readdirSync, readFileSync } from 'node:fs';

export const MARK_VARIABLE = 'PIPE_FAULT_MARK';
const ORPHAN_GRACE_MS = 1000;
const LEAVE_GRACE_MS = 5000;
const SCAN_INTERVAL_MS = 200;

export interface ProcInfo {
  pid: number;
  ppid: number;
  pgid: number;
  comm: string;
  marker: string;
}

const markerOf = new Map<string, string | null>(); // `${pid}:${starttime}` → marker (environments do not change)
const needle = Buffer.from(`${MARK_VARIABLE}=`);

function readStat(pid: string): { ppid: number; pgid: number; state: string; comm: string; start: string } | undefined {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return undefined;
  }
  const close = text.lastIndexOf(')');
  const comm = text.slice(text.indexOf('(') + 1, close);
  const fields = text.slice(close + 2).split(' ');
  // fields[0] is field 3 of proc(5): state, ppid, pgrp, ..., starttime is field 22.
  return { state: fields[0] ?? '?', ppid: Number(fields[1]), pgid: Number(fields[2]), comm, start: fields[19] ?? '' };
}

function readMarker(pid: string): string | null {
  let env: Buffer;
  try {
    env = readFileSync(`/proc/${pid}/environ`);
  } catch {
    return null;
  }
  let at = env.indexOf(needle);
  while (at > 0 && env[at - 1] !== 0) at = env.indexOf(needle, at + 1);
  if (at < 0) return null;
  const end = env.indexOf(0, at);
  return env.subarray(at + needle.length, end < 0 ? env.length : end).toString();
}

/** Every live (not zombie) process that carries a marker. */
export function scanMarked(): ProcInfo[] {
  const found: ProcInfo[] = [];
  const seen = new Set<string>();
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    const stat = readStat(name);
    if (!stat || stat.state === 'Z' || stat.state === 'X') continue;
    const key = `${name}:${stat.start}`;
    seen.add(key);
    let marker = markerOf.get(key);
    if (marker === undefined) {
      marker = readMarker(name);
      markerOf.set(key, marker);
    }
    if (marker !== null) found.push({ pid: Number(name), ppid: stat.ppid, pgid: stat.pgid, comm: stat.comm, marker });
  }
  for (const key of markerOf.keys()) if (!seen.has(key)) markerOf.delete(key);
  return found;
}

export function processesOf(marker: string): ProcInfo[] {
  return scanMarked().filter((p) => p.marker === marker);
}

export function commandLine(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').filter(Boolean).join(' ');
  } catch {
    return '';
  }
}

/** The stage processes (the `stage-process.ts` children of a runner or worker) of a run. */
export function stageProcessesOf(marker: string): number[] {
  return processesOf(marker)
    .filter((p) => p.comm === 'node' && commandLine(p.pid).includes('stage-process.ts'))
    .map((p) => p.pid);
}

/** The shells of stage commands (`sh -c …`) of a run. */
export function commandShellsOf(marker: string): number[] {
  return processesOf(marker).filter((p) => p.comm === 'sh').map((p) => p.pid);
}

export interface Leak {
  marker: string;
  pid: number;
  what: string;
}

interface Watched {
  marker: string;
  roots: Set<number>;
  orphanSince: Map<number, number>;
  leaks: Map<number, Leak>;
}

function kill(pid: number): void {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone already
  }
}

/** Watches the runs it is given for orphans, with one /proc scan for all of them. */
export class ProcessWatch {
  private readonly runs = new Map<string, Watched>();
  private timer: NodeJS.Timeout | undefined;

  /** Starts watching a run; `roots` are the processes the test started (runner, worker). */
  watch(marker: string, roots: number[]): void {
    this.runs.set(marker, { marker, roots: new Set(roots), orphanSince: new Map(), leaks: new Map() });
    this.timer ??= setInterval(() => this.tick(), SCAN_INTERVAL_MS);
  }

  addRoot(marker: string, pid: number): void {
    this.runs.get(marker)?.roots.add(pid);
  }

  /**
   * Called when the run's root processes exited: waits up to LEAVE_GRACE_MS for the rest of the
   * run to go, then returns every leak seen (orphans during the run, survivors now), all killed.
   */
  async finish(marker: string): Promise<Leak[]> {
    const run = this.runs.get(marker);
    if (!run) return [];
    const deadline = Date.now() + LEAVE_GRACE_MS;
    let left = processesOf(marker);
    while (left.length > 0 && Date.now() < deadline) {
      await new Promise((r) => setTimeout(r, 100));
      left = processesOf(marker);
    }
    for (const p of left) {
      if (!run.leaks.has(p.pid)) run.leaks.set(p.pid, { marker, pid: p.pid, what: `${describe(p)}, alive ${LEAVE_GRACE_MS} ms after the runner exited` });
      kill(p.pid);
    }
    this.runs.delete(marker);
    if (this.runs.size === 0 && this.timer !== undefined) {
      clearInterval(this.timer);
      this.timer = undefined;
    }
    return [...run.leaks.values()];
  }

  private tick(): void {
    const all = scanMarked();
    const now = Date.now();
    for (const run of this.runs.values()) {
      const mine = all.filter((p) => p.marker === run.marker);
      const pids = new Set(mine.map((p) => p.pid));
      for (const p of mine) {
        if (run.roots.has(p.pid) || pids.has(p.ppid)) {
          run.orphanSince.delete(p.pid);
          continue;
        }
        const since = run.orphanSince.get(p.pid) ?? now;
        run.orphanSince.set(p.pid, since);
        const below = descendants(mine, p.pid);
        if (now - since < (below.length > 0 ? ORPHAN_GRACE_MS : LEAVE_GRACE_MS)) continue;
        run.leaks.set(p.pid, { marker: run.marker, pid: p.pid, what: `${describe(p)}, orphaned for ${now - since} ms${below.length > 0 ? ` with ${below.length} process(es) under it` : ''}` });
        // Its whole subtree goes too, so that the run it blocks (a pipe held open) can end.
        for (const q of below) kill(q);
        kill(p.pid);
      }
    }
  }
}

function descendants(procs: ProcInfo[], root: number): number[] {
  const out: number[] = [];
  const stack = [root];
  while (stack.length > 0) {
    const pid = stack.pop()!;
    for (const p of procs) if (p.ppid === pid) {
      out.push(p.pid);
      stack.push(p.pid);
    }
  }
  return out;
}

function describe(p: ProcInfo): string {
  return `pid ${p.pid} (${commandLine(p.pid) || p.comm})`;
}
