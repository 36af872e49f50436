// System metrics of a run, as MLflow's own monitor names them (its "System metrics" tab shows every
// key under `system/`), sampled every 10 s by default (MLflow's default; the MLflow variable
// MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, in seconds, changes it), step = sample number:
//   system/cpu_utilization_percentage        the machine's CPUs, busy share since the last sample
//   system/system_memory_usage_megabytes     the machine's memory in use (MB = 10^6 bytes)
//   system/system_memory_usage_percentage
//   system/process_tree_cpu_percentage       the run's processes (pipe and its stage processes):
//                                            CPU time since the last sample, % of one core
//   system/process_tree_rss_megabytes        their resident memory
//   system/gpu_<i>_utilization_percentage, system/gpu_<i>_memory_usage_megabytes,
//   system/gpu_<i>_memory_usage_percentage   per NVIDIA GPU, when nvidia-smi is there
// Read from Linux's /proc; elsewhere only what Node's os module gives (memory). A run whose stages
// go through a queue runs them on the workers' machines: the process tree then is pipe's alone.

import { execFile } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { freemem, totalmem } from 'node:os';
import type { Metric } from './mlflow-client.ts';

export const DEFAULT_SAMPLING_INTERVAL_MS = 10_000;

/** The sampling interval: MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL (seconds) or 10 s. */
export function samplingIntervalMs(env: NodeJS.ProcessEnv): number {
  const seconds = Number(env['MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL']);
  return Number.isFinite(seconds) && seconds > 0 ? seconds * 1000 : DEFAULT_SAMPLING_INTERVAL_MS;
}

interface CpuTimes {
  /** All CPUs' jiffies, and the idle ones among them (/proc/stat). */
  total: number;
  idle: number;
  /** User + system clock ticks of each process of the tree. */
  tree: Map<number, number>;
  at: number;
}

/** Clock ticks per second of /proc/<pid>/stat (USER_HZ: 100 on every Linux pipe runs on). */
const USER_HZ = 100;

export class SystemSampler {
  private last: CpuTimes | undefined;
  private step = 0;
  private gpus: boolean | undefined;

  constructor(private readonly rootPid: number = process.pid) {
    this.last = this.cpuTimes();
  }

  /** The metrics since the previous sample (or since construction). */
  async sample(now = Date.now()): Promise<Metric[]> {
    const values: Array<[string, number]> = [];
    const cpu = this.cpuTimes(now);
    if (cpu !== undefined && this.last !== undefined && cpu.total > this.last.total) {
      const total = cpu.total - this.last.total;
      values.push(['cpu_utilization_percentage', round(100 * (1 - (cpu.idle - this.last.idle) / total))]);
      const seconds = (cpu.at - this.last.at) / 1000;
      if (seconds > 0) values.push(['process_tree_cpu_percentage', round((100 * treeTicksSince(this.last.tree, cpu.tree)) / USER_HZ / seconds)]);
    }
    this.last = cpu;
    const memory = memoryUse();
    values.push(['system_memory_usage_megabytes', round(memory.used / 1e6)], ['system_memory_usage_percentage', round((100 * memory.used) / memory.total)]);
    const rss = this.treeRssBytes();
    if (rss !== undefined) values.push(['process_tree_rss_megabytes', round(rss / 1e6)]);
    for (const [key, value] of await this.gpuValues()) values.push([key, value]);
    const step = this.step++;
    return values.map(([key, value]) => ({ key: `system/${key}`, value, timestamp: now, step }));
  }

  private cpuTimes(at = Date.now()): CpuTimes | undefined {
    try {
      const fields = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
      const total = fields.reduce((a, b) => a + b, 0);
      const idle = (fields[3] ?? 0) + (fields[4] ?? 0);
      const tree = new Map<number, number>();
      for (const pid of this.tree()) {
        const stat = procStat(pid);
        if (stat !== undefined) tree.set(pid, stat.ticks);
      }
      return { total, idle, tree, at };
    } catch {
      return undefined;
    }
  }

  /** The root process and its descendants (children of stage processes too). */
  private tree(): number[] {
    const parents = new Map<number, number>();
    for (const name of readdirSync('/proc')) {
      if (!/^\d+$/.test(name)) continue;
      const stat = procStat(Number(name));
      if (stat !== undefined) parents.set(Number(name), stat.ppid);
    }
    const out = [this.rootPid];
    for (let i = 0; i < out.length; i++) for (const [pid, ppid] of parents) if (ppid === out[i]) out.push(pid);
    return out;
  }

  private treeRssBytes(): number | undefined {
    try {
      let kb = 0;
      for (const pid of this.tree()) {
        const m = /^VmRSS:\s+(\d+) kB/m.exec(safeRead(`/proc/${pid}/status`));
        if (m) kb += Number(m[1]);
      }
      return kb * 1024;
    } catch {
      return undefined;
    }
  }

  private async gpuValues(): Promise<Array<[string, number]>> {
    if (this.gpus === false) return [];
    const out = await nvidiaSmi();
    this.gpus = out !== undefined;
    return out === undefined ? [] : parseNvidiaSmi(out);
  }
}

/**
 * CPU ticks the tree used between two samples: a process seen both times counts its difference, a
 * new one all its ticks (it started in between); one that exited in between is not counted (its
 * last ticks are gone with it), so the figure can be low, never negative.
 */
export function treeTicksSince(before: ReadonlyMap<number, number>, now: ReadonlyMap<number, number>): number {
  let ticks = 0;
  for (const [pid, t] of now) ticks += Math.max(0, t - (before.get(pid) ?? 0));
  return ticks;
}

/** `nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits` → metrics. */
export function parseNvidiaSmi(text: string): Array<[string, number]> {
  const out: Array<[string, number]> = [];
  text
    .trim()
    .split('\n')
    .filter((l) => l.trim() !== '')
    .forEach((line, i) => {
      const [util, used, total] = line.split(',').map((v) => Number(v.trim()));
      if (util !== undefined && Number.isFinite(util)) out.push([`gpu_${i}_utilization_percentage`, util]);
      if (used !== undefined && Number.isFinite(used)) out.push([`gpu_${i}_memory_usage_megabytes`, round(used * 1.048576)]);
      if (used !== undefined && total !== undefined && total > 0) out.push([`gpu_${i}_memory_usage_percentage`, round((100 * used) / total)]);
    });
  return out;
}

function nvidiaSmi(): Promise<string | undefined> {
  return new Promise((resolve) => {
    execFile('nvidia-smi', ['--query-gpu=utilization.gpu,memory.used,memory.total', '--format=csv,noheader,nounits'], { timeout: 5000 }, (error, stdout) =>
      resolve(error ? undefined : stdout),
    );
  });
}

function procStat(pid: number): { ppid: number; ticks: number } | undefined {
  const text = safeRead(`/proc/${pid}/stat`);
  // The command name (field 2) may hold spaces and parentheses: fields start after its last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  if (rest.length < 13) return undefined;
  return { ppid: Number(rest[1]), ticks: Number(rest[11]) + Number(rest[12]) };
}

function memoryUse(): { used: number; total: number } {
  const info = safeRead('/proc/meminfo');
  const kb = (key: string) => Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(info)?.[1] ?? NaN) * 1024;
  const total = kb('MemTotal');
  const available = kb('MemAvailable');
  if (Number.isFinite(total) && Number.isFinite(available)) return { used: total - available, total };
  return { used: totalmem() - freemem(), total: totalmem() };
}

function safeRead(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

function round(v: number): number {
  return Math.round(v * 100) / 100;
}
