// `pipe gc`: removes cache entries that no pipeline references. Referenced are the entries of
// every stage of the project's pipelines (the files given, or pipelines/*.yaml) at their default
// params, and the latest entry of every stage recorded in runs/state (the last run with overrides,
// the trials of the last sweep). It also removes what crashed or killed processes left: their lock
// files and temporary (staging) directories, never those of a live process. `--dry-run` lists what
// would go. `--max-size SIZE` then removes the least recently used entries (referenced or not)
// until the cache fits in SIZE. An entry a live process holds (computing it, or a running stage
// reading it) is never removed. Sizes count a file shared by entries (hard links) once.

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { CommandStatus, Io } from '../core/io.ts';
import type { CommandOptions } from './options.ts';
import { prepare } from './run.ts';
import { formatBytes, parseBytes } from '../util/format.ts';
import { diskUsage } from '../util/hash.ts';
import { UsageError } from '../core/errors.ts';
import { projectPaths, openCache } from '../cache/project.ts';
import type { CacheUsage, StaleItem } from '../cache/cache.ts';
import { readState } from '../plan/plan.ts';

export async function gcCommand(files: string[], values: CommandOptions, io: Io): Promise<CommandStatus> {
  const paths = projectPaths();
  if (values.cache) paths.cacheDir = path.resolve(values.cache);
  const cache = openCache(paths);
  const maxSize = values['max-size'] === undefined ? undefined : parseBytes(values['max-size']);
  if (values['max-size'] !== undefined && maxSize === undefined) {
    throw new UsageError(`--max-size ${values['max-size']}: expected a size such as 50GB, 500MB or 1.5TB`);
  }
  const pipelineFiles = files.length > 0 ? files : await defaultPipelines(paths.projectDir);
  const keep = new Set<string>();
  for (const file of pipelineFiles) {
    const prepared = await prepare(file, { ...values, param: [], force: [] }, io);
    if (!prepared) {
      io.err(`pipe gc: ${file} is invalid; nothing removed (fix it or name the pipelines to keep)\n`);
      return 'invalid';
    }
    for (const stage of prepared.plan.stages) keep.add(stage.fingerprint);
  }
  for (const name of await readdirSafe(paths.stateDir)) {
    if (!name.endsWith('.json') || name === 'hashes.json') continue;
    const state = await readState(path.join(paths.stateDir, name));
    for (const entry of Object.values(state.stages ?? {})) keep.add(entry.fingerprint);
    for (const fp of (state as { keep?: string[] }).keep ?? []) keep.add(fp);
  }

  const verb = values['dry-run'] ? 'would remove' : 'removed';
  // A pruned result (`<fingerprint>.pruned-<k>`) and a training checkpoint go with their stage.
  const kept = (key: string) => keep.has(key.replace(/\.pruned-\d+$/, ''));

  const stale = await cache.findStale();
  for (const item of stale) {
    const name = path.relative(cache.root, item.path);
    io.out(`${verb} ${item.kind === 'lock' ? 'stale lock' : 'abandoned temporary directory'} ${name}  (${item.why})\n`);
  }
  if (!values['dry-run']) await cache.removeStale(stale);

  const entries = await cache.list();
  const usage = await cache.usage(entries.map((e) => e.fingerprint));
  const space = new SharedSpace(usage);
  const totalBytes = usage.uniqueBytes;
  // Entries a live process holds (being computed, or read by a running stage) are never removed.
  const held = await cache.held();
  let inUse = 0;
  const removed: string[] = [];
  const remove = async (fingerprint: string, why: string) => {
    const record = await cache.read(fingerprint);
    const freed = space.remove(fingerprint);
    io.out(`${verb} ${fingerprint.slice(0, 10)}  ${(record?.record.kind ?? '?').padEnd(16)} ${formatBytes(freed).padStart(9)}${why}\n`);
    if (!values['dry-run']) await cache.remove(fingerprint);
    removed.push(fingerprint);
  };
  for (const { fingerprint } of entries) {
    if (kept(fingerprint)) continue;
    if (held.has(fingerprint)) {
      inUse++;
      continue;
    }
    await remove(fingerprint, '');
  }
  // Checkpoints of learning stages no pipeline keeps (a sweep's trials stopped or killed mid-way).
  let checkpointBytes = 0;
  let checkpointsRemoved = 0;
  for (const { fingerprint } of await cache.listCheckpoints()) {
    const size = await diskUsage(cache.checkpointDir(fingerprint));
    checkpointBytes += size;
    if (kept(fingerprint)) continue;
    io.out(`${verb} checkpoints of ${fingerprint.slice(0, 10)}  ${formatBytes(size)}\n`);
    if (!values['dry-run']) await cache.removeCheckpoints(fingerprint);
    checkpointsRemoved += size;
  }
  // Over the size budget: the least recently used entries go first, referenced or not.
  let overBudget = false;
  if (maxSize !== undefined) {
    const byAge = entries
      .filter((e) => !removed.includes(e.fingerprint) && usage.entries.has(e.fingerprint))
      .sort((a, b) => usage.entries.get(a.fingerprint)!.lastUsedMs - usage.entries.get(b.fingerprint)!.lastUsedMs);
    for (const { fingerprint } of byAge) {
      if (space.bytes <= maxSize) break;
      if (held.has(fingerprint)) {
        inUse++;
        continue;
      }
      const lastUsed = new Date(usage.entries.get(fingerprint)!.lastUsedMs).toISOString().slice(0, 16).replace('T', ' ');
      await remove(fingerprint, `  (over --max-size; last used ${lastUsed} UTC)`);
    }
    overBudget = space.bytes > maxSize;
  }
  const keptCount = entries.length - removed.length;
  io.out(
    `cache ${cache.root}: ${entries.length} entries, ${formatBytes(totalBytes)}; ` +
      `${verb} ${removed.length} (${formatBytes(totalBytes - space.bytes)}), ` +
      `kept ${keptCount} (${formatBytes(space.bytes)})` +
      `${stale.length ? `; ${verb} ${countOf(stale, 'lock', 'stale lock')} and ${countOf(stale, 'tmp', 'abandoned temporary directory', 'abandoned temporary directories')}` : ''}\n`,
  );
  if (checkpointBytes > 0) {
    io.out(`checkpoints: ${formatBytes(checkpointBytes)}; ${verb} ${formatBytes(checkpointsRemoved)}, kept ${formatBytes(checkpointBytes - checkpointsRemoved)}\n`);
  }
  if (inUse > 0) io.out(`left ${inUse} ${inUse === 1 ? 'entry' : 'entries'} alone that running stages hold\n`);
  if (overBudget) io.out(`still over --max-size ${formatBytes(maxSize!)}: what is left is held by running stages\n`);
  return 'ok';
}

