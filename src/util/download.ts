// Downloads a URL into a persistent cache directory, once.
//
// The cache entry is named after the URL (and the expected sha256 when given), so a second call for
// the same URL returns the cached file without touching the network. Bytes arrive in `<file>.part`;
// an interrupted transfer resumes with an HTTP Range request when the server answers 206 (and starts
// over when it answers 200). Network errors, 5xx and 429 are retried with exponential backoff. The
// finished file is checked against `sha256` and only then renamed into place, so the cache never
// holds a truncated or corrupt file under its final name. A `<file>.json` sidecar records the URL,
// the size and the actual sha256 (handy to pin a checksum in a pipeline).

import { createHash, randomUUID } from 'node:crypto';
import { createReadStream, createWriteStream, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { exists, processAlive } from './files.ts';
import { InputError, UnavailableError } from '../core/errors.ts';

export interface DownloadOptions {
  url: string;
  /** Expected sha256 of the file (hex). A mismatch is an error and the file is discarded. */
  sha256?: string;
  /** Persistent directory for cached downloads (created when missing). */
  cacheDir: string;
  /** Called as bytes arrive: bytes received so far (including a resumed part) and the total when known. */
  onProgress?: (received: number, total?: number) => void;
  /** Extra attempts after a network error, a 5xx/429 answer or a truncated body (default 4). */
  retries?: number;
  /** First backoff delay; doubles per attempt, capped at 30 s (default 1000 ms). */
  retryDelayMs?: number;
  /** Abort an attempt when no byte arrives for this long (default 60 s); it is then retried. */
  idleTimeoutMs?: number;
  /** Notes for the run log (retries, resumes). */
  log?: (message: string) => void;
}

/** What the `<file>.json` sidecar of a cached download holds. */
export interface DownloadRecord {
  url: string;
  sha256: string;
  bytes: number;
  downloadedAt: string;
}

/** Downloads `url` into `cacheDir` unless it is cached already; returns the absolute path of the file. */
export async function download(options: DownloadOptions): Promise<string> {
  const { url, cacheDir } = options;
  const expected = options.sha256?.toLowerCase();
  if (expected !== undefined && !/^[0-9a-f]{64}$/.test(expected)) {
    throw new InputError(`download of ${url}: sha256 must be 64 hex digits, got "${options.sha256}"`);
  }
  await fs.mkdir(cacheDir, { recursive: true });
  const file = path.resolve(cacheDir, cacheFileName(url, expected));
  if (await exists(file)) return file;

  const release = await acquireLock(`${file}.lock`);
  try {
    // Another process may have finished the same download while we waited for the lock.
    if (await exists(file)) return file;
    await fetchWithRetries(options, `${file}.part`);
    const actual = await sha256File(`${file}.part`);
    if (expected !== undefined && actual !== expected) {
      await fs.rm(`${file}.part`, { force: true });
      throw new InputError(
        `checksum mismatch for ${url}: expected sha256 ${expected}, got ${actual}; the download was discarded`,
      );
    }
    const bytes = (await fs.stat(`${file}.part`)).size;
    const record: DownloadRecord = { url, sha256: actual, bytes, downloadedAt: new Date().toISOString() };
    await fs.writeFile(`${file}.json`, JSON.stringify(record, null, 2) + '\n');
    await fs.rename(`${file}.part`, file);
    return file;
  } finally {
    await release();
  }
}

/** The sidecar record of a cached download, if there is one. */
export async function readDownloadRecord(file: string): Promise<DownloadRecord | undefined> {
  try {
    return JSON.parse(await fs.readFile(`${file}.json`, 'utf8')) as DownloadRecord;
  } catch {
    return undefined;
  }
}

/** Hex sha256 of a file's content, streamed. */
export async function sha256File(file: string): Promise<string> {
  const hash = createHash('sha256');
  await pipeline(createReadStream(file), hash);
  return hash.digest('hex');
}

/** `<16 hex of sha256(url, sha256)>-<last path segment of the URL>`, safe as a file name. */
export function cacheFileName(url: string, sha256?: string): string {
  const key = createHash('sha256').update(`${url}\n${sha256 ?? ''}`).digest('hex').slice(0, 16);
  let base = 'download';
  try {
    const last = new URL(url).pathname.split('/').filter(Boolean).pop();
    if (last) base = decodeURIComponent(last);
  } catch {
    // not a parsable URL: keep the generic name; fetch() reports the real problem
  }
  base = base.replace(/[^A-Za-z0-9._-]/g, '_').slice(-80) || 'download';
  return `${key}-${base}`;
}

/** An attempt failed in a way worth retrying (network error, 5xx, truncated body). */
class RetryableError extends UnavailableError {}

async function fetchWithRetries(options: DownloadOptions, part: string): Promise<void> {
  const retries = options.retries ?? 4;
  const baseDelay = options.retryDelayMs ?? 1000;
  for (let attempt = 0; ; attempt++) {
    try {
      await fetchOnce(options, part);
      return;
    } catch (error) {
      const retryable = error instanceof RetryableError || isNetworkError(error);
      if (!retryable) throw error;
      if (attempt >= retries) {
        throw new UnavailableError(`download of ${options.url} failed after ${attempt + 1} attempts: ${messageOf(error)}`, {
          cause: error,
        });
      }
      const delay = Math.min(baseDelay * 2 ** attempt, 30_000);
      options.log?.(`download of ${options.url}: ${messageOf(error)}; retrying in ${delay} ms`);
      await sleep(delay);
    }
  }
}

async function fetchOnce(options: DownloadOptions, part: string): Promise<void> {
  const { url } = options;
  const have = await sizeOf(part);
  const headers: Record<string, string> = { 'accept-encoding': 'identity' };
  if (have > 0) headers['range'] = `bytes=${have}-`;

  const controller = new AbortController();
  const idleMs = options.idleTimeoutMs ?? 60_000;
  let idleTimer: NodeJS.Timeout | undefined;
  const armIdleTimer = () => {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(
      () => controller.abort(new RetryableError(`no data for ${Math.round(idleMs / 1000)} s`)),
      idleMs,
    );
  };
  armIdleTimer();
  try {
    let response: Response;
    try {
      response = await fetch(url, { headers, redirect: 'follow', signal: controller.signal });
    } catch (error) {
      if (controller.signal.aborted) throw controller.signal.reason;
      throw new RetryableError(`cannot connect: ${messageOf(error)}`, { cause: error });
    }

    let append = false;
    let total: number | undefined;
    const length = headerNumber(response.headers.get('content-length'));
    if (response.status === 206 && have > 0) {
      const range = /^bytes (\d+)-(\d+)\/(\d+|\*)$/.exec(response.headers.get('content-range') ?? '');
      if (range && Number(range[1]) === have) {
        append = true;
        total = range[3] === '*' ? undefined : Number(range[3]);
        options.log?.(`download of ${url}: resuming at byte ${have}`);
      } else {
        await response.body?.cancel();
        await fs.rm(part, { force: true });
        throw new RetryableError(`server answered an unexpected range (${response.headers.get('content-range')})`);
      }
    } else if (response.status === 416 && have > 0) {
      // Our part is no prefix the server can continue (e.g. the file changed): start over.
      await response.body?.cancel();
      await fs.rm(part, { force: true });
      throw new RetryableError('server cannot resume the partial download (416); starting over');
    } else if (response.ok) {
      total = length;
    } else {
      await response.body?.cancel().catch(() => undefined);
      const what = `HTTP ${response.status}${response.statusText ? ` ${response.statusText}` : ''}`;
      if (response.status >= 500 || response.status === 429 || response.status === 408) {
        throw new RetryableError(what);
      }
      throw new UnavailableError(`download of ${url} failed: ${what}`);
    }
    if (!response.body) throw new RetryableError('empty response body');

    let received = append ? have : 0;
    options.onProgress?.(received, total);
    const counter = new Transform({
      transform(chunk: Buffer, _encoding, callback) {
        received += chunk.length;
        armIdleTimer();
        options.onProgress?.(received, total);
        callback(null, chunk);
      },
    });
    try {
      await pipeline(
        Readable.fromWeb(response.body as unknown as WebReadableStream<Uint8Array>),
        counter,
        createWriteStream(part, { flags: append ? 'a' : 'w' }),
      );
    } catch (error) {
      if (controller.signal.aborted) throw controller.signal.reason;
      throw new RetryableError(`connection lost after ${received} bytes: ${messageOf(error)}`, { cause: error });
    }
    if (total !== undefined && received !== total) {
      throw new RetryableError(`connection closed after ${received} of ${total} bytes`);
    }
  } finally {
    clearTimeout(idleTimer);
  }
}

/**
 * A lock file next to the cache entry, so that two processes never write the same `.part`. A lock
 * whose process is gone is taken over.
 */
async function acquireLock(lockFile: string): Promise<() => Promise<void>> {
  const token = `${process.pid} ${randomUUID()}`;
  for (;;) {
    try {
      await fs.writeFile(lockFile, token, { flag: 'wx' });
      return async () => {
        const content = await fs.readFile(lockFile, 'utf8').catch(() => '');
        if (content === token) await fs.rm(lockFile, { force: true });
      };
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    const holder = Number((await fs.readFile(lockFile, 'utf8').catch(() => '')).split(' ')[0]);
    if (Number.isInteger(holder) && holder > 0 && processAlive(holder)) {
      await sleep(250);
    } else {
      await fs.rm(lockFile, { force: true });
    }
  }
}


function isNetworkError(error: unknown): boolean {
  // fetch() rejects with a TypeError ("fetch failed", "terminated") for socket-level failures.
  return error instanceof TypeError;
}

function headerNumber(value: string | null): number | undefined {
  if (value === null || !/^\d+$/.test(value)) return undefined;
  return Number(value);
}

async function sizeOf(file: string): Promise<number> {
  try {
    return (await fs.stat(file)).size;
  } catch {
    return 0;
  }
}


function messageOf(error: unknown): string {
  if (error instanceof Error) {
    const cause = error.cause instanceof Error ? ` (${error.cause.message})` : '';
    return error.message + cause;
  }
  return String(error);
}

function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
