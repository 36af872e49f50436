// `npm run bench -- --scale` (issue 16): the flagship pipeline on data sets of several sizes, and
// the sharded base pass on two one-core workers against one. bench/run.ts parses the options,
// probes the machine and hands over here; nothing else of the benchmark runs.
//
//   data      bench/work/<date>/scale-data/<N>/<class>/: N symlinks to the shared photos under new
//             names (`r003-cat.12.jpg`: the fourth replica of cat.12.jpg), the classes balanced
//   runs      for each size, `pipe run pipelines/mobilenet.yaml -p data=… -p views=1
//             -p initial_epochs=1 -p fine_tune_epochs=1 --no-track --json` in a fresh project
//             directory bench/work/<date>/scale-<N>/ (an empty cache): wall time, peak RSS of the
//             process tree, per-stage times and cache bytes from the run summary
//   shards    on one size (--scale-shard-size, default the smallest): the pipeline's stages up to
//             `features` (bench/work/<date>/scale-shards/base-pass.yaml) through a private Redis,
//             first on one `pipe worker --cpus 1` as one job, then (`--force features --shards 2`)
//             on two such workers, each pinned to a core of its own (`taskset -c`: the solo worker
//             to core 0, the two to cores 0 and 1) when taskset can; the pass's time and whether
//             the entry is the same, byte for byte
//
// Results: <out-dir>/<date>-scale.json and .md and <out-dir>/latest-scale.md, rewritten after every
// measurement (partial until the end).

import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { createReadStream } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, stat, symlink, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { parse as parseYaml, stringify as stringifyYaml } from 'yaml';
import type { RunSummary } from '../src/core/events.ts';
import { startPrivateRedis } from '../test/helpers/redis.ts';
import { SCALE, formatDuration, formatMb, type ScaleOptions } from './lib.ts';
import { loadAverage, timedRun, type TimedRun } from './proc.ts';
import type { Machine, ProcessFigures } from './report.ts';
import { renderScaleMarkdown, withScaleTargets, bytesPerImage, msPerImage, formatBytes, type ScaleResult, type ScaleRun, type ScaleSweep, type ShardPass, type ShardPassRun } from './scale-report.ts';
import { fromRepo } from './shared.ts';

const IMAGE = /\.(bmp|gif|jpe?g|png)$/i;

/** What the driver (bench/run.ts) hands over. */
export interface ScaleContext {
  root: string;
  stamp: string;
  workDir: string;
  logFile: string;
  outDir: string;
  data: string;
  weights: string;
  scale: ScaleOptions;
  epochs: { initial: number; fineTune: number };
  verbose: boolean;
  pipeBin: string;
  pipeline: string;
  pipeSource: ScaleResult['pipeSource'];
  env: NodeJS.ProcessEnv;
  machine: Machine;
  say: (line: string) => void;
  figures: (run: TimedRun) => ProcessFigures;
}

