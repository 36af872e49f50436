// `pipe worker --queue redis://HOST:PORT`: the command around the stage-job processor of
// src/queue/worker.ts: its options, its log lines, and Ctrl-C (once: finish the running jobs and
// stop; twice: leave now, the running jobs go back to the queue).

import * as os from 'node:os';
import * as path from 'node:path';
import { projectPaths } from '../cache/project.ts';
import { UsageError } from '../core/errors.ts';
import type { CommandStatus, Io } from '../core/io.ts';
import { gpuIds } from '../exec/runtime.ts';
import { parseQueueUrl } from '../queue/protocol.ts';
import { startWorker } from '../queue/worker.ts';
import type { CommandOptions } from './options.ts';

export async function workerCommand(values: CommandOptions, io: Io): Promise<CommandStatus> {
  if (!values.queue) throw new UsageError('pipe worker: --queue redis://HOST:PORT is required');
  parseQueueUrl(values.queue);
  const cpus = values.cpus !== undefined ? count('--cpus', values.cpus, 1) : os.availableParallelism();
  const gpus = chooseGpus(values.gpus);
  const name = values.name ?? `${os.hostname()}:${process.pid}`;
  const projectDir = process.cwd();
  const cacheDir = values.cache ? path.resolve(values.cache) : undefined;
  const say = (line: string) => io.out(`${new Date().toISOString()} ${name}: ${line}\n`);
  const stopping = new AbortController();
  stopOnSignals(stopping, say);

  const worker = await startWorker({
    queueUrl: values.queue,
    name,
    cpus,
    // --cpus holds TensorFlow to as many threads; without it TensorFlow takes every core anyway
    ...(values.cpus !== undefined ? { tfThreads: cpus } : {}),
    gpus,
    projectDir,
    ...(cacheDir ? { cacheDir } : {}),
    downloadCacheDir: projectPaths(projectDir).downloadsDir,
    lockMs: Number(process.env['PIPE_QUEUE_LOCK_MS'] ?? 30_000),
    log: say,
    signal: stopping.signal,
  });
  say(`taking stage jobs from ${values.queue}: ${cpus} CPU slot${cpus === 1 ? '' : 's'}${values.cpus !== undefined ? ` (TensorFlow: ${threadsText(cpus)})` : ''}, ${gpus.length ? `GPUs ${gpus.join(',')}` : 'no GPU'}, cache ${cacheDir ?? "the submitter's"}, working directory ${projectDir}`);
  await worker.run();
  say('stopped');
  return 'ok';
}

/** The TensorFlow threads a stage process of this worker gets, as the log line says them. */
function threadsText(cpus: number): string {
  const intra = process.env['TF_NUM_INTRAOP_THREADS'] ?? String(cpus);
  const inter = process.env['TF_NUM_INTEROP_THREADS'] ?? '1';
  return `${intra} intra-op, ${inter} inter-op thread${inter === '1' ? '' : 's'}`;
}

/** --gpus N: the first N GPUs found (by id), or device numbers 0..N-1 where fewer are visible. */
function chooseGpus(option: string | undefined): string[] {
  const found = gpuIds();
  const wanted = option !== undefined ? count('--gpus', option, 0) : found.length;
  return found.length >= wanted ? found.slice(0, wanted) : Array.from({ length: wanted }, (_, i) => String(i));
}

/** SIGINT/SIGTERM once: finish the running jobs, take no new ones; again: leave now. */
function stopOnSignals(stopping: AbortController, say: (line: string) => void): void {
  const stop = (signalName: string) => {
    if (stopping.signal.aborted) {
      say(`${signalName} again: leaving now; running jobs go back to the queue`);
      process.exit(1);
    }
    say(`${signalName}: finishing the running jobs, taking no new ones (again to leave now)`);
    stopping.abort();
  };
  process.on('SIGINT', () => stop('SIGINT'));
  process.on('SIGTERM', () => stop('SIGTERM'));
}

function count(flag: string, text: string, min: number): number {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) throw new UsageError(`${flag} ${text}: expected a whole number ≥ ${min}`);
  return n;
}
