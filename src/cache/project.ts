// Where a project keeps its things. The project is the directory `pipe` runs in; everything it
// writes lives under its `runs/` (git-ignored): the cache, per-pipeline state, run directories,
// downloads and the embedded MLflow store.

import { randomBytes } from 'node:crypto';
import * as path from 'node:path';
import { Cache } from './cache.ts';

export interface ProjectPaths {
  projectDir: string;
  runsDir: string;
  cacheDir: string;
  stateDir: string;
  downloadsDir: string;
}

export function projectPaths(projectDir = process.cwd()): ProjectPaths {
  const runsDir = path.resolve(projectDir, process.env['PIPE_RUNS_DIR'] ?? 'runs');
  return {
    projectDir: path.resolve(projectDir),
    runsDir,
    cacheDir: path.resolve(projectDir, process.env['PIPE_CACHE_DIR_ARTIFACTS'] ?? path.join(runsDir, 'cache')),
    stateDir: path.join(runsDir, 'state'),
    downloadsDir: path.resolve(process.env['PIPE_DOWNLOAD_CACHE'] ?? path.join(runsDir, 'downloads')),
  };
}

export function openCache(paths: ProjectPaths): Cache {
  return new Cache(paths.cacheDir);
}

export function statePath(paths: ProjectPaths, pipelineName: string): string {
  return path.join(paths.stateDir, `${pipelineName}.json`);
}

export function hashIndexPath(paths: ProjectPaths): string {
  return path.join(paths.stateDir, 'hashes.json');
}

/** A sortable, unique run id: 20261128-031502-a1b2. */
export function newRunId(now = new Date()): string {
  const pad = (n: number) => String(n).padStart(2, '0');
  const stamp = `${now.getUTCFullYear()}${pad(now.getUTCMonth() + 1)}${pad(now.getUTCDate())}-${pad(now.getUTCHours())}${pad(now.getUTCMinutes())}${pad(now.getUTCSeconds())}`;
  return `${stamp}-${randomBytes(2).toString('hex')}`;
}
