// A chain of faults on one fast command pipeline: start a run, inject a fault at a random moment,
// check what the fault left, start again (the resume), and so on; each time a run gets through,
// its metrics and outputs must equal an undisturbed run's, and the chain begins again on an empty
// cache. At the end of the chain `pipe sync` runs and every run's MLflow record is checked.

import { existsSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import type { MLflowClient } from '../../src/tracking/mlflow-client.ts';
import { project } from '../helpers/cli.ts';
import { commandShellsOf, stageProcessesOf, type ProcessWatch } from './processes.ts';
import type { Random } from './random.ts';
import {
  checkCacheAfter, entryNames, readdirSafe, resultMetrics, runsOfExperiment, settle, signalPid, signalRun, sleep,
  startPipeRun, syncAndCheckRecords, tagOf, TERMINAL, type Ended, type StartedRun,
} from './runs.ts';
import type { Tally } from './tally.ts';

/** PIPE_FAULT_VERBOSE=1: a line per fault. */
export const log = (line: string) => {
  if (process.env['PIPE_FAULT_VERBOSE']) console.log(`${new Date().toISOString().slice(11, 23)} ${line}`);
};

/** Five stages side by side (so that one run offers several stage processes to kill) and a join. */
export const STAGES = ['s1', 's2', 's3', 's4', 's5', 'd'] as const;
export const OUTPUTS = ['s1.txt', 's2.txt', 's3.txt', 's4.txt', 's5.txt', 'd.json'] as const;
/**
 * The timeout of a stage made to hang. Only the copy of the pipeline that a timeout fault runs
 * sets it (a timeout is not part of a stage's fingerprint), so that a slow start on a loaded
 * machine never times out an ordinary run.
 */
const HANG_TIMEOUT_S = 3;

/**
 * Each command sleeps a little (so that faults land inside commands), hangs when `hang-<stage>`
 * exists (a stage timeout on demand), and appends its run's marker and the time to trace.log when
 * it ends: a line written after its runner exited is a process that outlived the run.
 */
function command(stage: string, work: string): string {
  const hang = `if [ -f hang-${stage} ]; then sleep 60; fi`;
  const trace = `echo "$PIPE_FAULT_MARK ${stage} $(date +%s%3N)" >> trace.log`;
  return JSON.stringify(`${hang}; sleep 0.2; ${work}; sleep 0.1; ${trace}`);
}

export function commandPipeline(name: string, experiment: string, hung: readonly string[] = []): string {
  const timeout = (stage: string) => (hung.includes(stage) ? `    timeout: ${HANG_TIMEOUT_S}\n` : '');
  const side = [1, 2, 3, 4, 5].map((i) => `  s${i}:
    run: ${command(`s${i}`, `seq ${i} \${params.salt} > s${i}.txt`)}
    outs: [s${i}.txt]
${timeout(`s${i}`)}`).join('');
  return `name: ${name}
experiment: ${experiment}
params:
  salt: 40
stages:
${side}  d:
    run: ${command('d', `printf '{"lines": %d, "bytes": %d, "salt": %d}' $(cat s?.txt | wc -l) $(cat s?.txt | wc -c) \${params.salt} > d.json`)}
    deps: [s1.txt, s2.txt, s3.txt, s4.txt, s5.txt]
    outs: [d.json]
    metrics: [d.json]
${timeout('d')}`;
}

export interface Reference {
  metrics: Record<string, number>;
  outputs: Record<string, string>;
  fingerprints: Record<string, string>;
  durationMs: number;
}

interface Summary {
  status: string;
  stages: Array<{ name: string; status: string; fingerprint: string; error?: string }>;
  metrics: Record<string, number>;
}

export function parseSummary(stdout: string): Summary | undefined {
  try {
    return JSON.parse(stdout) as Summary;
  } catch {
    return undefined;
  }
}

/** The MLflow server the chains share, which another task kills and restarts. */
export interface SharedMlflow {
  uri: string;
  client: MLflowClient;
  /** Changes whenever the server goes down or comes up. */
  epoch(): number;
  up(): boolean;
  /** Resolves when the server is up. */
  ready(): Promise<void>;
}

export interface ChainContext {
  watch: ProcessWatch;
  tally: Tally;
  mlflow: SharedMlflow;
  reference: Reference;
}

export type ChainFault =
  /** `again`: a second signal while the runner stops (an impatient Ctrl-C). */
  | { kind: 'runner'; signal: 'SIGKILL' | 'SIGTERM' | 'SIGINT'; group: boolean; again: boolean }
  /** `kills` stage processes or their commands SIGKILLed at random moments; the `hangs` stages time out. */
  | { kind: 'stages'; kills: number; hangs: string[] }
  | { kind: 'corrupt'; count: number };

export const runnerFaultName = (signal: string, group: boolean) => `${group ? 'process group' : 'runner alone'} ${signal}`;
export const STAGE_KILL = 'stage process SIGKILL';
export const COMMAND_KILL = "stage's command SIGKILL";
export const SECOND_SIGNAL = 'second signal while stopping';
export const STAGE_TIMEOUT = 'stage timeout';
export const CORRUPT_ENTRY = 'corrupt cache entry';
export const MLFLOW_RESTART = 'MLflow server SIGKILL + restart';

interface Corruption {
  fingerprint: string;
  stage: string;
  file: string;
  original: Buffer;
}

const RUN_ARGS = ['--json', '--jobs', '5'];

export class CommandChain {
  readonly dir: string;
  readonly name: string;
  readonly experiment: string;
  private readonly cacheDir: string;
  private readonly env: Record<string, string>;
  /** Faults since the cache was last emptied; a successful run after one is a resumed run. */
  private faultsSinceReset = 0;
  private lastSucceeded = false;
  private readonly trace: Array<{ marker: string; endedAt: number; fault: string }> = [];

  /** `tracked`: its runs record to MLflow (each record costs the server time; not every chain needs it). */
  constructor(readonly id: string, private readonly ctx: ChainContext, private readonly random: Random, private readonly tracked: boolean) {
    this.name = `chain-${id}`;
    this.experiment = `faults-${id}`;
    this.dir = project({ 'p.yaml': commandPipeline(this.name, this.experiment) });
    this.cacheDir = path.join(this.dir, 'runs', 'cache');
    this.env = tracked ? { PIPE_NO_TRACK: '0', MLFLOW_TRACKING_URI: ctx.mlflow.uri } : { PIPE_NO_TRACK: '1' };
  }

  randomFault(): ChainFault {
    const r = this.random;
    const entries = entryNames(this.cacheDir).length;
    const uncached = this.uncachedStages();
    const roll = r.next();
    if (roll < 0.3 && entries > 0) return { kind: 'corrupt', count: r.int(1, Math.min(5, entries)) };
    const side = uncached.filter((s) => s !== 'd');
    if (roll < 0.65 && side.length > 0) {
      const hangs = r.chance(0.4) ? [r.pick(side)] : [];
      return { kind: 'stages', kills: r.int(hangs.length > 0 ? 1 : 2, Math.min(5, side.length - hangs.length + 1)), hangs };
    }
    const signal = r.pick(['SIGKILL', 'SIGTERM', 'SIGINT'] as const);
    return { kind: 'runner', signal, group: r.chance(0.5), again: signal !== 'SIGKILL' && r.chance(0.4) };
  }

  /** One run with its fault(s); returns how many faults reached a live target. */
  async attempt(fault: ChainFault): Promise<number> {
    const before = new Set(readdirSafe(path.join(this.dir, 'runs', this.name)));
    const epoch = this.ctx.mlflow.epoch();
    const corrupted = fault.kind === 'corrupt' ? this.corrupt(fault.count) : [];
    const hangs = fault.kind === 'stages' ? fault.hangs : [];
    let file = 'p.yaml';
    if (hangs.length > 0) {
      file = 'hang.yaml';
      writeFileSync(path.join(this.dir, file), commandPipeline(this.name, this.experiment, hangs));
      for (const stage of hangs) writeFileSync(path.join(this.dir, `hang-${stage}`), '');
    }
    const run = startPipeRun(this.dir, ['run', file, ...RUN_ARGS], this.env, this.ctx.watch, this.id);
    const tally = this.ctx.tally;
    let injected = 0;
    let label = 'no fault (it came too late)';
    if (fault.kind === 'runner') {
      await sleep(this.random.between(0, this.horizonMs()));
      if (signalRun(run, fault.signal, fault.group)) {
        label = runnerFaultName(fault.signal, fault.group);
        tally.fault(label);
        injected = 1;
        if (fault.again) {
          await sleep(this.random.between(0, 400));
          if (signalRun(run, this.random.pick(['SIGINT', 'SIGTERM'] as const), fault.group)) {
            tally.fault(SECOND_SIGNAL);
            injected++;
          }
        }
      }
    } else if (fault.kind === 'stages') {
      const killed = await this.killStages(run, fault.kills);
      if (killed.stage > 0) tally.fault(STAGE_KILL, killed.stage);
      if (killed.command > 0) tally.fault(COMMAND_KILL, killed.command);
      injected += killed.stage + killed.command;
      label = killed.command > killed.stage ? COMMAND_KILL : STAGE_KILL;
    } else if (corrupted.length > 0) {
      tally.fault(CORRUPT_ENTRY, corrupted.length);
      injected = corrupted.length;
      label = CORRUPT_ENTRY;
    }
    const { ended, leaks } = await settle(run, this.ctx.watch);
    for (const stage of hangs) rmSync(path.join(this.dir, `hang-${stage}`), { force: true });
    const summary = parseSummary(ended.stdout);
    const timedOut = hangs.filter((h) => summary?.stages.find((s) => s.name === h)?.error?.includes('timed out'));
    if (timedOut.length > 0) {
      tally.fault(STAGE_TIMEOUT, timedOut.length);
      injected += timedOut.length;
    }
    if (injected === 0) label = 'no fault (it came too late)';
    log(`${this.id}: ${fault.kind === 'stages' ? `${STAGE_KILL} ×${injected - timedOut.length}, ${STAGE_TIMEOUT} ×${timedOut.length}` : label} → exit ${ended.exitCode ?? ended.signal} after ${ended.endedAt - run.startedAt} ms`);
    for (const leak of leaks) {
      const hung = /hang-(\w+)/.exec(leak.what)?.[1];
      tally.problem('processes leaked', hung && timedOut.includes(hung) ? STAGE_TIMEOUT : label, `${this.id}: ${leak.what}`);
    }
    this.trace.push({ marker: run.marker, endedAt: ended.endedAt, fault: label });
    await this.checkCache(label, ended, corrupted);
    if (this.tracked && fault.kind === 'runner' && fault.signal !== 'SIGKILL' && injected > 0) await this.checkMarkedAfterSignal(label, before, epoch);
    if (corrupted.length > 0) this.checkCorruption(label, corrupted, summary, ended);
    this.faultsSinceReset += injected;
    this.lastSucceeded = ended.exitCode === 0;
    if (ended.exitCode === 0) await this.completed(label, summary, epoch);
    return injected;
  }

  /** Runs without faults until a run succeeds; then `pipe sync` and the MLflow records. */
  async finish(): Promise<void> {
    for (let i = 0; i < 4 && !this.lastSucceeded; i++) {
      const epoch = this.ctx.mlflow.epoch();
      const run = startPipeRun(this.dir, ['run', 'p.yaml', ...RUN_ARGS], this.env, this.ctx.watch, this.id);
      const { ended, leaks } = await settle(run, this.ctx.watch);
      for (const leak of leaks) this.ctx.tally.problem('processes leaked', 'no fault (final resume)', `${this.id}: ${leak.what}`);
      this.trace.push({ marker: run.marker, endedAt: ended.endedAt, fault: 'no fault (final resume)' });
      await this.checkCache('no fault (final resume)', ended);
      this.lastSucceeded = ended.exitCode === 0;
      if (this.lastSucceeded) await this.completed('no fault (final resume)', parseSummary(ended.stdout), epoch);
      else this.ctx.tally.problem('broken promise', 'no fault (final resume)', `${this.id}: a run without faults exited ${ended.exitCode}: ${ended.stderr.slice(-400)}`);
    }
    this.checkTrace();
    if (!this.tracked) return;
    await this.ctx.mlflow.ready();
    await syncAndCheckRecords(this.ctx.tally, this.ctx.mlflow.client, this.ctx.mlflow.uri, [this.dir], this.name, this.experiment);
  }

  private uncachedStages(): string[] {
    const have = new Set(entryNames(this.cacheDir));
    return STAGES.filter((s) => !have.has(this.ctx.reference.fingerprints[s] ?? ''));
  }

  /** How long this run may take: the whole undisturbed run scaled by the share of stages left. */
  private horizonMs(): number {
    const left = this.uncachedStages().length / STAGES.length;
    return this.ctx.reference.durationMs * (0.35 + 0.85 * left);
  }

  /**
   * SIGKILLs `count` times, each at a random moment while something runs: a stage process, or the
   * shell of a stage's command (whose children then lose their parent).
   */
  private async killStages(run: StartedRun, count: number): Promise<{ stage: number; command: number }> {
    const killed = { stage: 0, command: 0 };
    for (let i = 0; i < count && !run.exited; i++) {
      await sleep(this.random.between(0, this.horizonMs() / (count + 1)));
      const command = this.random.chance(0.35);
      const find = () => (command ? commandShellsOf(run.marker) : stageProcessesOf(run.marker));
      let targets = find();
      while (targets.length === 0 && !run.exited) {
        await sleep(50);
        targets = find();
      }
      if (targets.length > 0 && signalPid(this.random.pick(targets), 'SIGKILL')) killed[command ? 'command' : 'stage']++;
    }
    return killed;
  }

  /** Flips one bit in the output of `count` random entries; half the time the workspace copy goes too. */
  private corrupt(count: number): Corruption[] {
    const fps = entryNames(this.cacheDir);
    const stageOf = new Map(Object.entries(this.ctx.reference.fingerprints).map(([s, fp]) => [fp, s]));
    const done: Corruption[] = [];
    for (let i = 0; i < count && fps.length > 0; i++) {
      const fp = fps.splice(this.random.int(0, fps.length - 1), 1)[0]!;
      const stage = stageOf.get(fp);
      if (!stage) continue;
      const file = OUTPUTS[STAGES.indexOf(stage as (typeof STAGES)[number])]!;
      const target = path.join(this.cacheDir, 'entries', fp, 'out', file);
      const original = readFileSync(target);
      const bytes = Buffer.from(original);
      const at = this.random.int(0, bytes.length - 1);
      bytes[at] = bytes[at]! ^ (1 << this.random.int(0, 7));
      writeFileSync(target, bytes);
      if (this.random.chance(0.5)) rmSync(path.join(this.dir, file), { force: true });
      done.push({ fingerprint: fp, stage, file, original });
    }
    return done;
  }

  private checkCache(fault: string, ended: Ended, corrupted: Corruption[] = []): Promise<void> {
    return checkCacheAfter(this.ctx.tally, fault, this.id, this.cacheDir, ended, corrupted.map((c) => c.fingerprint));
  }

  /** After SIGINT or SIGTERM the runner lives long enough to close its MLflow run. */
  private async checkMarkedAfterSignal(fault: string, before: Set<string>, epoch: number): Promise<void> {
    const mlflow = this.ctx.mlflow;
    if (!mlflow.up() || mlflow.epoch() !== epoch) return;
    const fresh = readdirSafe(path.join(this.dir, 'runs', this.name)).filter((n) => !before.has(n) && n !== 'latest');
    const runs = await runsOfExperiment(mlflow.client, this.experiment).catch(() => undefined);
    if (!runs || mlflow.epoch() !== epoch) return;
    for (const runId of fresh) {
      const record = runs.find((r) => tagOf(r, 'pipe.run_id') === runId);
      if (record && !TERMINAL.has(record.info.status)) {
        this.ctx.tally.problem('broken promise', fault, `${this.id}: MLflow run of ${runId} is ${record.info.status} after its runner exited`);
      }
    }
  }

  private checkCorruption(fault: string, corrupted: Corruption[], summary: Summary | undefined, ended: Ended): void {
    for (const c of corrupted) {
      const status = summary?.stages.find((s) => s.name === c.stage)?.status;
      const entryFile = path.join(this.cacheDir, 'entries', c.fingerprint, 'out', c.file);
      const now = existsSync(entryFile) ? readFileSync(entryFile) : undefined;
      if (status !== 'ran' || (now !== undefined && !now.equals(c.original))) {
        this.ctx.tally.problem('entries corrupted (used)', fault, `${this.id}: stage ${c.stage} with a flipped byte in out/${c.file}: run exited ${ended.exitCode}, stage ${status ?? 'not reported'}, entry ${now === undefined ? 'gone' : now.equals(c.original) ? 'repaired' : 'still corrupt'}`);
        // Counted once: the test puts the original back (and the workspace copy) so that the
        // rest of the chain is not judged by this one corruption again.
        if (now !== undefined) writeFileSync(entryFile, c.original);
        writeFileSync(path.join(this.dir, c.file), c.original);
      }
    }
  }

  /** A run that got through: results equal the undisturbed run's; then the chain starts afresh. */
  private async completed(fault: string, summary: Summary | undefined, epoch: number): Promise<void> {
    const { tally, reference, mlflow } = this.ctx;
    if (this.faultsSinceReset > 0) tally.resumed++;
    const metrics = resultMetrics(summary?.metrics ?? {});
    if (JSON.stringify(metrics) !== JSON.stringify(reference.metrics)) {
      tally.problem('broken promise', fault, `${this.id}: metrics ${JSON.stringify(metrics)} differ from the undisturbed run's ${JSON.stringify(reference.metrics)}`);
    }
    for (const file of OUTPUTS) {
      const text = existsSync(path.join(this.dir, file)) ? readFileSync(path.join(this.dir, file), 'utf8') : '(missing)';
      if (text !== reference.outputs[file]) tally.problem('entries corrupted (used)', fault, `${this.id}: ${file} is ${JSON.stringify(text)}, undisturbed: ${JSON.stringify(reference.outputs[file])}`);
    }
    // Every earlier run of this chain is over: after a resumed run, none may still be RUNNING.
    if (this.tracked && mlflow.up() && mlflow.epoch() === epoch) {
      const runs = await runsOfExperiment(mlflow.client, this.experiment).catch(() => undefined);
      if (runs && mlflow.epoch() === epoch) {
        for (const r of runs) if (!TERMINAL.has(r.info.status)) tally.problem('broken promise', fault, `${this.id}: after a resumed run, MLflow run ${tagOf(r, 'pipe.run_id')} is still ${r.info.status}`);
      }
    }
    // Begin again: on an empty cache now and then; usually with a few entries removed, so that
    // the next runs have stages to compute (and entries to corrupt) without paying for all of them.
    if (this.random.chance(0.2)) rmSync(this.cacheDir, { recursive: true, force: true });
    else {
      const fps = entryNames(this.cacheDir);
      for (let n = this.random.int(1, 3); n > 0 && fps.length > 0; n--) {
        const fp = fps.splice(this.random.int(0, fps.length - 1), 1)[0]!;
        rmSync(path.join(this.cacheDir, 'entries', fp), { recursive: true, force: true });
      }
    }
    this.faultsSinceReset = 0;
  }

  /** No command wrote to the workspace after its runner had exited. */
  private checkTrace(): void {
    const file = path.join(this.dir, 'trace.log');
    if (!existsSync(file)) return;
    const endedAt = new Map(this.trace.map((t) => [t.marker, t]));
    for (const line of readFileSync(file, 'utf8').split('\n')) {
      const [marker, stage, at] = line.split(' ');
      const run = endedAt.get(marker ?? '');
      if (!run || at === undefined) continue;
      const late = Number(at) - run.endedAt;
      if (late > 500) this.ctx.tally.problem('processes leaked', run.fault, `${this.id}: stage ${stage}'s command wrote trace.log ${late} ms after its runner exited`);
    }
  }
}