/** Runs the scale measurement; the result as it was last saved. */
export async function measureScale(ctx: ScaleContext): Promise<ScaleResult> {
  const params = [`weights=${ctx.weights}`, `views=${SCALE.views}`, `initial_epochs=${ctx.epochs.initial}`, `fine_tune_epochs=${ctx.epochs.fineTune}`];
  let result: ScaleResult = {
    format: 'pipe-bench-scale/1',
    date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
    partial: true,
    notes: [],
    machine: ctx.machine,
    inputs: {
      data: fromRepo(ctx.data),
      weights: fromRepo(ctx.weights),
      sizes: ctx.scale.sizes,
      ...(ctx.scale.shardSize !== undefined ? { shardSize: ctx.scale.shardSize } : {}),
      epochs: ctx.epochs,
      views: SCALE.views,
      params: params.map((p) => (p.startsWith('weights=') ? `weights=${fromRepo(ctx.weights)}` : p)),
    },
    pipeSource: ctx.pipeSource,
    runs: [],
    targets: [],
  };
  const base = path.join(ctx.outDir, `${ctx.stamp}-scale`);
  const save = async () => {
    result = withScaleTargets(result);
    await writeFile(`${base}.json`, `${JSON.stringify(result, null, 2)}\n`);
    await writeFile(`${base}.md`, renderScaleMarkdown(result));
    await copyFile(`${base}.md`, path.join(ctx.outDir, 'latest-scale.md'));
  };
  const step = async (name: string, body: () => Promise<void>) => {
    try {
      await body();
    } catch (error) {
      const message = `${name} failed: ${(error as Error).message}`;
      ctx.say(message);
      result.notes.push(message);
      process.exitCode = 1;
    }
    await save();
  };

  ctx.say(`scale: data sets of ${ctx.scale.sizes.join(', ')} images, ${ctx.epochs.initial} + ${ctx.epochs.fineTune} epochs, ${SCALE.views} view per image`);
  const dataSets = new Map<number, string>();
  for (const size of ctx.scale.sizes) {
    await step(`scale ${size}`, async () => {
      const data = await replicatedPhotos(ctx.data, path.join(ctx.workDir, 'scale-data', String(size)), size);
      dataSets.set(size, data);
      const run = await scaleRun(ctx, size, data, params);
      result.runs.push(run);
      if (run.status !== 'succeeded') throw new Error(`pipe exited ${run.exitCode} (${run.status}); see ${run.log}`);
    });
  }
  const shardSize = ctx.scale.shardSize;
  const shardData = shardSize === undefined ? undefined : dataSets.get(shardSize);
  if (shardSize !== undefined && shardData !== undefined) {
    await step('sharded pass', async () => {
      await shardPass(ctx, shardSize, shardData, params, (pass) => {
        result.shards = pass;
        return save();
      });
    });
  }
  const sweepSize = ctx.scale.sweepSize;
  const sweepData = sweepSize === undefined ? undefined : dataSets.get(sweepSize);
  if (sweepSize !== undefined && sweepData !== undefined) {
    const images = sweepSize;
    await step('sweep', async () => {
      result.sweep = await sweepBytes(ctx, images, sweepData);
      if (result.sweep.status !== 'succeeded') throw new Error(`pipe sweep: ${result.sweep.status}; see ${ctx.logFile}`);
    });
  }
  result.machine.loadAverage.end = loadAverage();
  result.partial = false;
  result.notes.push(
    'Peak RSS is the largest sum of resident set sizes over the process tree of `pipe run` (the CLI and its stage processes), sampled every 200 ms from /proc; tracking is off (`--no-track`), so no MLflow server runs.',
    'Wall time per image is the whole `pipe run` (start-up, planning, every stage, the summary) over the source images: fixed costs (process and TensorFlow start-ups, the weights) weigh more on a small data set.',
  );
  await save();
  for (const t of result.targets) ctx.say(`target ${t.pass ? 'pass' : 'MISS'}: ${t.label}: ${t.text}`);
  return result;
}

/**
 * `dir`/<class>/ holding `size` symlinks to the photos of `source`'s class folders, spread evenly
 * over the classes (the first ones get the remainder), each class's photos taken in sorted order
 * and again as replicas: `r000-<name>`, `r001-<name>`, …
 */
export async function replicatedPhotos(source: string, dir: string, size: number): Promise<string> {
  const classes = (await readdir(source, { withFileTypes: true })).filter((e) => e.isDirectory() && !e.name.startsWith('.')).map((e) => e.name).sort();
  if (classes.length === 0) throw new Error(`${source} has no class folders`);
  for (const [i, name] of classes.entries()) {
    const photos = (await readdir(path.join(source, name))).filter((f) => IMAGE.test(f)).sort();
    if (photos.length === 0) throw new Error(`${path.join(source, name)} has no images`);
    const count = Math.floor(size / classes.length) + (i < size % classes.length ? 1 : 0);
    const target = path.join(dir, name);
    await mkdir(target, { recursive: true });
    const present = new Set(await readdir(target));
    for (let k = 0; k < count; k++) {
      const photo = photos[k % photos.length]!;
      const link = `r${String(Math.floor(k / photos.length)).padStart(3, '0')}-${photo}`;
      if (!present.has(link)) await symlink(path.resolve(source, name, photo), path.join(target, link));
    }
  }
  return dir;
}

