// The bookkeeping every runner shares (here, or through a queue of workers), and the Runner type
// that the use cases choose an implementation of: `localRunner` (src/exec/local-runner.ts) or
// `queueRunner` (src/queue/submit.ts).

import type { Cache } from '../cache/cache.ts';
import type { Flavour, MetricPoint } from '../core/stage-kind.ts';
import type { RunEvent, RunListener, RunStartEvent, RunSummary, StageEndEvent, StageSummary } from '../core/events.ts';
import { recordState, type Plan, type PlannedStage } from '../plan/plan.ts';

export interface ExecuteOptions {
  plan: Plan;
  cache: Cache;
  /** The run-start event minus what the executor fills in (type, stages). */
  run: Omit<RunStartEvent, 'type' | 'stages'>;
  statePath: string;
  downloadCacheDir: string;
  flavour: Flavour;
  cpuSlots: number;
  /** Ids of the GPUs this run may hand out (CUDA_VISIBLE_DEVICES values). */
  gpuIds: string[];
  failFast: boolean;
  listeners: RunListener[];
  /** False for a sweep's merged run, whose stages belong to different trials: no run metrics. */
  summaryMetrics?: boolean;
  /** A sweep's early stopping: decides, after each epoch of the stages it watches, whether they stop. */
  epochGate?: EpochGate;
  /** Aborts the run; its reason names the signal that interrupted it (SIGINT, SIGTERM, SIGHUP): running stages are stopped, nothing more starts. */
  signal?: AbortSignal;
}

/**
 * A sweep's scheduler as the runner sees it. The stages it watches report each epoch and wait for
 * the answer; a stage told to stop ends as `pruned`, its result kept apart from a full one.
 */
export interface EpochGate {
  /** Whether the stage (by its name in the plan) reports its epochs to the gate. */
  watches(stage: string): boolean;
  /**
   * After `epoch` of `of` epochs, with every metric point the stage reported so far: true stops it.
   * A worker asks the submitter through the queue, hence the promise.
   */
  decide(stage: string, epoch: number, of: number, metrics: readonly MetricPoint[]): boolean | Promise<boolean>;
  /**
   * Whether a stage told to stop is paused rather than ended (ASHA's promotion form): the runner
   * then holds its outcome back and asks `resumeAfterPause`. Runners that cannot resume ignore it.
   */
  pauses?(stage: string): boolean;
  /** A paused stage waits for this: true runs it again (from its checkpoint), false ends it where it paused. */
  resumeAfterPause?(stage: string): Promise<boolean>;
  /** The run is interrupted: every paused stage's wait ends (false). */
  releaseAll?(): void;
}

/** How a stage ended: the stage-end event without what the executor adds (its name, fingerprint). */
export type Outcome = Omit<StageEndEvent, 'type' | 'stage' | 'fingerprint'>;

/** Executes a plan and says how each stage ended. */
export type Runner = (options: ExecuteOptions) => Promise<RunSummary>;

export function skippedOutcome(error: string, afterPruned = false): Outcome {
  return { status: 'skipped', durationMs: 0, error, metrics: [], artifacts: [], summary: {}, ...(afterPruned ? { afterPruned } : {}) };
}

/**
 * A stage whose upstream stages did not all complete: skipped, and why. Downstream of a pruned
 * stage (a sweep's early stopping) only, it is no failure: the trial ended early.
 */
export function upstreamOutcome(upstream: readonly string[], outcomes: ReadonlyArray<Outcome | undefined>): Outcome | undefined {
  const ended = upstream.map((name, i) => ({ name, o: outcomes[i] }));
  const broken = ended.filter(({ o }) => o?.status === 'failed' || o?.status === 'skipped' || o?.status === 'pruned');
  if (broken.length === 0) return undefined;
  const failed = broken.filter(({ o }) => o?.status !== 'pruned' && !o?.afterPruned);
  if (failed.length > 0) return skippedOutcome(`upstream stage '${failed.map((b) => b.name).join("', '")}' did not complete`);
  const pruned = broken.find(({ o }) => o?.status === 'pruned');
  const at = pruned?.o?.pruned;
  return skippedOutcome(pruned && at ? `trial pruned: stage '${pruned.name}' stopped after epoch ${at.epoch} of ${at.of}` : 'trial pruned upstream', true);
}

/**
 * The bookkeeping every way of executing a plan shares (here, or through a queue of workers): the
 * run-start and stage-end events, the per-pipeline state of finished stages, --fail-fast and
 * interruption, and the summary at the end.
 */
