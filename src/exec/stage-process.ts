// The child process that runs one stage. The runner starts it with an IPC channel, sends one
// StageSpec, and receives reports (log, progress, metric, artifact, summary) and a final `done`
// or `error`. A crash, hang or out-of-memory here fails this stage only, never the runner.
// The runner starts it as the leader of a process group of its own, and a command runs in that
// group (with everything the command starts), so that the group is the whole stage. When the
// runner goes away, even by SIGKILL, the IPC channel closes and this process kills its group.

import { promises as fs } from 'node:fs';
import { constants } from 'node:os';
import * as path from 'node:path';
import { execa } from 'execa';
import { loadKind } from '../stages/index.ts';
import { hashPath } from '../util/hash.ts';
import type { Flavour, Shard, StageContext } from '../core/stage-kind.ts';
import type { PrunedAt } from '../core/events.ts';
import { isPipeError, StageError, UnavailableError } from '../core/errors.ts';

export interface StageSpec {
  stage: string;
  kind: string;
  params: Record<string, unknown>;
  inputs: Record<string, string>;
  outDir: string;
  tmpDir: string;
  downloadCacheDir: string;
  flavour: Flavour;
  /** The CPU slots the stage holds (StageContext.cpus). */
  cpus: number;
  /** Command stages. */
  command?: string | string[];
  cwd: string;
  env: Record<string, string>;
  outs: string[];
  metrics: string[];
  /** A sweep's scheduler watches this stage: after each epoch it waits for a decision (see epochEnd), and it checkpoints. */
  scheduled?: boolean;
  /** The stage's checkpoint directory (see StageContext.checkpoints). */
  checkpointDir: string;
  /** A shard job of a sharded pass: compute this part (the kind's `shard.run`) into `outDir`. */
  shard?: Shard;
  /** The merge job of a sharded pass: the parts' directories, in shard order (the kind's `shard.merge`). */
  parts?: string[];
}

/** What the runner sends the stage process after the spec: the scheduler's answer to an `epoch` report. */
export interface EpochDecision {
  t: 'decision';
  epoch: number;
  stop: boolean;
}


export type ChildReport =
  | { t: 'log'; line: string }
  | { t: 'progress'; done: number; total?: number; label?: string }
  | { t: 'metric'; key: string; value: number; step: number; timestamp: number }
  | { t: 'artifact'; path: string }
  | { t: 'summary'; facts: Record<string, string | number | boolean> }
  | { t: 'epoch'; epoch: number; of: number }
  | { t: 'done'; outs?: Record<string, string>; pruned?: PrunedAt }
  | { t: 'error'; message: string; stack?: string };

function send(report: ChildReport): Promise<void> {
  return new Promise((resolve) => {
    if (!process.send || !process.connected) return resolve();
    process.send(report, undefined, {}, () => resolve());
  });
}

/** Decisions the runner has not yet sent, by epoch: the stage waits for them in epochEnd. */
const decisions = new Map<number, (stop: boolean) => void>();

/** Reports the end of an epoch and waits for the scheduler's decision (immediately false when unwatched). */
async function epochDecision(spec: StageSpec, epoch: number, of: number): Promise<boolean> {
  if (!spec.scheduled) return false;
  const stop = await new Promise<boolean>((resolve) => {
    decisions.set(epoch, resolve);
    // After the epoch's metrics on the same channel: the runner has them when it decides.
    void send({ t: 'epoch', epoch, of });
  });
  decisions.delete(epoch);
  return stop && epoch < of;
}

async function runKind(spec: StageSpec): Promise<void> {
  const kind = await loadKind(spec.kind);
  if (!kind) throw new UnavailableError(`this pipe has no stage kind '${spec.kind}' (a worker older than the submitter?)`);
  let pruned: PrunedAt | undefined;
  let lastProgress = 0;
  const ctx: StageContext = {
    stageName: spec.stage,
    params: spec.params,
    inputs: spec.inputs,
    outDir: spec.outDir,
    tmpDir: spec.tmpDir,
    downloadCacheDir: spec.downloadCacheDir,
    flavour: spec.flavour,
    cpus: spec.cpus,
    log: (line) => void send({ t: 'log', line }),
    progress: (done, total, label) => {
      const now = Date.now();
      // At most ~10 reports a second, but always the last one.
      if (now - lastProgress < 100 && total !== undefined && done < total) return;
      lastProgress = now;
      void send({ t: 'progress', done, total, label });
    },
    metric: (key, value, step = 0) => void send({ t: 'metric', key, value, step, timestamp: Date.now() }),
    artifact: (relPath) => void send({ t: 'artifact', path: relPath }),
    summary: (facts) => void send({ t: 'summary', facts }),
    checkpoints: { dir: spec.checkpointDir, write: Boolean(spec.scheduled) },
    epochEnd: async (epoch, of) => {
      const stop = await epochDecision(spec, epoch, of);
      // The last decision counts (a resumed stage replays its checkpoint's epochs first).
      pruned = stop ? { epoch, of } : undefined;
      return stop;
    },
  };
  if (spec.shard || spec.parts) {
    if (!kind.shard) throw new UnavailableError(`this pipe's stage kind '${spec.kind}' cannot be sharded (a worker older than the submitter?)`);
    if (spec.parts) await kind.shard.merge(ctx, spec.parts);
    else await kind.shard.run(ctx, spec.shard!);
  } else {
    await kind.run(ctx);
  }
  await send(pruned ? { t: 'done', pruned } : { t: 'done' });
}

