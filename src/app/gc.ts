// `pipe gc`: removes cache entries that no pipeline references. Referenced are the entries of
// every stage of the project's pipelines (the files given, or pipelines/*.yaml) at their default
// params, and the latest entry of every stage recorded in runs/state (the last run with overrides,
// the trials of the last sweep). It also removes what crashed or killed processes left: their lock
// files and temporary (staging) directories, never those of a live process. `--dry-run` lists what
// would go.

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import type { CommandStatus, Io } from '../core/io.ts';
import type { CommandOptions } from './options.ts';
import { prepare } from './run.ts';
import { formatBytes } from '../util/format.ts';
import { diskUsage } from '../util/hash.ts';
import { projectPaths, openCache } from '../cache/project.ts';
import type { StaleItem } from '../cache/cache.ts';
import { readState } from '../plan/plan.ts';

export async function gcCommand(files: string[], values: CommandOptions, io: Io): Promise<CommandStatus> {
  const paths = projectPaths();
  if (values.cache) paths.cacheDir = path.resolve(values.cache);
  const cache = openCache(paths);
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

  const stale = await cache.findStale();
  for (const item of stale) {
    const name = path.relative(cache.root, item.path);
    io.out(`${values['dry-run'] ? 'would remove' : 'removed'} ${item.kind === 'lock' ? 'stale lock' : 'abandoned temporary directory'} ${name}  (${item.why})\n`);
  }
  if (!values['dry-run']) await cache.removeStale(stale);
  let totalBytes = 0;
  let removedBytes = 0;
  let removed = 0;
  const entries = await cache.list();
  // A pruned result (`<fingerprint>.pruned-<k>`) and a training checkpoint go with their stage.
  const kept = (key: string) => keep.has(key.replace(/\.pruned-\d+$/, ''));
  for (const { fingerprint } of entries) {
    const size = await cache.size(fingerprint);
    totalBytes += size;
    if (kept(fingerprint)) continue;
    const record = await cache.read(fingerprint);
    io.out(`${values['dry-run'] ? 'would remove' : 'removed'} ${fingerprint.slice(0, 10)}  ${(record?.record.kind ?? '?').padEnd(16)} ${formatBytes(size)}\n`);
    if (!values['dry-run']) await cache.remove(fingerprint);
    removed++;
    removedBytes += size;
  }
  for (const { fingerprint } of await cache.listCheckpoints()) {
    if (kept(fingerprint)) continue;
    const size = await diskUsage(cache.checkpointDir(fingerprint));
    io.out(`${values['dry-run'] ? 'would remove' : 'removed'} checkpoints of ${fingerprint.slice(0, 10)}  ${formatBytes(size)}\n`);
    if (!values['dry-run']) await cache.removeCheckpoints(fingerprint);
    removedBytes += size;
    totalBytes += size;
  }
  io.out(
    `cache ${cache.root}: ${entries.length} entries, ${formatBytes(totalBytes)}; ` +
      `${values['dry-run'] ? 'would remove' : 'removed'} ${removed} (${formatBytes(removedBytes)}), ` +
      `kept ${entries.length - removed} (${formatBytes(totalBytes - removedBytes)})` +
      `${stale.length ? `; ${values['dry-run'] ? 'would remove' : 'removed'} ${countOf(stale, 'lock', 'stale lock')} and ${countOf(stale, 'tmp', 'abandoned temporary directory', 'abandoned temporary directories')}` : ''}\n`,
  );
  return 'ok';
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
