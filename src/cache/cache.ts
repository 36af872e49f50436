// The content-addressed artifact cache.
//
//   <root>/entries/<fingerprint>/   a complete, immutable entry:
//       record.json    the fingerprint record (why this entry exists)
//       result.json    duration, summary facts, declared artifacts, output hashes
//       metrics.jsonl  every metric point the stage reported
//       log.txt        the stage's output
//       out/           the artifacts
//   <root>/tmp/<fingerprint>.<pid>.<nonce>.<host>/   an entry being written (same layout)
//   <root>/locks/<fingerprint>.lock           who is computing that entry right now
//
// An entry is written under tmp/ and renamed into entries/ in one step, so a reader sees a
// complete entry or none. A killed writer leaves only a tmp/ directory and a lock naming a dead
// process; both are recognised as stale and removed. Entries are never modified after publishing.
//
// The cache may be shared by several machines (`pipe worker`s on an NFS-style directory): rename
// is atomic there too, so two workers never publish one entry half-way. A lock holder on another
// host cannot be checked for life, so a held lock is refreshed (its mtime) every few seconds, and a
// lock nobody refreshed for LOCK_LEASE_MS is stale wherever its holder was.

import { randomBytes } from 'node:crypto';
import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { FingerprintRecord } from './fingerprint.ts';
import type { MetricPoint } from '../core/stage-kind.ts';
import { processAlive } from '../util/files.ts';
import { diskUsage } from '../util/hash.ts';
import { UnavailableError } from '../core/errors.ts';

export interface EntryResult {
  durationMs: number;
  finishedAt: number;
  summary: Record<string, string | number | boolean>;
  /** Artifact files (relative to out/) the stage declared for tracking. */
  artifacts: string[];
  /** Command stages: content hash of each declared output (relative path → hash). */
  outs?: Record<string, string>;
}

export interface Staging {
  fingerprint: string;
  dir: string;
  outDir: string;
}

export interface CacheEntry {
  fingerprint: string;
  dir: string;
  outDir: string;
  record: FingerprintRecord;
  result: EntryResult;
}

export class Cache {
  readonly root: string;

  constructor(root: string) {
    this.root = root;
  }

  entryDir(fingerprint: string): string {
    return path.join(this.root, 'entries', fingerprint);
  }

  async has(fingerprint: string): Promise<boolean> {
    try {
      await fs.access(path.join(this.entryDir(fingerprint), 'result.json'));
      return true;
    } catch {
      return false;
    }
  }

  async read(fingerprint: string): Promise<CacheEntry | undefined> {
    const dir = this.entryDir(fingerprint);
    try {
      const [record, result] = await Promise.all([
        fs.readFile(path.join(dir, 'record.json'), 'utf8'),
        fs.readFile(path.join(dir, 'result.json'), 'utf8'),
      ]);
      return { fingerprint, dir, outDir: path.join(dir, 'out'), record: JSON.parse(record), result: JSON.parse(result) };
    } catch {
      return undefined;
    }
  }

  async readMetrics(fingerprint: string): Promise<MetricPoint[]> {
    return readMetricsFile(path.join(this.entryDir(fingerprint), 'metrics.jsonl'));
  }

  /** A fresh private directory to write an entry into. */
  async stage(fingerprint: string, record: FingerprintRecord): Promise<Staging> {
    const dir = path.join(this.root, 'tmp', `${fingerprint}.${process.pid}.${randomBytes(4).toString('hex')}.${hostTag()}`);
    await fs.mkdir(path.join(dir, 'out'), { recursive: true });
    await fs.writeFile(path.join(dir, 'record.json'), JSON.stringify(record, null, 2));
    return { fingerprint, dir, outDir: path.join(dir, 'out') };
  }