async function runCommand(spec: StageSpec): Promise<void> {
  // As DVC does: declared outputs are removed first, so a stale file can't pass for a new one.
  for (const out of spec.outs) await fs.rm(path.resolve(spec.cwd, out), { recursive: true, force: true });
  const env = { ...spec.env, PIPE_STAGE: spec.stage, PIPE_OUT_DIR: spec.outDir };
  // In this process's group (the stage's), which the runner stops as one: a shell's children too.
  const options = { cwd: spec.cwd, env, stdio: 'inherit' as const, reject: false, cleanup: false };
  const child = Array.isArray(spec.command)
    ? execa(spec.command[0] ?? '', spec.command.slice(1), options)
    : execa(spec.command ?? '', { ...options, shell: '/bin/sh' });
  commandRunning = true;
  const result = await child;
  commandRunning = false;
  if (result.failed) {
    const why = result.signal ? `was killed by ${result.signal}` : result.exitCode !== undefined ? `exited with code ${result.exitCode}` : String(result.message);
    throw new StageError(`command ${why}: ${result.command}`);
  }
  const outs: Record<string, string> = {};
  for (const out of spec.outs) {
    const source = path.resolve(spec.cwd, out);
    try {
      await fs.access(source);
    } catch {
      throw new StageError(`declared output '${out}' was not created by the command`);
    }
    const target = path.join(spec.outDir, out);
    await fs.mkdir(path.dirname(target), { recursive: true });
    await fs.cp(source, target, { recursive: true });
    outs[out] = await hashPath(target);
  }
  for (const file of spec.metrics) {
    const source = path.resolve(spec.cwd, file);
    const values = JSON.parse(await fs.readFile(source, 'utf8')) as unknown;
    // The metrics file is also an artifact of the run: keep a copy in the entry.
    const copy = path.join(spec.outDir, file);
    await fs.mkdir(path.dirname(copy), { recursive: true });
    await fs.copyFile(source, copy);
    for (const [key, value] of flattenNumbers(values)) await send({ t: 'metric', key, value, step: 0, timestamp: Date.now() });
    await send({ t: 'artifact', path: file });
  }
  await send({ t: 'done', outs });
}

function flattenNumbers(value: unknown, prefix = ''): Array<[string, number]> {
  if (typeof value === 'number') return [[prefix, value]];
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    return Object.entries(value).flatMap(([k, v]) => flattenNumbers(v, prefix ? `${prefix}.${k}` : k));
  }
  return [];
}

/** A command runs (else this is a stage kind's own work, which stops with this process). */
let commandRunning = false;

/** Signals this stage's process group: this process, its command and everything that started. */
function signalStage(signal: NodeJS.Signals): void {
  try {
    process.kill(-process.pid, signal);
  } catch {
    // not a group leader (started by hand): only this process is ours to stop
    if (signal === 'SIGKILL') process.exit(137);
  }
}

/** How long a stopped command gets between SIGTERM and SIGKILL (the runner allows the same). */
const STOP_GRACE_MS = Number(process.env['PIPE_STOP_GRACE_MS'] ?? 2000);

/**
 * An expected failure (a PipeError: no network, a bad file; a full disk) is its message and hint on
 * the terminal, its stack only in the logs (stderr, shown with --verbose); anything else is a bug
 * and keeps its stack in sight.
 */
async function reportError(error: unknown): Promise<void> {
  const err = (error instanceof Error ? error : new Error(String(error))) as NodeJS.ErrnoException & { dest?: string };
  // A full disk is no bug of the stage: say so, without a stack.
  if (err.code === 'ENOSPC') {
    const where = err.dest ?? err.path;
    return send({ t: 'error', message: `no space left on the device${where ? ` writing ${where}` : ''}: free some space (\`pipe gc\` removes unused cache entries)` });
  }
  if (!isPipeError(err)) return send({ t: 'error', message: err.message, stack: err.stack });
  if (err.stack) process.stderr.write(`${err.stack}\n`);
  if (err.hint) await send({ t: 'log', line: `hint: ${err.hint}` });
  await send({ t: 'error', message: err.message });
}

async function main(): Promise<void> {
  let finished = false;
  // The runner is gone (even SIGKILLed): nobody will collect this stage; stop all of it.
  process.on('disconnect', () => {
    if (finished) return;
    signalStage('SIGKILL');
  });
  // The runner may have died while this process was still loading, before the handler above was
  // installed: then no 'disconnect' comes, and the stage must not run unsupervised.
  if (!process.connected) signalStage('SIGKILL');
  // Stopped by the runner or by someone's `kill`: stop the command's whole tree, then leave (the
  // command's failure is reported as usual once it has ended).
  let stopping = false;
  for (const signal of ['SIGTERM', 'SIGINT', 'SIGHUP'] as const) {
    process.on(signal, () => {
      if (stopping) return; // our own signal to the group, coming back
      stopping = true;
      if (!commandRunning) process.exit(128 + constants.signals[signal]);
      signalStage(signal);
      setTimeout(() => signalStage('SIGKILL'), STOP_GRACE_MS);
    });
  }
  const spec = await new Promise<StageSpec>((resolve) => process.once('message', (m) => resolve(m as StageSpec)));
  process.on('message', (m: EpochDecision) => {
    if (m.t === 'decision') decisions.get(m.epoch)?.(m.stop);
  });
  try {
    if (spec.command !== undefined) await runCommand(spec);
    else await runKind(spec);
    process.exitCode = 0;
  } catch (error) {
    await reportError(error);
    process.exitCode = 1;
  }
  // Native libraries may keep the event loop alive; the stage is over.
  finished = true;
  process.disconnect?.();
  setTimeout(() => process.exit(), 50).unref();
}

await main();
