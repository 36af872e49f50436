// The content-addressed artifact cache.
//
//   <root>/entries/<fingerprint>/   a complete, immutable entry:
//       record.json    the fingerprint record (why this entry exists)
//       result.json    duration, summary facts, declared artifacts, output hashes, and the size and
//                      sha256 of every file of out/ and metrics.jsonl (checked before an entry is used)
//       metrics.jsonl  every metric point the stage reported
//       log.txt        the stage's output
//       out/           the artifacts
//   <root>/tmp/<fingerprint>.<pid>.<nonce>.<host>/   an entry being written (same layout)
//   <root>/locks/<fingerprint>.lock           who is computing that entry right now
//   <root>/locks/<fingerprint>.use.<pid>.<nonce>   a running stage reading that entry (an input):
//                                             `pipe gc` never removes an entry held so
//
// An entry is written under tmp/ and renamed into entries/ in one step, so a reader sees a
// complete entry or none. A killed writer leaves only a tmp/ directory and a lock naming a dead
// process; both are recognised as stale and removed. Entries are never modified after publishing;
// one found changed (a flipped byte, a half-copied file) is removed, never used, and recomputed.
//
// The cache may be shared by several machines (`pipe worker`s on an NFS-style directory): rename
// is atomic there too, so two workers never publish one entry half-way. A lock holder on another
// host cannot be checked for life, so a held lock is refreshed (its mtime) every few seconds, and a
// lock nobody refreshed for LOCK_LEASE_MS is stale wherever its holder was.
//
// An entry's directory mtime is when it was last used (published, restored or read as an input):
// `pipe gc --max-size` removes the least recently used first. Files of different entries may be
// one file (hard links: split links the fetched pixels): sizes are counted once per inode.