  /**
   * Moves a finished staging directory into place. When another process published the same
   * entry first, ours is discarded: both computed the same fingerprint, so either is right.
   */
  async publish(staging: Staging, result: EntryResult): Promise<CacheEntry> {
    await fs.writeFile(path.join(staging.dir, 'result.json'), JSON.stringify(result, null, 2));
    const target = this.entryDir(staging.fingerprint);
    await fs.mkdir(path.dirname(target), { recursive: true });
    try {
      await fs.rename(staging.dir, target);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'EEXIST' && code !== 'ENOTEMPTY') throw error;
      await fs.rm(staging.dir, { recursive: true, force: true });
    }
    const entry = await this.read(staging.fingerprint);
    if (!entry) throw new UnavailableError(`cache entry ${staging.fingerprint} vanished right after publishing (removed by a concurrent pipe gc?)`);
    return entry;
  }

  async discard(staging: Staging): Promise<void> {
    await fs.rm(staging.dir, { recursive: true, force: true });
  }

  /**
   * Waits until this process may compute `fingerprint`: another live process computing the same
   * entry holds its lock. Returns a release function. `onWait` is called once if we had to wait.
   */
  async lock(fingerprint: string, onWait?: (holder: LockInfo) => void): Promise<() => Promise<void>> {
    const file = path.join(this.root, 'locks', `${fingerprint}.lock`);
    await fs.mkdir(path.dirname(file), { recursive: true });
    const me: LockInfo = { pid: process.pid, host: os.hostname(), since: Date.now() };
    let told = false;
    for (;;) {
      try {
        await fs.writeFile(file, JSON.stringify(me), { flag: 'wx' });
        const heartbeat = setInterval(() => {
          const now = new Date();
          fs.utimes(file, now, now).catch(() => undefined);
        }, LOCK_REFRESH_MS);
        heartbeat.unref();
        return async () => {
          clearInterval(heartbeat);
          await fs.rm(file, { force: true });
        };
      } catch (error) {
        if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
      }
      const holder = await readLock(file);
      if (!holder || isStale(holder) || (await lockAge(file)) > LOCK_LEASE_MS) {
        // Dead holder (or a torn lock file): take it over. Renaming first makes the take-over
        // single-winner when two processes find the same stale lock.
        const grave = `${file}.stale.${process.pid}`;
        try {
          await fs.rename(file, grave);
          await fs.rm(grave, { force: true });
        } catch {
          // someone else removed it; retry
        }
        continue;
      }
      if (!told) {
        onWait?.(holder);
        told = true;
      }
      await sleep(200);
    }
  }

  /**
   * Removes tmp/ directories left by processes that no longer run on this host, and those of
   * other hosts untouched for a day (a shared cache: their writers cannot be asked).
   */
  async cleanStale(): Promise<number> {
    let removed = 0;
    const tmp = path.join(this.root, 'tmp');
    for (const name of await readdirSafe(tmp)) {
      const [, pidText, , ...host] = name.split('.');
      const pid = Number(pidText);
      if (!Number.isInteger(pid)) continue;
      const local = host.length === 0 || host.join('.') === hostTag();
      const stale = local ? !processAlive(pid) : Date.now() - ((await fs.stat(path.join(tmp, name)).catch(() => undefined))?.mtimeMs ?? Date.now()) > 86_400_000;
      if (stale) {
        await fs.rm(path.join(tmp, name), { recursive: true, force: true });
        removed++;
      }
    }
    return removed;
  }

  async list(): Promise<Array<{ fingerprint: string; dir: string }>> {
    const entries = path.join(this.root, 'entries');
    return (await readdirSafe(entries)).map((fingerprint) => ({ fingerprint, dir: path.join(entries, fingerprint) }));
  }

  async size(fingerprint: string): Promise<number> {
    return diskUsage(this.entryDir(fingerprint));
  }

  /** Removes an entry: renamed away first so that no reader sees it half-deleted. */
  async remove(fingerprint: string): Promise<void> {
    const dir = this.entryDir(fingerprint);
    const grave = path.join(this.root, 'tmp', `${fingerprint}.gc.${process.pid}.${randomBytes(4).toString('hex')}`);
    await fs.mkdir(path.dirname(grave), { recursive: true });
    try {
      await fs.rename(dir, grave);
    } catch {
      return;
    }
    await fs.rm(grave, { recursive: true, force: true });
  }
}

export interface LockInfo {
  pid: number;
  host: string;
  since: number;
}

async function readLock(file: string): Promise<LockInfo | undefined> {
  try {
    return JSON.parse(await fs.readFile(file, 'utf8')) as LockInfo;
  } catch {
    return undefined;
  }
}

/** A lock's holder refreshes it this often; one not refreshed for the lease is abandoned. */
export const LOCK_REFRESH_MS = 5_000;
export const LOCK_LEASE_MS = Number(process.env['PIPE_LOCK_LEASE_MS'] ?? 60_000);

function isStale(lock: LockInfo): boolean {
  return lock.host === os.hostname() && !processAlive(lock.pid);
}

async function lockAge(file: string): Promise<number> {
  try {
    return Date.now() - (await fs.stat(file)).mtimeMs;
  } catch {
    return 0;
  }
}

/** This host's name as it may appear in a file name. */
function hostTag(): string {
  return os.hostname().replace(/[^A-Za-z0-9-]/g, '-') || 'host';
}

export async function readMetricsFile(file: string): Promise<MetricPoint[]> {
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch {
    return [];
  }
  const points: MetricPoint[] = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try {
      points.push(JSON.parse(line) as MetricPoint);
    } catch {
      // a torn last line of a killed stage; its entry was never published anyway
    }
  }
  return points;
}

async function readdirSafe(dir: string): Promise<string[]> {
  try {
    return await fs.readdir(dir);
  } catch {
    return [];
  }
}

export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