/** Parses `pipe run --json`'s stdout: the run summary. */
function runSummary(run: TimedRun, label: string): RunSummary {
  try {
    return JSON.parse(run.stdout) as RunSummary;
  } catch {
    throw new Error(`${label}: no run summary on stdout (exit ${run.exitCode}); see ${run.log}`);
  }
}

/** The pipeline on `size` images in a fresh project directory. */
async function scaleRun(ctx: ScaleContext, size: number, data: string, params: string[]): Promise<ScaleRun> {
  const project = path.join(ctx.workDir, `scale-${size}`);
  await mkdir(project, { recursive: true });
  const args = ['run', ctx.pipeline, '-p', `data=${data}`, ...params.flatMap((p) => ['-p', p]), '--no-track', '--json'];
  ctx.say(`scale ${size}: pipe ${args.map((a) => (path.isAbsolute(a) ? path.relative(ctx.root, a) : a)).join(' ')} (in ${path.relative(ctx.root, project)})`);
  const run = await timedRun([process.execPath, ctx.pipeBin, ...args], { cwd: project, env: ctx.env, logFile: ctx.logFile, echo: ctx.verbose });
  const summary = runSummary(run, `scale ${size}`);
  const figures: ScaleRun = {
    ...ctx.figures(run),
    images: size,
    projectDir: path.relative(ctx.root, project),
    status: run.exitCode === 0 ? summary.status : `${summary.status}, exit ${run.exitCode}`,
    stages: summary.stages.map((s) => ({
      name: s.name,
      kind: s.kind,
      status: s.status,
      durationS: s.durationMs / 1000,
      ...(s.cacheBytes !== undefined ? { cacheBytes: s.cacheBytes } : {}),
      summary: s.summary,
    })),
    ...(summary.cacheBytes !== undefined ? { cacheBytes: summary.cacheBytes } : {}),
    ...(summary.metrics['test_accuracy'] !== undefined ? { testAccuracy: summary.metrics['test_accuracy'] } : {}),
  };
  ctx.say(
    `scale ${size}: ${formatDuration(run.wallS)} (${msPerImage(figures).toFixed(1)} ms per image), ${summary.status}; ` +
      `peak RSS ${formatMb(run.memory.treeMb)} (largest process ${formatMb(run.memory.processMb)}); cache ${formatBytes(figures.cacheBytes)} (${formatBytes(bytesPerImage(figures))} per image)`,
  );
  return figures;
}

// ---- the cache of a sweep ----

/**
 * The flagship's 3 × 2 sweep from an empty cache on `data` (its default views, few epochs), and
 * the bytes its cache holds: each file once (by inode), by the kind of the entry it is in.
 */
async function sweepBytes(ctx: ScaleContext, images: number, data: string): Promise<ScaleSweep> {
  const project = path.join(ctx.workDir, `scale-sweep-${images}`);
  await mkdir(project, { recursive: true });
  const params = [`initial_epochs=${ctx.epochs.initial}`, `fine_tune_epochs=${ctx.epochs.fineTune}`];
  const args = ['sweep', ctx.pipeline, '-p', `data=${data}`, '-p', `weights=${ctx.weights}`, ...params.flatMap((p) => ['-p', p]), '--no-track', '--json'];
  ctx.say(`sweep ${images}: pipe ${args.map((a) => (path.isAbsolute(a) ? path.relative(ctx.root, a) : a)).join(' ')} (in ${path.relative(ctx.root, project)})`);
  const run = await timedRun([process.execPath, ctx.pipeBin, ...args], { cwd: project, env: ctx.env, logFile: ctx.logFile, echo: ctx.verbose });
  const usage = await cacheUsage(path.join(project, 'runs', 'cache'));
  const sweep: ScaleSweep = {
    ...ctx.figures(run),
    images,
    projectDir: path.relative(ctx.root, project),
    status: run.exitCode === 0 ? 'succeeded' : `exit ${run.exitCode}`,
    params,
    ...usage,
  };
  ctx.say(`sweep ${images}: ${sweep.status} in ${formatDuration(run.wallS)}; cache ${formatBytes(usage.cacheBytes)} in ${usage.entries} entries, ${formatBytes(usage.cacheBytes / images)} per source image`);
  return sweep;
}

