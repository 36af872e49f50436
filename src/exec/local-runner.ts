// The local runner: stages start when their upstream stages are done, in parallel within the CPU
// and GPU slots, each in its own child process. It emits events; it never prints. A stage a sweep's
// scheduler pauses (ASHA's promotion form) gives its slot back and waits; promoted, it runs again
// from its checkpoint, and its stage-end is the one of its last attempt.

import type { RunSummary } from '../core/events.ts';
import { RunBook, skippedOutcome, upstreamOutcome, type EpochGate, type ExecuteOptions, type Outcome, type Runner } from './run-book.ts';
import type { MetricPoint } from '../core/stage-kind.ts';
import { restore, runStage, type RunContext, type StageProcess } from './run-stage.ts';
import { Slots } from './slots.ts';
import { stageJob } from './stage-job.ts';

export const localRunner: Runner = async (options: ExecuteOptions): Promise<RunSummary> => {
  const { plan, cache } = options;
  const book = new RunBook(options);
  const slots = new Slots(options.cpuSlots, options.gpuIds);
  const done = new Map<string, Promise<Outcome>>();
  const children = new Set<StageProcess>();
  book.onAbort((reason) => {
    for (const child of children) child.stop(reason);
  });

  const runContext: RunContext = {
    cache,
    downloadCacheDir: options.downloadCacheDir,
    flavour: options.flavour,
    gpusConfigured: options.gpuIds.length > 0,
    emit: book.emit,
    children,
    aborted: () => book.abortReason,
    ...(options.epochGate ? { epochGate: options.epochGate } : {}),
  };

  // An interrupted sweep ends the pauses of its paused trials (they end where they paused).
  book.onAbort(() => options.epochGate?.releaseAll?.());

  for (const stage of plan.stages) {
    const upstream = stage.stage.upstream.map((name) => done.get(name) ?? Promise.resolve(skippedOutcome('missing')));
    done.set(stage.name, (async () => {
      const ups = await Promise.all(upstream);
      const blocked = upstreamOutcome(stage.stage.upstream, ups);
      if (blocked) return book.finish(stage, blocked);
      if (book.abortReason) return book.finish(stage, skippedOutcome(`not started: ${book.abortReason}`));
      if (stage.cached) {
        const entry = await cache.readIntact(stage.fingerprint, (problem) => book.emit({ type: 'stage-log', stage: stage.name, stream: 'log', line: `${problem}: the stage runs again` }));
        if (entry) return book.finish(stage, await restore(stage, entry, options));
      }
      const job = stageJob(plan, stage, options.flavour);
      // The slot is given back after the stage-end (a --fail-fast abort comes first, so nothing new starts in it).
      const attempt = async (context: RunContext): Promise<Attempt> => {
        const grant = await slots.acquire(job.cpu, job.gpu);
        try {
          const outcome = book.abortReason ? skippedOutcome(`not started: ${book.abortReason}`) : await runStage(job, grant, context, plan.pipeline.file.dir);
          return { outcome, release: () => grant.release() };
        } catch (error) {
          grant.release();
          throw error;
        }
      };
      const { outcome, release } = await runWithPauses(stage.name, attempt, runContext, book, options.epochGate);
      try {
        return book.finish(stage, outcome);
      } finally {
        release();
      }
    })());
  }

  await Promise.all(done.values());
  return book.close();
};

/**
 * Runs a stage; while a sweep's scheduler pauses it (it ended pruned at a rung), waits for the
 * scheduler's answer and, promoted, runs it again: the stage resumes from the checkpoint of the
 * epoch it paused at, replays that epoch's results (which the scheduler now lets through), and
 * trains on. The outcome is the last attempt's, with the time of all and every metric point once.
 */
interface Attempt {
  outcome: Outcome;
  /** Gives the stage's slot back. */
  release: () => void;
}

async function runWithPauses(
  name: string,
  attempt: (context: RunContext) => Promise<Attempt>,
  context: RunContext,
  book: RunBook,
  gate: EpochGate | undefined,
): Promise<Attempt> {
  let last = await attempt(context);
  const log = (line: string) => book.emit({ type: 'stage-log', stage: name, stream: 'log', line });
  while (last.outcome.status === 'pruned' && last.outcome.pruned && gate?.pauses?.(name) && gate.resumeAfterPause && !book.abortReason) {
    const earlier = last.outcome;
    const at = earlier.pruned!;
    // Paused: its slot goes to the next stage while it waits.
    last.release();
    log(`paused after epoch ${at.epoch} of ${at.of}: the scheduler resumes it from its checkpoint if it becomes one of the best at this rung`);
    if (!(await gate.resumeAfterPause(name)) || book.abortReason) {
      if (!book.abortReason) log(`not promoted: ends after epoch ${at.epoch} of ${at.of}`);
      return { outcome: earlier, release: () => undefined };
    }
    log(`promoted: resumes from its checkpoint after epoch ${at.epoch}`);
    const seen = new Set(earlier.metrics.map(pointKey));
    // The resumed stage tells its checkpoint's epochs again: the runs and terminals have them already.
    const replayed = (point: MetricPoint) => seen.has(pointKey(point));
    const next = await attempt({ ...context, emit: (event) => (event.type === 'stage-metric' && event.stage === name && replayed(event.point) ? undefined : context.emit(event)) });
    last = { ...next, outcome: { ...next.outcome, durationMs: earlier.durationMs + next.outcome.durationMs, metrics: [...earlier.metrics, ...next.outcome.metrics.filter((p) => !replayed(p))] } };
  }
  return last;
}

function pointKey(point: MetricPoint): string {
  return `${point.key}|${point.step}|${point.value}`;
}