export class RunBook {
  private readonly started = Date.now();
  private readonly pending: Promise<unknown>[] = [];
  private readonly outcomes = new Map<string, Outcome>();
  private readonly abortHandlers: Array<(reason: string) => void> = [];
  private stateWrites = Promise.resolve();
  abortReason: string | undefined;
  /** The signal that interrupted the run, if one did. */
  private interruptedBy: string | undefined;

  constructor(private readonly options: ExecuteOptions) {
    const signal = options.signal;
    signal?.addEventListener('abort', () => {
      this.interruptedBy = typeof signal.reason === 'string' ? signal.reason : 'SIGINT';
      this.abort(`interrupted by ${this.interruptedBy}`);
    });
    this.emit({
      ...options.run,
      type: 'run-start',
      stages: options.plan.stages.map((s) => ({
        name: s.name,
        kind: s.kindName,
        fingerprint: s.fingerprint,
        cached: s.cached,
        reasons: s.reasons,
        params: s.stage.params,
        needs: s.stage.upstream,
      })),
    });
  }

  readonly emit = (event: RunEvent): void => {
    for (const listener of this.options.listeners) {
      try {
        const result = listener(event);
        if (result) this.pending.push(result.catch(() => undefined));
      } catch {
        // A subscriber's failure never fails the run.
      }
    }
  };

  onAbort(handler: (reason: string) => void): void {
    this.abortHandlers.push(handler);
  }

  abort(reason: string): void {
    if (this.abortReason) return;
    this.abortReason = reason;
    for (const handler of this.abortHandlers) handler(reason);
  }

  outcome(stage: string): Outcome | undefined {
    return this.outcomes.get(stage);
  }

  finish(stage: PlannedStage, outcome: Outcome): Outcome {
    this.outcomes.set(stage.name, outcome);
    this.emit({ type: 'stage-end', stage: stage.name, fingerprint: stage.fingerprint, ...outcome });
    // A pruned stage too: `pipe gc` keeps its pruned result and checkpoint with the trials of the last sweep.
    if (outcome.status === 'ran' || outcome.status === 'cached' || outcome.status === 'pruned') {
      this.stateWrites = this.stateWrites.then(() => recordState(this.options.statePath, stage.name, stage.fingerprint, stage.record)).catch(() => undefined);
    }
    if (outcome.status === 'failed' && this.options.failFast) this.abort(`--fail-fast: stage '${stage.name}' failed`);
    return outcome;
  }

  async close(): Promise<RunSummary> {
    const { options } = this;
    await this.stateWrites;
    const stages: StageSummary[] = options.plan.stages.map((s) => {
      const o = this.outcomes.get(s.name) ?? skippedOutcome('not reached');
      return {
        name: s.name, kind: s.kindName, status: o.status, durationMs: o.durationMs, fingerprint: s.fingerprint, error: o.error, reasons: s.reasons, summary: o.summary,
        ...(o.worker ? { worker: o.worker } : {}), ...(o.pruned ? { pruned: o.pruned } : {}), ...(o.afterPruned ? { afterPruned: true } : {}),
      };
    });
    // What each finished stage's entry takes in the cache (an unreadable cache just leaves it out).
    const finished = stages.filter((s) => s.status === 'ran' || s.status === 'cached');
    const usage = await options.cache.usage(finished.map((s) => s.fingerprint)).catch(() => undefined);
    for (const s of finished) {
      const entry = usage?.entries.get(s.fingerprint);
      if (entry) Object.assign(s, { cacheBytes: entry.bytes, cacheLinkedBytes: entry.linkedBytes });
    }
    const metrics: Record<string, number> = {};
    for (const s of options.summaryMetrics === false ? [] : options.plan.stages) {
      const points = [...(this.outcomes.get(s.name)?.metrics ?? [])].sort((a, b) => a.step - b.step || a.timestamp - b.timestamp);
      for (const point of points) metrics[point.key] = point.value;
    }
    const summary: RunSummary = {
      runId: options.run.runId,
      pipeline: options.run.pipelineName,
      // A pruned stage and what it held back are an early end of a trial, not a failure.
      status: stages.every((s) => s.status === 'ran' || s.status === 'cached' || s.status === 'pruned' || s.afterPruned) && !this.interruptedBy ? 'succeeded' : 'failed',
      ...(this.interruptedBy ? { interrupted: this.interruptedBy } : {}),
      durationMs: Date.now() - this.started,
      stages,
      ...(usage ? { cacheBytes: usage.uniqueBytes } : {}),
      metrics,
    };
    this.emit({ type: 'run-end', summary, endedAt: Date.now() });
    await Promise.all(this.pending);
    return summary;
  }
}