/** Bytes under a cache directory, each inode once, by the kind in its entry's record.json. */
export async function cacheUsage(cacheDir: string): Promise<{ cacheBytes: number; byKind: Record<string, number>; entries: number }> {
  const seen = new Set<string>();
  const byKind: Record<string, number> = {};
  let cacheBytes = 0;
  let entries = 0;
  const walk = async (dir: string, kind: string): Promise<void> => {
    for (const e of await readdir(dir, { withFileTypes: true }).catch(() => [])) {
      const file = path.join(dir, e.name);
      if (e.isDirectory()) await walk(file, kind);
      else if (e.isFile()) {
        const st = await stat(file);
        const id = `${st.dev}:${st.ino}`;
        if (seen.has(id)) continue;
        seen.add(id);
        cacheBytes += st.size;
        byKind[kind] = (byKind[kind] ?? 0) + st.size;
      }
    }
  };
  const entriesDir = path.join(cacheDir, 'entries');
  for (const e of await readdir(entriesDir, { withFileTypes: true }).catch(() => [])) {
    if (!e.isDirectory()) continue;
    entries++;
    let kind = 'other';
    try {
      kind = (JSON.parse(await readFile(path.join(entriesDir, e.name, 'record.json'), 'utf8')) as { kind?: string }).kind ?? 'other';
    } catch {
      // an entry without its record: counted as other
    }
    await walk(path.join(entriesDir, e.name), kind);
  }
  for (const e of await readdir(cacheDir, { withFileTypes: true }).catch(() => [])) {
    if (e.name !== 'entries' && e.isDirectory()) await walk(path.join(cacheDir, e.name), 'other');
  }
  return { cacheBytes, byKind, entries };
}

// ---- the sharded pass ----

/** The flagship pipeline cut after `stage`: the stages it needs (transitively) and nothing else. */
export function pipelineUpTo(text: string, stage: string, name: string): string {
  const doc = parseYaml(text) as { name: string; stages: Record<string, { needs?: string[] | Record<string, string> }>; sweep?: unknown };
  const keep = new Set<string>();
  const visit = (s: string) => {
    if (keep.has(s)) return;
    const def = doc.stages[s];
    if (!def) throw new Error(`the pipeline has no stage ${s}`);
    keep.add(s);
    const needs = def.needs === undefined ? [] : Array.isArray(def.needs) ? def.needs : Object.values(def.needs);
    for (const up of needs) visit(up);
  };
  visit(stage);
  doc.name = name;
  doc.stages = Object.fromEntries(Object.entries(doc.stages).filter(([s]) => keep.has(s)));
  delete doc.sweep;
  return stringifyYaml(doc);
}

interface WorkerProcess {
  name: string;
  child: ChildProcess;
  output: () => string;
}

/**
 * Why the workers cannot be pinned to `cores` with taskset, or undefined when they can. taskset is
 * util-linux's, an essential package of Debian (always installed), yet a minimal system may lack
 * it; and a core beyond the machine's (or the cpuset's) makes taskset fail.
 */
export function unpinnable(cores: number[]): string | undefined {
  for (const core of cores) {
    const probe = spawnSync('taskset', ['-c', String(core), 'true'], { encoding: 'utf8' });
    if ((probe.error as NodeJS.ErrnoException | undefined)?.code === 'ENOENT') return 'taskset not found: it comes with util-linux';
    if (probe.error || probe.status !== 0) return `\`taskset -c ${core}\` failed: ${(probe.error?.message ?? probe.stderr).trim()}`;
  }
  return undefined;
}

/**
 * A `pipe worker --cpus 1`; with `core`, pinned to that core (taskset execs the worker: the child
 * is the worker itself, and its stage processes inherit the pinning).
 */
