// Runs a stage kind in this process with a real context (no child process, no cache), for tests
// of stage kinds. Returns what the stage reported.

import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { MetricPoint, Shard, StageContext, StageKind } from '../../src/core/stage-kind.ts';
import { paramsValidator } from '../../src/core/params-schema.ts';

export interface KindRun {
  outDir: string;
  logs: string[];
  metrics: MetricPoint[];
  artifacts: string[];
  summary: Record<string, string | number | boolean>;
  progress: Array<{ done: number; total?: number; label?: string }>;
}

export function tempDir(prefix = 'pipe-test-'): string {
  return mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** `given` validated against the kind's schema, with its defaults filled in (as analysis does). */
export function withDefaults<P>(kind: StageKind<P>, given: Partial<P>): P {
  const params = structuredClone(given) as Record<string, unknown>;
  const validate = paramsValidator(kind.params);
  if (!validate(params)) throw new Error(`${kind.name} params ${JSON.stringify(given)}: ${JSON.stringify(validate.errors)}`);
  return params as P;
}

/**
 * Runs `kind` with `params` as a pipeline would give them: validated against the kind's schema,
 * with its defaults filled in. With `shard`, its shard run (a part); with `parts`, its merge.
 */
export async function runKind<P>(
  kind: StageKind<P>,
  given: Partial<P>,
  inputs: Record<string, string> = {},
  options: { outDir?: string; downloadCacheDir?: string; quiet?: boolean; stopAfterEpoch?: number; checkpointDir?: string; cpus?: number; shard?: Shard; parts?: string[] } = {},
): Promise<KindRun> {
  const params = withDefaults(kind, given);
  const outDir = options.outDir ?? tempDir('pipe-out-');
  mkdirSync(outDir, { recursive: true });
  const tmpDir = tempDir('pipe-scratch-');
  const run: KindRun = { outDir, logs: [], metrics: [], artifacts: [], summary: {}, progress: [] };
  const ctx: StageContext<P> = {
    stageName: kind.name,
    params,
    inputs,
    outDir,
    tmpDir,
    downloadCacheDir: options.downloadCacheDir ?? tempDir('pipe-downloads-'),
    flavour: 'cpu',
    // One CPU slot unless a test gives more (as the runner grants them).
    cpus: options.cpus ?? 1,
    log: (message) => {
      run.logs.push(message);
      if (process.env['PIPE_TEST_VERBOSE']) console.log(`[${kind.name}] ${message}`);
    },
    progress: (done, total, label) => run.progress.push({ done, total, label }),
    metric: (key, value, step = 0) => run.metrics.push({ key, value, step, timestamp: Date.now() }),
    artifact: (relPath) => run.artifacts.push(relPath),
    summary: (facts) => Object.assign(run.summary, facts),
    // As a scheduler that stops the trial after `stopAfterEpoch` epochs.
    epochEnd: (epoch, of) => Promise.resolve(options.stopAfterEpoch !== undefined && epoch >= options.stopAfterEpoch && epoch < of),
    // Checkpoints written only when asked for (as under a scheduler); none read otherwise.
    checkpoints: { dir: options.checkpointDir ?? path.join(tmpDir, 'no-checkpoints'), write: options.checkpointDir !== undefined },
  };
  try {
    if (options.shard) await kind.shard!.run(ctx, options.shard);
    else if (options.parts) await kind.shard!.merge(ctx, options.parts);
    else await kind.run(ctx);
  } finally {
    rmSync(tmpDir, { recursive: true, force: true });
  }
  return run;
}