/**
 * The space entries take when files may be shared between them (hard links): removing an entry
 * frees only the files no remaining entry shares.
 */
class SharedSpace {
  bytes: number;
  private readonly refs = new Map<string, number>();

  constructor(private readonly usage: CacheUsage) {
    this.bytes = usage.uniqueBytes;
    for (const entry of usage.entries.values()) {
      for (const file of entry.files) this.refs.set(file.key, (this.refs.get(file.key) ?? 0) + 1);
    }
  }

  /** Forgets an entry; returns the bytes that frees. */
  remove(fingerprint: string): number {
    let freed = 0;
    for (const file of this.usage.entries.get(fingerprint)?.files ?? []) {
      const left = (this.refs.get(file.key) ?? 1) - 1;
      this.refs.set(file.key, left);
      if (left === 0) freed += file.size;
    }
    this.bytes -= freed;
    return freed;
  }
}

function countOf(items: StaleItem[], kind: StaleItem['kind'], one: string, many = `${one}s`): string {
  const n = items.filter((item) => item.kind === kind).length;
  return `${n} ${n === 1 ? one : many}`;
}

async function defaultPipelines(projectDir: string): Promise<string[]> {
  const dir = path.join(projectDir, 'pipelines');
  return (await readdirSafe(dir)).filter((n) => /\.ya?ml$/.test(n)).sort().map((n) => path.join('pipelines', n));
}

async function readdirSafe(dir: string): Promise<string[]> {
  try {
    return await fs.readdir(dir);
  } catch {
    return [];
  }
}
