// Augmentation on several threads: the augment stage's batches of images, split across
// `worker_threads`, each thread running augmentImage (src/ml/augment.ts) on its share.
//
// A pool owns two slots, each an input and an output buffer of `capacity` images. With more than
// one thread they are SharedArrayBuffers that every thread sees: the caller reads a batch of
// images into `inputs[slot]`, `augment(count, transforms, slot)` hands each thread a contiguous
// range of them (image i's pixels, transform i, image i of `outputs[slot]`) and resolves when
// every range is written. Two slots let the caller read the next batch in and write the previous
// one out while a batch is computed. No pixel is copied between threads, and memory is the four
// buffers whatever the number of images. Each output image depends only on its input image and its transform, so the bytes are
// those of one thread, whatever the number of threads and however the batch is split
// (test/ml/augment-pool.test.ts and test/stages/augment.test.ts check it).
//
// With one thread (one CPU slot, or a single image) the pool starts no worker and computes on the
// calling thread.
//
// The threads are stopped by `close()`, which the stage calls in a `finally`: after a failure of
// any thread (its error is the batch's error, and the pool takes no more batches) nothing keeps
// running. A stage process that is stopped exits with its threads.
//
// A worker thread starts from src/ml/augment-thread.mjs, plain JavaScript that registers tsx and
// then imports this module: pipe runs TypeScript through tsx (bin/pipe.js, `node --import tsx`),
// and on Node 20 a worker's own entry is loaded before that loader applies to it.

import { parentPort, Worker, workerData } from 'node:worker_threads';
import { augmentImage, type ViewTransform } from './augment.ts';
import type { ImageShape } from './dataset.ts';

const threadEntry = new URL('./augment-thread.mjs', import.meta.url);

/** What each thread is given once: the shared buffers and the image shape. */
interface ThreadData extends ImageShape {
  inputs: SharedArrayBuffer[];
  outputs: SharedArrayBuffer[];
}

/** One thread's share of a batch: images [start, end) with their transforms, into output `slot`. */
interface ThreadJob {
  id: number;
  slot: number;
  start: number;
  end: number;
  transforms: ViewTransform[];
}

type ThreadReply = { id: number; ok: true } | { id: number; ok: false; message: string; stack?: string };

/** A worker thread and the job it is computing, if any. */
interface Thread {
  worker: Worker;
  index: number;
  exited: boolean;
  pending?: { id: number; resolve: () => void; reject: (error: Error) => void };
}

export class AugmentPool {
  /** Per slot, a batch's input images (`capacity` images, back to back). */
  readonly inputs: readonly [Uint8Array, Uint8Array];
  /** Per slot, where `augment` writes the batch's augmented images. */
  readonly outputs: readonly [Uint8Array, Uint8Array];
  private readonly threads: Thread[] = [];
  private readonly imageBytes: number;
  private nextId = 0;
  /** Why the pool takes no more batches: a thread failed, or the pool was closed. */
  private broken: Error | undefined;

  private constructor(
    readonly threadCount: number,
    readonly shape: ImageShape,
    readonly capacity: number,
  ) {
    this.imageBytes = shape.height * shape.width * shape.channels;
    const bytes = capacity * this.imageBytes;
    const shared = threadCount > 1;
    const buffer = () => (shared ? new SharedArrayBuffer(bytes) : new ArrayBuffer(bytes));
    const inputs = [buffer(), buffer()] as const;
    const outputs = [buffer(), buffer()] as const;
    this.inputs = [new Uint8Array(inputs[0]), new Uint8Array(inputs[1])];
    this.outputs = [new Uint8Array(outputs[0]), new Uint8Array(outputs[1])];
    if (shared) {
      const data: ThreadData = { ...shape, inputs: inputs as unknown as SharedArrayBuffer[], outputs: outputs as unknown as SharedArrayBuffer[] };
      for (let index = 0; index < threadCount; index++) this.threads.push(this.startThread(index, data));
    }
  }

  /**
   * A pool of `threads` threads (at least one) for batches of up to `capacity` images of `shape`.
   * One thread means no worker: the batches are computed on the calling thread.
   */
  static create(threads: number, shape: ImageShape, capacity: number): AugmentPool {
    return new AugmentPool(Math.max(1, Math.floor(threads)), { height: shape.height, width: shape.width, channels: shape.channels }, Math.max(1, capacity));
  }

  /** Worker threads that have not exited yet (0 once `close` has resolved). */
  get liveThreads(): number {
    return this.threads.filter((t) => !t.exited).length;
  }

