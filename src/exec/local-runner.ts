// The local runner: stages start when their upstream stages are done, in parallel within the CPU
// and GPU slots, each in its own child process. It emits events; it never prints.

import type { RunSummary } from '../core/events.ts';
import { RunBook, skippedOutcome, upstreamOutcome, type ExecuteOptions, type Outcome, type Runner } from './run-book.ts';
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
      const grant = await slots.acquire(job.cpu, job.gpu);
      try {
        if (book.abortReason) return book.finish(stage, skippedOutcome(`not started: ${book.abortReason}`));
        return book.finish(stage, await runStage(job, grant, runContext, plan.pipeline.file.dir));
      } finally {
        grant.release();
      }
    })());
  }

  await Promise.all(done.values());
  return book.close();
};