import { randomBytes } from 'node:crypto';
import { constants as fsConstants, promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import type { FingerprintRecord } from './fingerprint.ts';
import type { MetricPoint } from '../core/stage-kind.ts';
import { processAlive } from '../util/files.ts';
import { diskUsage, hashFile, listFiles } from '../util/hash.ts';
import { StageError, UnavailableError } from '../core/errors.ts';

export interface EntryResult {
  durationMs: number;
  finishedAt: number;
  summary: Record<string, string | number | boolean>;
  /** Artifact files (relative to out/) the stage declared for tracking. */
  artifacts: string[];
  /** Command stages: content hash of each declared output (relative path → hash). */
  outs?: Record<string, string>;
  /** A pruned result (see prunedKey): the stage stopped after `epoch` of its `of` epochs. */
  pruned?: { epoch: number; of: number };
  /**
   * Size and sha256 of each file of the entry as published (path relative to the entry: `out/…`,
   * `metrics.jsonl`). Entries published before pipe recorded these have none, and are used unchecked.
   */
  checksums?: Record<string, FileChecksum>;
}

export interface FileChecksum {
  size: number;
  sha256: string;
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

/**
 * Where a pruned result is kept (a learning stage a sweep's scheduler stopped after `epoch`
 * epochs): beside the entries, under a key that is not the stage's fingerprint, so the stage is
 * never taken as computed in full.
 */
export function prunedKey(fingerprint: string, epoch: number): string {
  return `${fingerprint}.pruned-${epoch}`;
}

export class Cache {
  readonly root: string;
  /** Entries this Cache published or found intact: one object serves one run (or one worker job). */
  private readonly intact = new Set<string>();

  constructor(root: string) {
    this.root = root;
  }

  entryDir(fingerprint: string): string {
    return path.join(this.root, 'entries', fingerprint);
  }

  /** Where a learning stage keeps its training checkpoints (src/ml/checkpoint.ts) between runs. */
  checkpointDir(fingerprint: string): string {
    return path.join(this.root, 'checkpoints', fingerprint);
  }

  /** Removes a stage's checkpoints (its full result is published): renamed away first, like an entry. */
  async removeCheckpoints(fingerprint: string): Promise<void> {
    const dir = this.checkpointDir(fingerprint);
    const grave = path.join(this.root, 'tmp', `${fingerprint}.checkpoints.gc.${process.pid}.${randomBytes(4).toString('hex')}`);
    try {
      await fs.mkdir(path.dirname(grave), { recursive: true });
      await fs.rename(dir, grave);
    } catch {
      return;
    }
    await fs.rm(grave, { recursive: true, force: true });
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

  /**
   * The entry, if it is intact: every file it recorded at publishing has its size and sha256 still.
   * A damaged entry is removed (so that it is recomputed, never used) and `onDamaged` told what is
   * wrong with it. An entry that cannot be read (a torn result.json) goes the same way.
   */
  async readIntact(fingerprint: string, onDamaged: (problem: string) => void): Promise<CacheEntry | undefined> {
    const entry = await this.read(fingerprint);
    const problem = entry ? await this.damage(entry) : await this.unreadable(fingerprint);
    if (problem === undefined) {
      if (entry) await this.touch(fingerprint);
      return entry;
    }
    onDamaged(`cache entry ${fingerprint.slice(0, 10)} is damaged: ${problem}; removed it`);
    await this.remove(fingerprint);
    return undefined;
  }

  /**
   * What is wrong with an entry's files, if anything (checked once per Cache object). Hashing is
   * skipped when the entry's stamp (written by an earlier check) shows every file unchanged since.
   */
  private async damage(entry: CacheEntry): Promise<string | undefined> {
    if (this.intact.has(entry.fingerprint)) return undefined;
    const checksums = entry.result.checksums ?? {};
    if (await stampHolds(entry.dir, Object.keys(checksums))) {
      this.intact.add(entry.fingerprint);
      return undefined;
    }
    for (const [file, expected] of Object.entries(checksums)) {
      const actual = await checksumOf(path.join(entry.dir, file)).catch(() => undefined);
      if (!actual) return `${file} is missing`;
      if (actual.size !== expected.size) return `${file} has ${actual.size} bytes, ${expected.size} when published`;
      if (actual.sha256 !== expected.sha256) return `${file} has changed since it was published (sha256 ${actual.sha256.slice(0, 12)}…, recorded ${expected.sha256.slice(0, 12)}…)`;
    }
    this.intact.add(entry.fingerprint);
    await writeStamp(entry.dir, Object.keys(checksums));
    return undefined;
  }

  /** Why an entry directory that exists cannot be read; undefined when there is no entry. */
  private async unreadable(fingerprint: string): Promise<string | undefined> {
    const dir = this.entryDir(fingerprint);
    if (!(await exists(dir))) return undefined;
    for (const file of ['record.json', 'result.json']) {
      try {
        JSON.parse(await fs.readFile(path.join(dir, file), 'utf8'));
      } catch (error) {
        return `${file} cannot be read (${(error as Error).message})`;
      }
    }
    return undefined;
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
    const checksums = await checksumsOf(staging.dir);
    await fs.writeFile(path.join(staging.dir, 'result.json'), JSON.stringify({ ...result, checksums }, null, 2));
    // The stage process is gone and the directory is ours alone: nothing can write the files between
    // hashing and stamping, so this stamp is settled (not racy) from the start.
    await writeStamp(staging.dir, Object.keys(checksums), true);
    const target = this.entryDir(staging.fingerprint);
    await fs.mkdir(path.dirname(target), { recursive: true });
    try {
      await fs.rename(staging.dir, target);
      this.intact.add(staging.fingerprint); // just checksummed
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code !== 'EEXIST' && code !== 'ENOTEMPTY') throw error;
      await fs.rm(staging.dir, { recursive: true, force: true });
    }
    const entry = await this.read(staging.fingerprint);
    if (!entry) throw new UnavailableError(`cache entry ${staging.fingerprint} vanished right after publishing (removed by a concurrent pipe gc?)`);
    return entry;
  }

  /** Marks an entry as used now (its directory's mtime; best effort: a read-only cache keeps none). */
  async touch(fingerprint: string): Promise<void> {
    const now = new Date();
    await fs.utimes(this.entryDir(fingerprint), now, now).catch(() => undefined);
  }

  /**
   * Holds entries a running stage reads, so that `pipe gc` leaves them alone until `release`: a use
   * file per entry, refreshed as a lock is (a holder that died stops holding, as its lock would).
   */
  async hold(fingerprints: string[]): Promise<() => Promise<void>> {
    const dir = path.join(this.root, 'locks');
    await fs.mkdir(dir, { recursive: true });
    const me: LockInfo = { pid: process.pid, host: os.hostname(), since: Date.now() };
    const files: string[] = [];
    for (const fingerprint of new Set(fingerprints)) {
      const file = path.join(dir, `${fingerprint}.use.${process.pid}.${randomBytes(4).toString('hex')}`);
      await fs.writeFile(file, JSON.stringify(me));
      files.push(file);
    }
    const heartbeat = setInterval(() => {
      const now = new Date();
      for (const file of files) fs.utimes(file, now, now).catch(() => undefined);
    }, LOCK_REFRESH_MS);
    heartbeat.unref();
    return async () => {
      clearInterval(heartbeat);
      await Promise.all(files.map((file) => fs.rm(file, { force: true })));
    };
  }

  /** Fingerprints that a live process holds: being computed (their lock) or read by a running stage. */
  async held(): Promise<Set<string>> {
    const locks = path.join(this.root, 'locks');
    const held = new Set<string>();
    for (const name of await readdirSafe(locks)) {
      const match = /^([^.]+)\.(?:lock|use\.\d+\.[0-9a-f]+)$/.exec(name);
      if (!match) continue;
      const file = path.join(locks, name);
      if (!(await staleWriter(await lockWriter(file), file, LOCK_LEASE_MS))) held.add(match[1]!);
    }
    return held;
  }

  /**
   * What entries take on disk: per entry its bytes, the part of them in files hard-linked with
   * other files (shared with another entry: no extra space), the inodes (to count each once), and
   * when it was last used; `uniqueBytes` counts every inode once.
   */
  async usage(fingerprints: string[]): Promise<CacheUsage> {
    const entries = new Map<string, EntryUsage>();
    const inodes = new Map<string, number>();
    for (const fingerprint of fingerprints) {
      const dir = this.entryDir(fingerprint);
      const dirStat = await fs.stat(dir).catch(() => undefined);
      if (!dirStat) continue;
      const usage: EntryUsage = { bytes: 0, linkedBytes: 0, files: [], lastUsedMs: dirStat.mtimeMs };
      for (const rel of await listFiles(dir).catch(() => [])) {
        const st = await fs.lstat(path.join(dir, rel)).catch(() => undefined);
        if (!st) continue;
        const key = `${st.dev}:${st.ino}`;
        usage.bytes += st.size;
        if (st.nlink > 1) usage.linkedBytes += st.size;
        usage.files.push({ key, size: st.size });
        inodes.set(key, st.size);
      }
      entries.set(fingerprint, usage);
    }
    let uniqueBytes = 0;
    for (const size of inodes.values()) uniqueBytes += size;
    return { entries, uniqueBytes };
  }

  async discard(staging: Staging): Promise<void> {
    await fs.rm(staging.dir, { recursive: true, force: true });
  }

  /**
   * Waits until this process may compute `fingerprint`: another live process computing the same
   * entry holds its lock. Returns a release function. `onWait` is called once if we had to wait;
   * the wait ends with an error when `stopped` gives a reason (an interrupted run).
   */
  async lock(fingerprint: string, onWait?: (holder: LockInfo) => void, stopped?: () => string | undefined): Promise<() => Promise<void>> {
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
      const reason = stopped?.();
      if (reason) throw new StageError(`stopped while waiting for process ${holder.pid} on ${holder.host}: ${reason}`);
      await sleep(200);
    }
  }

  /**
   * What crashed or killed processes left behind: tmp/ directories (entries being written, entries
   * being removed) and lock files whose process no longer runs on this host, and those of other
   * hosts (a shared cache: their writers cannot be asked) untouched for a day, or for a lock, not
   * refreshed for its lease. Never anything of a live process of this host.
   */
  async findStale(): Promise<StaleItem[]> {
    return [...(await this.staleTmp()), ...(await this.staleLocks())];
  }

  /** Removes what findStale found (each renamed away first, as an entry is). */
  async removeStale(items: StaleItem[]): Promise<void> {
    for (const item of items) {
      const grave = `${item.path}.removing.${process.pid}`;
      try {
        await fs.rename(item.path, grave);
      } catch {
        continue; // removed or taken over meanwhile
      }
      await fs.rm(grave, { recursive: true, force: true });
    }
  }

  /** Removes stale tmp/ directories and locks; returns how many. */
  async cleanStale(): Promise<number> {
    const stale = await this.findStale();
    await this.removeStale(stale);
    return stale.length;
  }

  private async staleTmp(): Promise<StaleItem[]> {
    const tmp = path.join(this.root, 'tmp');
    const stale: StaleItem[] = [];
    for (const name of await readdirSafe(tmp)) {
      const file = path.join(tmp, name);
      const why = await staleWriter(tmpWriter(name), file, STALE_TMP_MS);
      if (why) stale.push({ kind: 'tmp', path: file, why });
    }
    return stale;
  }

  private async staleLocks(): Promise<StaleItem[]> {
    const locks = path.join(this.root, 'locks');
    const stale: StaleItem[] = [];
    for (const name of await readdirSafe(locks)) {
      const file = path.join(locks, name);
      // <fingerprint>.lock, or <fingerprint>.lock.stale.<pid>: a lock being taken over (or removed).
      const taker = /\.lock\.(?:stale|removing)\.(\d+)$/.exec(name);
      const writer = taker ? { pid: Number(taker[1]), host: hostTag() } : await lockWriter(file);
      const why = await staleWriter(writer, file, LOCK_LEASE_MS);
      if (why) stale.push({ kind: 'lock', path: file, why });
    }
    return stale;
  }

  /** The stages that have training checkpoints. */
  async listCheckpoints(): Promise<Array<{ fingerprint: string; dir: string }>> {
    const root = path.join(this.root, 'checkpoints');
    return (await readdirSafe(root)).map((fingerprint) => ({ fingerprint, dir: path.join(root, fingerprint) }));
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
    this.intact.delete(fingerprint);
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

/**
 * What to tell the user when `error` (thrown by a file operation) is about the cache at `root`:
 * which directory, why it cannot be written (a read-only file system, permissions, a file in the
 * way) and what to do. Undefined when the error is not about the cache.
 */
export async function cacheWriteProblem(root: string, error: unknown): Promise<string | undefined> {
  const { path: failed, code } = (error ?? {}) as NodeJS.ErrnoException;
  // A write to an open file (a log, an output) names no path: a full disk is still worth explaining.
  if (code === 'ENOSPC') {
    return `no space left on the device (writing into the cache ${root} or the workspace): free some space (\`pipe gc\` removes unused entries), or choose another cache with --cache DIR`;
  }
  if (typeof failed !== 'string' || !isInside(root, path.resolve(failed))) return undefined;
  const reason = (await whyNotWritable(root)) ?? (error as Error).message;
  return `cannot write to the cache ${root}: ${reason}. Make it a writable directory, or choose another with --cache DIR (or \`cache:\` in the pipeline file)`;
}

function isInside(dir: string, file: string): boolean {
  const rel = path.relative(dir, file);
  return rel === '' || (!rel.startsWith('..') && !path.isAbsolute(rel));
}

/** Why nothing can be created below `dir` (checked on the nearest part of it that exists). */
async function whyNotWritable(dir: string): Promise<string | undefined> {
  let existing = path.resolve(dir);
  let stat = await fs.stat(existing).catch(() => undefined);
  while (!stat && path.dirname(existing) !== existing) {
    existing = path.dirname(existing);
    stat = await fs.stat(existing).catch(() => undefined);
  }
  if (stat && !stat.isDirectory()) return `${existing} is a file, not a directory`;
  try {
    await fs.access(existing, fsConstants.W_OK);
    return undefined;
  } catch (error) {
    const code = (error as NodeJS.ErrnoException).code;
    if (code === 'EROFS') return `${existing} is on a read-only file system`;
    if (code === 'EACCES' || code === 'EPERM') return `permission denied on ${existing}`;
    return (error as Error).message;
  }
}

export interface EntryUsage {
  /** Bytes of the entry's files. */
  bytes: number;
  /** Of those, bytes in files with more than one link (e.g. split's links of the fetched pixels). */
  linkedBytes: number;
  /** Each file's inode (`dev:ino`) and size, to count a file shared by entries once. */
  files: Array<{ key: string; size: number }>;
  /** When the entry was last published, restored or read as an input (ms since the epoch). */
  lastUsedMs: number;
}

export interface CacheUsage {
  entries: Map<string, EntryUsage>;
  /** Bytes of all the entries' files, each inode once. */
  uniqueBytes: number;
}

/** Something a crashed or killed process left in the cache, and why it is known to be abandoned. */
export interface StaleItem {
  kind: 'tmp' | 'lock';
  path: string;
  why: string;
}

/** Another host's tmp/ directory untouched this long is abandoned. */
const STALE_TMP_MS = 86_400_000;

/** Which process wrote a tmp/ directory, from its name (undefined fields: not in the name). */
function tmpWriter(name: string): { pid?: number; host?: string } {
  // Anything being removed by removeStale: <name>.removing.<pid>.
  const removing = /\.removing\.(\d+)$/.exec(name);
  if (removing) return { pid: Number(removing[1]), host: hostTag() };
  const parts = name.split('.');
  // <key>.gc.<pid>.<nonce>: an entry (also a pruned one, <fingerprint>.pruned-<k>) or a stage's
  // checkpoints (<fingerprint>.checkpoints) being removed, by this host: its name has no host.
  const removed = /\.gc\.(\d+)\.[0-9a-f]+$/.exec(name);
  if (removed) return { pid: Number(removed[1]), host: hostTag() };
  // <fingerprint>.<pid>.<nonce>[.<host>] (older names have no host: this one's).
  const [, pidText, , ...host] = parts;
  return { pid: Number(pidText), host: host.length === 0 ? hostTag() : host.join('.') };
}

async function lockWriter(file: string): Promise<{ pid?: number; host?: string }> {
  const holder = await readLock(file);
  return holder ? { pid: holder.pid, host: holder.host === os.hostname() ? hostTag() : holder.host } : {};
}

/**
 * Why what `writer` left at `file` is abandoned, or undefined while it may be in use: its process
 * is dead (this host), or it was not touched for `maxAgeMs` (another host, or no known writer).
 */
async function staleWriter(writer: { pid?: number; host?: string }, file: string, maxAgeMs: number): Promise<string | undefined> {
  const local = writer.host === hostTag();
  if (local && writer.pid !== undefined && Number.isInteger(writer.pid) && writer.pid > 0) {
    return processAlive(writer.pid) ? undefined : `process ${writer.pid} is gone`;
  }
  const mtimeMs = (await fs.stat(file).catch(() => undefined))?.mtimeMs;
  if (mtimeMs === undefined) return undefined;
  const age = Date.now() - mtimeMs;
  if (age <= maxAgeMs) return undefined;
  return `${writer.host ? `written on ${writer.host}, ` : ''}untouched for ${Math.round(age / 60_000)} min`;
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

// ---- the verification stamp ----
//
// Hashing every file of every entry a run restores costs seconds per GB. As git's index and DVC's
// state database do, an entry keeps a stamp of its files' size, inode, mtime and ctime from the last
// time their hashes were checked; while they are all the same, the content is taken as checked. Any
// write to a file (a flipped byte included) changes its ctime, which nothing can set back. A file
// changed within STAMP_RACY_MS before the stamp was written could be changed again within the same
// clock tick without its times moving: such a stamp is not trusted (the entry is hashed and stamped
// again), as git does with racily clean entries — except the stamp written at publishing, when the
// stage process that wrote the files has exited and the staging directory is private.

const STAMP_FILE = 'verified.json';
const STAMP_RACY_MS = 2000;

interface Stamp {
  /** When the hashes were checked (ms since the epoch). */
  checkedAt: number;
  /** Written when the entry was published, when no writer was left (never racy). */
  settled?: boolean;
  /** Per file (as in checksums): size, inode, mtime and ctime in ns, as strings. */
  files: Record<string, [string, string, string, string]>;
}

async function statOf(file: string): Promise<[string, string, string, string] | undefined> {
  try {
    const st = await fs.stat(file, { bigint: true });
    return [String(st.size), String(st.ino), String(st.mtimeNs), String(st.ctimeNs)];
  } catch {
    return undefined;
  }
}

async function stampHolds(entryDir: string, files: string[]): Promise<boolean> {
  if (files.length === 0) return false;
  let stamp: Stamp;
  try {
    stamp = JSON.parse(await fs.readFile(path.join(entryDir, STAMP_FILE), 'utf8')) as Stamp;
  } catch {
    return false;
  }
  for (const file of files) {
    const now = await statOf(path.join(entryDir, file));
    const then = stamp.files?.[file];
    if (!now || !then || now.join() !== then.join()) return false;
    if (!stamp.settled && Number(BigInt(now[3]) / 1_000_000n) > stamp.checkedAt - STAMP_RACY_MS) return false;
  }
  return true;
}

/** Records the files' state after their hashes were checked; best effort (a read-only cache keeps none). */
async function writeStamp(entryDir: string, files: string[], settled = false): Promise<void> {
  const stamp: Stamp = { checkedAt: Date.now(), ...(settled ? { settled } : {}), files: {} };
  for (const file of files) {
    const st = await statOf(path.join(entryDir, file));
    if (!st) return;
    stamp.files[file] = st;
  }
  const tmp = path.join(entryDir, `.${STAMP_FILE}.${process.pid}.${randomBytes(4).toString('hex')}`);
  try {
    await fs.writeFile(tmp, JSON.stringify(stamp));
    await fs.rename(tmp, path.join(entryDir, STAMP_FILE));
  } catch {
    await fs.rm(tmp, { force: true }).catch(() => undefined);
  }
}

/** The files of an entry that are checked before it is used: its artifacts and its metrics. */
async function checksumsOf(entryDir: string): Promise<Record<string, FileChecksum>> {
  const files = (await listFiles(path.join(entryDir, 'out'))).map((rel) => `out/${rel}`);
  if (await exists(path.join(entryDir, 'metrics.jsonl'))) files.push('metrics.jsonl');
  const checksums: Record<string, FileChecksum> = {};
  for (const file of files) checksums[file] = await checksumOf(path.join(entryDir, file));
  return checksums;
}

async function checksumOf(file: string): Promise<FileChecksum> {
  const { size } = await fs.stat(file);
  return { size, sha256: await hashFile(file) };
}

async function exists(file: string): Promise<boolean> {
  return fs.access(file).then(() => true, () => false);
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