  /**
   * Augments images 0..count−1 of `inputs[slot]` into images 0..count−1 of `outputs[slot]`, image i with
   * `transforms[i]`. Rejects with the first thread's error when a thread fails; the pool is then
   * broken and only `close` remains. One batch at a time.
   */
  async augment(count: number, transforms: readonly ViewTransform[], slot: 0 | 1 = 0): Promise<void> {
    if (this.broken) throw this.broken;
    if (count > this.capacity || transforms.length !== count) {
      throw new Error(`bug: a batch of ${count} images (${transforms.length} transforms) for a pool of ${this.capacity}`);
    }
    if (this.threads.length === 0) return this.augmentHere(count, transforms, this.inputs[slot], this.outputs[slot]);
    const jobs = this.threads.map((thread, k) => {
      const start = Math.floor((count * k) / this.threads.length);
      const end = Math.floor((count * (k + 1)) / this.threads.length);
      return start < end ? this.send(thread, { id: 0, slot, start, end, transforms: transforms.slice(start, end) }) : Promise.resolve();
    });
    const results = await Promise.allSettled(jobs);
    const failed = results.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    if (failed) {
      this.broken ??= failed.reason as Error;
      throw failed.reason;
    }
  }

  /** Stops every thread and waits until they have exited. Safe to call more than once. */
  async close(): Promise<void> {
    this.broken ??= new Error('bug: the augment pool is closed');
    await Promise.all(this.threads.map((t) => (t.exited ? undefined : t.worker.terminate())));
  }

  private augmentHere(count: number, transforms: readonly ViewTransform[], input: Uint8Array, output: Uint8Array): void {
    const { height, width, channels } = this.shape;
    const size = this.imageBytes;
    for (let i = 0; i < count; i++) {
      augmentImage(input.subarray(i * size, (i + 1) * size), output.subarray(i * size, (i + 1) * size), height, width, channels, transforms[i]!);
    }
  }

  private send(thread: Thread, job: ThreadJob): Promise<void> {
    if (thread.exited) return Promise.reject(this.broken ?? new Error(`augment thread ${thread.index + 1} has exited`));
    if (thread.pending) return Promise.reject(new Error('bug: two batches at once on one augment thread'));
    const id = ++this.nextId;
    return new Promise<void>((resolve, reject) => {
      thread.pending = { id, resolve, reject };
      thread.worker.postMessage({ ...job, id });
    });
  }

  private startThread(index: number, data: ThreadData): Thread {
    const worker = new Worker(threadEntry, { workerData: data });
    const thread: Thread = { worker, index, exited: false };
    const fail = (error: Error) => {
      this.broken ??= error;
      const pending = thread.pending;
      thread.pending = undefined;
      pending?.reject(error);
    };
    worker.on('message', (reply: ThreadReply) => {
      const pending = thread.pending;
      if (!pending || pending.id !== reply.id) return;
      if (!reply.ok) {
        const error = new Error(`augment thread ${index + 1}: ${reply.message}`);
        if (reply.stack) error.stack = `${error.message}\n${reply.stack.split('\n').slice(1).join('\n')}`;
        return fail(error);
      }
      thread.pending = undefined;
      pending.resolve();
    });
    worker.on('error', (error) => fail(new Error(`augment thread ${index + 1} failed: ${error.message}`, { cause: error })));
    worker.on('exit', (code) => {
      thread.exited = true;
      fail(this.broken ?? new Error(`augment thread ${index + 1} exited (code ${code})`));
    });
    return thread;
  }
}

/**
 * The body of a worker thread (src/ml/augment-thread.mjs calls it): computes each job it is sent
 * on the shared buffers and answers with its id, or with the error that stopped it.
 */
export function serveAugmentJobs(): void {
  const port = parentPort;
  if (!port) throw new Error('bug: serveAugmentJobs outside an augment thread');
  const { inputs, outputs, height, width, channels } = workerData as ThreadData;
  const srcs = inputs.map((buffer) => new Uint8Array(buffer));
  const dsts = outputs.map((buffer) => new Uint8Array(buffer));
  const size = height * width * channels;
  port.on('message', (job: ThreadJob) => {
    let reply: ThreadReply;
    try {
      const src = srcs[job.slot]!;
      const dst = dsts[job.slot]!;
      for (let i = job.start; i < job.end; i++) {
        const transform = job.transforms[i - job.start]!;
        augmentImage(src.subarray(i * size, (i + 1) * size), dst.subarray(i * size, (i + 1) * size), height, width, channels, transform);
      }
      reply = { id: job.id, ok: true };
    } catch (error) {
      const err = error instanceof Error ? error : new Error(String(error));
      reply = { id: job.id, ok: false, message: err.message, ...(err.stack ? { stack: err.stack } : {}) };
    }
    port.postMessage(reply);
  });
}