function startWorker(ctx: ScaleContext, name: string, queue: string, cache: string, dir: string, core?: number): WorkerProcess {
  const worker = [process.execPath, ctx.pipeBin, 'worker', '--queue', queue, '--cache', cache, '--cpus', '1', '--name', name];
  const [command, ...args] = core === undefined ? worker : ['taskset', '-c', String(core), ...worker];
  const child = spawn(command!, args, {
    cwd: dir,
    env: ctx.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let text = '';
  const collect = (d: Buffer) => (text += d.toString());
  child.stdout?.on('data', collect);
  child.stderr?.on('data', collect);
  return { name, child, output: () => text };
}

async function waitForWorkers(workers: WorkerProcess[], timeoutMs = 120_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!workers.every((w) => /taking stage jobs/.test(w.output()))) {
    const dead = workers.find((w) => w.child.exitCode !== null);
    if (dead) throw new Error(`pipe worker ${dead.name} exited ${dead.child.exitCode}: ${dead.output()}`);
    if (Date.now() > deadline) throw new Error(`the workers did not start: ${workers.map((w) => w.output()).join('\n')}`);
    await new Promise((r) => setTimeout(r, 200));
  }
}

/** SIGTERM (finish the running jobs, then leave) and wait; their output goes to the log. */
async function stopWorkers(workers: WorkerProcess[], logFile: string): Promise<void> {
  await Promise.all(
    workers.map(async (w) => {
      if (w.child.exitCode === null && w.child.signalCode === null) {
        const exited = new Promise<void>((r) => w.child.once('close', () => r()));
        w.child.kill('SIGTERM');
        await exited;
      }
      await writeFile(logFile, `--- pipe worker ${w.name}\n${w.output()}\n`, { flag: 'a' });
    }),
  );
}

/** sha256 of every file under `dir`, by relative path, sorted; and their bytes. */
async function fileHashes(dir: string): Promise<{ hashes: [string, string][]; bytes: number }> {
  const hashes: [string, string][] = [];
  let bytes = 0;
  const walk = async (rel: string) => {
    for (const e of (await readdir(path.join(dir, rel), { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const child = path.join(rel, e.name);
      if (e.isDirectory()) await walk(child);
      else {
        const file = path.join(dir, child);
        bytes += (await stat(file)).size;
        const hash = createHash('sha256');
        for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
        hashes.push([child, hash.digest('hex')]);
      }
    }
  };
  await walk('');
  return { hashes, bytes };
}

/**
 * The base pass on one `--cpus 1` worker as one job, then on two as two shards (`--force
 * fetch`: fetch's decoding is sharded too, and timed beside), in a shared cache of its own; `update` is called with the figures after each pass.
 * `--cpus 1` holds a worker's TensorFlow to one thread, but alone on this machine its augmentation
 * threads and reads would still run on an idle core, which two workers do not leave: so each worker
 * is pinned to one core (the solo worker to core 0, the two to cores 0 and 1), as on one-core
 * machines; without taskset they run unpinned, and the report says so.
 */
async function shardPass(ctx: ScaleContext, size: number, data: string, params: string[], update: (pass: ShardPass) => Promise<void>): Promise<void> {
  const dir = path.join(ctx.workDir, 'scale-shards');
  const cache = path.join(dir, 'cache');
  await mkdir(cache, { recursive: true });
  const file = path.join(dir, 'base-pass.yaml');
  await writeFile(file, pipelineUpTo(await readFile(ctx.pipeline, 'utf8'), 'features', 'mobilenet-base-pass'));
  // the head's and fine-tuning's epochs are not params of the base pass
  const passParams = params.filter((p) => !/^(initial|fine_tune)_epochs=/.test(p));
  const threadsEnv = ['TF_NUM_INTRAOP_THREADS', 'TF_NUM_INTEROP_THREADS'].filter((v) => ctx.env[v] !== undefined).map((v) => `${v}=${ctx.env[v]} in the environment`).join(', ');
  const unpinned = unpinnable([0, 1]);
  ctx.say(unpinned ? `shards: the workers run unpinned (${unpinned})` : 'shards: each worker pinned to one core (taskset -c)');
  const redis = await startPrivateRedis();
  let workers: WorkerProcess[] = [];
  try {
    const pass = async (names: string[], shards: number, extra: string[]): Promise<ShardPassRun> => {
      await stopWorkers(workers, ctx.logFile);
      workers = [];
      // Worker k on core k: the solo worker on core 0, the shards' on cores 0 and 1.
      const cores = unpinned ? undefined : names.map((_, k) => k);
      for (const [k, name] of names.entries()) {
        const workerDir = path.join(dir, `worker-${name}`);
        await mkdir(workerDir, { recursive: true });
        workers.push(startWorker(ctx, name, redis.url, cache, workerDir, cores?.[k]));
      }
      await waitForWorkers(workers);
      const label = `shards: ${names.length} worker${names.length === 1 ? '' : 's'}, ${shards} job${shards === 1 ? '' : 's'}`;
      const args = ['run', file, '-p', `data=${data}`, ...passParams.flatMap((p) => ['-p', p]), '--queue', redis.url, '--cache', cache, '--shards', String(shards), '--no-track', '--json', ...extra];
      ctx.say(`${label}: pipe ${args.map((a) => (path.isAbsolute(a) ? path.relative(ctx.root, a) : a)).join(' ')}`);
      const run = await timedRun([process.execPath, ctx.pipeBin, ...args], { cwd: dir, env: ctx.env, logFile: ctx.logFile, echo: ctx.verbose });
      const summary = runSummary(run, label);
      const features = summary.stages.find((s) => s.name === 'features');
      if (run.exitCode !== 0 || summary.status !== 'succeeded' || !features) {
        throw new Error(`${label}: pipe exited ${run.exitCode} (${summary.status}); see ${run.log}\n${workers.map((w) => w.output()).join('\n')}`);
      }
      const fetch = summary.stages.find((s) => s.name === 'fetch' && s.status === 'ran');
      ctx.say(
        `${label}: ${fetch ? `fetch ${formatDuration(fetch.durationMs / 1000)} (${fetch.worker ?? '?'}), ` : ''}` +
          `features ${formatDuration(features.durationMs / 1000)} (${features.worker ?? '?'}), the whole submit ${formatDuration(run.wallS)}`,
      );
      return {
        ...ctx.figures(run),
        workers: names,
        ...(cores ? { cores } : {}),
        shards,
        featuresS: features.durationMs / 1000,
        ...(features.worker ? { worker: features.worker } : {}),
        fingerprint: features.fingerprint,
        ...(fetch ? { fetch: { seconds: fetch.durationMs / 1000, ...(fetch.worker ? { worker: fetch.worker } : {}), fingerprint: fetch.fingerprint } } : {}),
      };
    };
    const one = await pass(['solo'], 1, []);
    const entry = path.join(cache, 'entries', one.fingerprint, 'out');
    const before = await fileHashes(entry);
    const result: ShardPass = { images: size, one, files: before.hashes.length, bytes: before.bytes, threadsEnv, ...(unpinned ? { unpinned } : {}) };
    await update(result);
    const fetchEntry = (p: ShardPassRun) => path.join(cache, 'entries', p.fetch!.fingerprint, 'out');
    const fetchBefore = one.fetch ? await fileHashes(fetchEntry(one)) : undefined;
    // Every stage again (`--force fetch`): fetch's decoding and the base pass both in shards.
    const two = await pass(['w1', 'w2'], 2, ['--force', 'fetch']);
    const after = await fileHashes(path.join(cache, 'entries', two.fingerprint, 'out'));
    result.two = two;
    result.identical = two.fingerprint === one.fingerprint && JSON.stringify(after.hashes) === JSON.stringify(before.hashes);
    ctx.say(`shards: two / one = ${(two.featuresS / one.featuresS).toFixed(3)}; the same entry, byte for byte: ${result.identical ? 'yes' : 'NO'}`);
    if (fetchBefore && one.fetch && two.fetch) {
      const fetchAfter = await fileHashes(fetchEntry(two));
      result.fetchIdentical = two.fetch.fingerprint === one.fetch.fingerprint && JSON.stringify(fetchAfter.hashes) === JSON.stringify(fetchBefore.hashes);
      ctx.say(`shards: fetch two / one = ${(two.fetch.seconds / one.fetch.seconds).toFixed(3)}; the same entry, byte for byte: ${result.fetchIdentical ? 'yes' : 'NO'}`);
    }
    await update(result);
  } finally {
    await stopWorkers(workers, ctx.logFile);
    await redis.stop();
  }
}
