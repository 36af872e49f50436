// Subscribers that show a run to a person: a live view of the stages on a TTY, plain timestamped
// lines otherwise (CI, pipes), the run log file, and the end-of-run summary.

import { createWriteStream, mkdirSync, renameSync, rmSync, symlinkSync, type WriteStream } from 'node:fs';
import * as path from 'node:path';
import type { RunEvent, RunListener, RunSummary, StageStatus } from '../core/events.ts';
import { shortFingerprint } from '../cache/fingerprint.ts';
import { formatBytes } from '../util/format.ts';

type Write = (text: string) => void;

export function formatDuration(ms: number): string {
  if (ms < 1000) return `${ms} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const total = Math.round(s);
  const m = Math.floor(total / 60);
  return `${m}m${String(total - m * 60).padStart(2, '0')}s`;
}

function timestamp(): string {
  return new Date().toISOString().slice(11, 19);
}

/** Plain lines: one per stage transition, progress at most every 10 s per stage. */
export function plainRenderer(write: Write, options: { verbose?: boolean } = {}): RunListener {
  const lastProgress = new Map<string, number>();
  return (event) => {
    const line = (text: string) => write(`${timestamp()} ${text}\n`);
    switch (event.type) {
      case 'run-start': {
        const toRun = event.stages.filter((s) => !s.cached).length;
        line(`run ${event.runId}: ${event.pipelineName} (${event.stages.length} stages, ${toRun} to run, ${event.stages.length - toRun} cached)`);
        for (const s of event.stages) if (!s.cached) line(`  ${s.name}: will run: ${s.reasons.join('; ')}`);
        break;
      }
      case 'stage-start':
        line(`${event.stage}: started${event.worker ? ` on ${event.worker}` : ''}`);
        break;
      case 'stage-progress': {
        const now = Date.now();
        const finished = event.total !== undefined && event.done >= event.total;
        if (!finished && now - (lastProgress.get(event.stage) ?? 0) < 10_000) break;
        lastProgress.set(event.stage, now);
        line(`${event.stage}: ${event.label ? `${event.label} ` : ''}${event.done}${event.total !== undefined ? `/${event.total}` : ''}`);
        break;
      }
      case 'stage-log':
        if (options.verbose || event.stream === 'log') line(`${event.stage}: ${event.line}`);
        break;
      case 'stage-metric':
        break;
      case 'stage-end':
        line(`${event.stage}: ${event.status} (${formatDuration(event.durationMs)}${event.worker ? ` on ${event.worker}` : ''})${event.error ? `: ${event.error}` : ''}`);
        break;
      case 'run-end':
        write(formatSummary(event.summary));
        break;
    }
  };
}

const symbols: Record<StageStatus | 'queued' | 'running', string> = {
  queued: '·',
  running: '▶',
  ran: '✔',
  cached: '↺',
  failed: '✖',
  skipped: '-',
  pruned: '✂',
};

/** One stage's line in the live table. */
interface Row {
  status: StageStatus | 'queued' | 'running';
  started?: number;
  worker?: string;
  duration?: number;
  done?: number;
  total?: number;
  label?: string;
  error?: string;
}

/** `▶ name  ████░░ 3/10 label 12s ETA 28s`, cut to the terminal's width. */
function rowLine(name: string, row: Row, width: number): string {
  return `${symbols[row.status]} ${name.padEnd(width)}  ${rowDetail(row)}`.slice(0, (process.stdout.columns || 120) - 1);
}

function rowDetail(row: Row): string {
  if (row.status === 'running') {
    const elapsed = Date.now() - (row.started ?? Date.now());
    if (row.total && row.done !== undefined) return progressDetail(row, row.total, row.done, elapsed);
    const detail = `${formatDuration(elapsed)}${row.worker ? ` on ${row.worker}` : ''}`;
    return row.label ? `${row.label} ${detail}` : detail;
  }
  if (row.duration !== undefined) return `${row.status} ${formatDuration(row.duration)}${row.error ? `: ${row.error}` : ''}`;
  return row.status;
}

/** A progress bar with the count, the label, the time so far and an estimate of the time left. */
function progressDetail(row: Row, total: number, done: number, elapsed: number): string {
  const fraction = Math.min(1, done / total);
  const bar = '█'.repeat(Math.round(fraction * 20)).padEnd(20, '░');
  const eta = fraction > 0 ? (elapsed / fraction) * (1 - fraction) : undefined;
  return `${bar} ${done}/${total}${row.label ? ` ${row.label}` : ''} ${formatDuration(elapsed)}${eta !== undefined ? ` ETA ${formatDuration(Math.round(eta))}` : ''}`;
}

/** A live table of stages redrawn in place; logs scroll above it. */
export function ttyRenderer(write: Write, options: { verbose?: boolean } = {}): RunListener {
  const rows = new Map<string, Row>();
  let drawn = 0;
  let timer: NodeJS.Timeout | undefined;

  const clear = () => {
    if (drawn > 0) write(`\x1b[${drawn}A\x1b[0J`);
    drawn = 0;
  };
  const draw = () => {
    clear();
    const width = Math.max(8, ...[...rows.keys()].map((n) => n.length));
    const lines = [...rows].map(([name, row]) => rowLine(name, row, width));
    write(`${lines.join('\n')}\n`);
    drawn = lines.length;
  };
  const above = (text: string) => {
    clear();
    write(text);
    draw();
  };

  return (event) => {
    switch (event.type) {
      case 'run-start':
        write(`run ${event.runId}: ${event.pipelineName}\n`);
        for (const s of event.stages) {
          rows.set(s.name, { status: 'queued' });
          if (!s.cached) write(`  ${s.name}: will run: ${s.reasons.join('; ')}\n`);
        }
        draw();
        timer = setInterval(draw, 500);
        timer.unref();
        break;
      case 'stage-start':
        rows.set(event.stage, { status: 'running', started: event.startedAt, worker: event.worker });
        draw();
        break;
      case 'stage-progress': {
        const row = rows.get(event.stage);
        if (row) Object.assign(row, { done: event.done, total: event.total, label: event.label });
        break;
      }
      case 'stage-log':
        if (options.verbose || event.stream === 'log') above(`  ${event.stage}: ${event.line}\n`);
        break;
      case 'stage-metric':
        break;
      case 'stage-end':
        rows.set(event.stage, { status: event.status, duration: event.durationMs, error: event.error });
        draw();
        break;
      case 'run-end':
        if (timer) clearInterval(timer);
        draw();
        drawn = 0;
        write(formatSummary(event.summary));
        break;
    }
  };
}

export function formatSummary(summary: RunSummary): string {
  const width = Math.max(5, ...summary.stages.map((s) => s.name.length));
  // Through a queue: which worker ran each stage ("here" for what this process restored).
  const workers = summary.stages.some((s) => s.worker);
  const workerWidth = Math.max(6, ...summary.stages.map((s) => (s.worker ?? 'here').length));
  const where = (s: RunSummary['stages'][number]) => (workers ? `  ${(s.worker ?? (s.status === 'cached' ? 'here' : '-')).padEnd(workerWidth)}` : '');
  const lines = [
    '',
    `${'stage'.padEnd(width)}  ${'status'.padEnd(7)}  ${'time'.padStart(9)}${workers ? `  ${'worker'.padEnd(workerWidth)}` : ''}  ${'cache'.padStart(9)}  fingerprint`,
    ...summary.stages.map(
      (s) =>
        `${s.name.padEnd(width)}  ${s.status.padEnd(7)}  ${formatDuration(s.durationMs).padStart(9)}${where(s)}  ${cacheColumn(s).padStart(9)}  ${shortFingerprint(s.fingerprint)}` +
        `${s.cacheLinkedBytes ? `  (${formatBytes(s.cacheLinkedBytes)} linked)` : ''}${s.pruned ? `  stopped after epoch ${s.pruned.epoch} of ${s.pruned.of}` : ''}${s.error ? `  ${s.error}` : ''}`,
    ),
  ];
  const statuses = summary.stages.some((s) => s.status === 'pruned') ? (['ran', 'cached', 'pruned', 'failed', 'skipped'] as const) : (['ran', 'cached', 'failed', 'skipped'] as const);
  const counts = statuses.map((st) => `${summary.stages.filter((s) => s.status === st).length} ${st}`);
  const verdict = summary.interrupted ? `INTERRUPTED by ${summary.interrupted}` : summary.status === 'succeeded' ? 'succeeded' : 'FAILED';
  lines.push(
    `${verdict} in ${formatDuration(summary.durationMs)}: ${counts.join(', ')}` +
      `${summary.cacheBytes !== undefined ? `; ${formatBytes(summary.cacheBytes)} in the cache` : ''}`,
  );
  const metricNames = Object.keys(summary.metrics);
  if (metricNames.length) {
    lines.push(`metrics: ${metricNames.slice(0, 12).map((k) => `${k}=${round(summary.metrics[k] ?? NaN)}`).join('  ')}${metricNames.length > 12 ? ' …' : ''}`);
  }
  return `${lines.join('\n')}\n`;
}

/** A stage's entry size for the summary table; '-' when it has none (failed, skipped). */
function cacheColumn(s: RunSummary['stages'][number]): string {
  return s.cacheBytes === undefined ? '-' : formatBytes(s.cacheBytes);
}

function round(v: number): string {
  return Math.abs(v) >= 100 ? v.toFixed(1) : v.toPrecision(4);
}

/** Writes every event of the run to the run's log file, timestamped. */
export function runLogWriter(file: string): { listener: RunListener; close(): Promise<void> } {
  const stream: WriteStream = createWriteStream(file, { flags: 'a' });
  const line = (text: string) => stream.write(`${new Date().toISOString()} ${text}\n`);
  const listener: RunListener = (event: RunEvent) => {
    switch (event.type) {
      case 'run-start':
        line(`run ${event.runId} of ${event.pipelineFile} (pipeline ${event.pipelineName}, hash ${event.pipelineHash.slice(0, 12)}, backend ${event.backend})`);
        line(`params ${JSON.stringify(event.params)}`);
        for (const s of event.stages) line(`plan ${s.name} ${shortFingerprint(s.fingerprint)} ${s.cached ? 'cached' : `run: ${s.reasons.join('; ')}`}`);
        break;
      case 'stage-start':
        line(`[${event.stage}] started`);
        break;
      case 'stage-progress':
        break;
      case 'stage-log':
        line(`[${event.stage}]${event.stream === 'log' ? '' : ` ${event.stream}:`} ${event.line}`);
        break;
      case 'stage-metric':
        line(`[${event.stage}] metric ${event.point.key}=${event.point.value} step ${event.point.step}`);
        break;
      case 'stage-end':
        line(`[${event.stage}] ${event.status} in ${formatDuration(event.durationMs)}${event.error ? `: ${event.error}` : ''}`);
        break;
      case 'run-end':
        stream.write(formatSummary(event.summary));
        break;
    }
  };
  return { listener, close: () => new Promise((resolve) => stream.end(resolve)) };
}

/**
 * Links each finished stage's artifacts into the run directory (`<runDir>/stages/<stage>` → the
 * cache entry's out/), and `runs/<pipeline>/latest` to the run, so that a person finds a run's
 * outputs without fingerprints: `pipe predict runs/mobilenet/latest/stages/evaluate photo.jpg`.
 */
export function outputLinker(runDir: string, options: { latest?: boolean } = {}): RunListener {
  return (event) => {
    try {
      if (event.type === 'stage-end' && event.outDir) {
        const link = path.join(runDir, 'stages', event.stage);
        mkdirSync(path.dirname(link), { recursive: true });
        rmSync(link, { force: true });
        symlinkSync(event.outDir, link, 'dir');
      } else if (event.type === 'run-end' && options.latest !== false) {
        const latest = path.join(path.dirname(runDir), 'latest');
        const tmp = `${latest}.${process.pid}`;
        rmSync(tmp, { force: true });
        symlinkSync(path.basename(runDir), tmp, 'dir');
        // rename over the old link: atomic, so a reader never finds no `latest`.
        renameSync(tmp, latest);
      }
    } catch {
      // Links are a convenience; a run never fails for them.
    }
  };
}
