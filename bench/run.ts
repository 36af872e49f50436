// `npm run bench`: pipe against the Keras recipe, on the same machine, in the same run, from the
// same data folder and weights file (issues 6 and 11). One measurement after the other, never two
// at once:
//
//   keras       bench/keras_recipe.py, the whole recipe (bench/.venv, see bench/setup-keras.sh)
//   pipe        `pipe run pipelines/mobilenet.yaml` on an empty cache
//   graph       bench/graph_rates.py: TensorFlow in graph mode (tf.function) on this machine, the
//               base forward and a fine-tuning step over the top, images/s; against the cold run's
//               `features` (extract_images_per_second) and `fine-tune` (fine_tune_images_per_second)
//   refit       the same as `pipe` with only fine_tune_at changed (--refit-at, default 120), in its cache
//   lr          the same as `pipe` with only the fine-tuning learning rate changed (--lr, default
//               0.00003; fine_tune_at stays 100), in the cache of the runs above
//   warm        the same as `pipe` again, nothing changed
//   sweep       `pipe sweep` (3 fine_tune_at × 2 learning rates) in a project directory of its own:
//               from an empty cache; the six Keras runs are 6 × the measured one (--keras-sweep)
//   throughput  bench/probe.ts with the weights: the base's images/s through pipe's code path
//
// bench/probe.ts always runs first (backend, libtensorflow, matmul GFLOP/s, FLOPs per forward).
// The pipe runs go to a fresh project directory bench/work/<date>/project (its own runs/: cache,
// state, run directories and the embedded MLflow store), so the first one's cache is cold and
// nothing of the repository's own runs/ is touched; the sweep to bench/work/<date>/sweep-project.
// Results go to <out-dir>/<date>.json and .md and <out-dir>/latest.md, rewritten after every
// measurement (marked partial until the end).
//
//   npm run bench -- [--data DIR] [--weights FILE] [--out-dir DIR] [--only LIST | --skip LIST]
//                    [--limit N] [--epochs I,F] [--keras-sweep measure|extrapolate] [--refit-at N]
//                    [--lr RATE] [--graph-seconds S] [--worktree] [--verbose]
//
// `--scale` measures something else, alone (bench/scale.ts, issue 16): the pipeline on data sets of
// --scale-sizes images (default 3000,12000,48000) and the sharded base pass on two one-core
// workers against one; results in <out-dir>/<date>-scale.json and .md and latest-scale.md.
//
//   npm run bench -- --scale [--scale-sizes LIST] [--scale-shard-size N|none] [--scale-sweep-size N|none] [--data DIR]
//                    [--weights FILE] [--out-dir DIR] [--epochs I,F] [--worktree] [--verbose]

import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync, statSync } from 'node:fs';
import { copyFile, mkdir, readdir, readFile, rename, rm, symlink, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { DEFAULTS, MEASUREMENTS, PIPELINE, SCALE, parseBenchOptions, formatDuration, type BenchOptions } from './lib.ts';
import { measureScale } from './scale.ts';
import { fromRepo } from './shared.ts';
import { timedRun, loadAverage, type TimedRun } from './proc.ts';
import {
  renderMarkdown,
  withTargets,
  type BenchResult,
  parseGraphRates,
  type GraphRates,
  type KerasRun,
  type PipeRun,
  type PipeSweep,
  type Probe,
  type ProcessFigures,
  type StageFigures,
  type SweepTrial,
} from './report.ts';

const root = path.resolve(fileURLToPath(new URL('..', import.meta.url)));
const kerasPython = path.join(root, 'bench', '.venv', 'bin', 'python');
const kerasScript = path.join(root, 'bench', 'keras_recipe.py');
const graphScript = path.join(root, 'bench', 'graph_rates.py');
const IMAGE = /\.(bmp|gif|jpe?g|png)$/i;

const USAGE = `npm run bench -- [options]

  --data DIR            the photos (default ${fromRepo(DEFAULTS.data)}, beside the repository)
  --weights FILE        MobileNetV2 no-top .h5 (default ${fromRepo(DEFAULTS.weights)})
  --out-dir DIR         where the results go (default bench/results)
  --only LIST           run only these of ${MEASUREMENTS.join(',')}
  --skip LIST           run all but these
  --limit N             the first N images of each class (a copied folder both sides read): smoke runs
  --epochs I,F          initial and fine-tune epochs for both sides (default 10,10: 10 + 11 as the recipe)
  --keras-sweep MODE    extrapolate (default: 6 × the measured Keras run) or measure (5 more Keras runs)
  --refit-at N          fine_tune_at of the refit run (default ${DEFAULTS.refitAt}; ${PIPELINE.lowestFineTuneAt}–153, not ${PIPELINE.fineTuneAt})
  --lr RATE             fine-tuning learning rate of the lr run (default ${DEFAULTS.lr}; the pipeline's is ${PIPELINE.fineTuneLearningRate})
  --graph-seconds S     seconds each TF graph-mode rate is timed over (default ${DEFAULTS.graphSeconds})
  --worktree            run pipe from the working tree as it is (default: from an export of the
                        committed HEAD under bench/work/, so that uncommitted edits do not leak in)
  --verbose             echo the commands' output

  --scale               only the scale measurement (issue 16): the pipeline (views ${SCALE.views}, epochs
                        ${SCALE.epochs.initial},${SCALE.epochs.fineTune} unless --epochs) on data sets of the photos replicated
                        as symlinks, then the sharded base pass on two one-core workers against one
  --scale-sizes LIST    images per data set (default ${SCALE.sizes.join(',')}; at least ${SCALE.minSize})
  --scale-shard-size N  the data set of the sharded pass (default the smallest; none: no sharded pass)
  --scale-sweep-size N  the data set of the 3 × 2 sweep whose cache is measured (default the smallest; none: no sweep)
`;

function fail(message: string): never {
  process.stderr.write(`bench: ${message}\n`);
  process.exit(2);
}

function say(line: string): void {
  process.stdout.write(`[bench ${new Date().toISOString().slice(11, 19)}] ${line}\n`);
}

function parseCli(): BenchOptions & { worktree: boolean } {
  let parsed;
  try {
    parsed = parseArgs({
      options: {
        data: { type: 'string' },
        weights: { type: 'string' },
        'out-dir': { type: 'string' },
        only: { type: 'string' },
        skip: { type: 'string' },
        limit: { type: 'string' },
        epochs: { type: 'string' },
        'keras-sweep': { type: 'string' },
        'refit-at': { type: 'string' },
        lr: { type: 'string' },
        'graph-seconds': { type: 'string' },
        scale: { type: 'boolean' },
        'scale-sizes': { type: 'string' },
        'scale-shard-size': { type: 'string' },
        'scale-sweep-size': { type: 'string' },
        verbose: { type: 'boolean' },
        worktree: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
      strict: true,
      allowPositionals: false,
    });
  } catch (error) {
    fail(`${(error as Error).message}\n\n${USAGE}`);
  }
  if (parsed.values.help) {
    process.stdout.write(USAGE);
    process.exit(0);
  }
  const { worktree, ...raw } = parsed.values;
  const result = parseBenchOptions(raw);
  if ('problems' in result) fail(result.problems.join('\n       '));
  const o = result.options;
  o.data = path.resolve(o.data);
  o.weights = path.resolve(o.weights);
  o.outDir = path.resolve(root, o.outDir);
  const problems: string[] = [];
  if (!existsSync(o.data) || !statSync(o.data).isDirectory()) problems.push(`--data: ${o.data} is not a directory`);
  if (!existsSync(o.weights) || !statSync(o.weights).isFile()) problems.push(`--weights: ${o.weights} is not a file`);
  if ((o.only.has('keras') || o.only.has('graph')) && !existsSync(kerasPython)) problems.push(`${kerasPython} is missing: run bench/setup-keras.sh first`);
  if (problems.length > 0) fail(problems.join('\n       '));
  return { ...o, worktree: Boolean(worktree) };
}

function cpuModel(): string {
  try {
    const line = readFileSync('/proc/cpuinfo', 'utf8').split('\n').find((l) => l.startsWith('model name'));
    return line?.split(':')[1]?.trim() ?? os.cpus()[0]?.model ?? 'unknown';
  } catch {
    return os.cpus()[0]?.model ?? 'unknown';
  }
}

/**
 * A copy of `source` holding, in every folder of images, only its first `limit` images (sorted).
 * Copies, not symlinks: pipe's image listing (src/ml/images.ts) takes regular files only.
 */
async function limitedCopy(source: string, target: string, limit: number): Promise<void> {
  await mkdir(target, { recursive: true });
  const entries = (await readdir(source, { withFileTypes: true })).sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  let images = 0;
  for (const e of entries) {
    const from = path.join(source, e.name);
    if (e.isDirectory()) await limitedCopy(from, path.join(target, e.name), limit);
    else if (IMAGE.test(e.name) && images < limit) {
      await copyFile(from, path.join(target, e.name));
      images++;
    }
  }
}

function figures(run: TimedRun): ProcessFigures {
  return {
    command: run.command.map((a) => (a === process.execPath ? 'node' : path.isAbsolute(a) && a.startsWith(root) ? path.relative(root, a) : a)).join(' '),
    wallS: run.wallS,
    exitCode: run.exitCode,
    startedAt: run.startedAt,
    loadAverage: run.loadAverage,
    memory: run.memory,
    log: path.relative(root, run.log),
  };
}

function lastJsonLine<T>(stdout: string): T {
  const line = stdout.trim().split('\n').pop() ?? '';
  return JSON.parse(line) as T;
}

/**
 * The pipe that is measured: the committed HEAD, exported (git archive) once per commit to
 * bench/work/pipe-<commit>/ with the repository's node_modules linked in, or the working tree.
 */
async function pipeSource(worktree: boolean): Promise<{ dir: string; commit: string; dirty: boolean; from: 'HEAD' | 'working tree' }> {
  const git = (...args: string[]) => execFileSync('git', args, { cwd: root, encoding: 'utf8' }).trim();
  const commit = git('rev-parse', 'HEAD');
  const dirty = git('status', '--porcelain', '--untracked-files=no', '--', 'src', 'bin', 'pipelines').length > 0;
  if (worktree) return { dir: root, commit, dirty, from: 'working tree' };
  const dir = path.join(root, 'bench', 'work', `pipe-${commit.slice(0, 12)}`);
  if (!existsSync(dir)) {
    const tmp = `${dir}.tmp-${process.pid}`;
    await rm(tmp, { recursive: true, force: true });
    await mkdir(tmp, { recursive: true });
    execFileSync('sh', ['-c', `git archive --format=tar HEAD | tar -x -C '${tmp}'`], { cwd: root });
    await symlink(path.join(root, 'node_modules'), path.join(tmp, 'node_modules'));
    await rename(tmp, dir);
  }
  return { dir, commit, dirty, from: 'HEAD' };
}

// ---- the driver ----

const options = parseCli();
const stamp = new Date().toISOString().replace(/[-:]/g, '').replace(/\..*/, 'Z');
const workDir = path.join(root, 'bench', 'work', stamp);
const projectDir = path.join(workDir, 'project');
// the sweep's own project directory: its cache starts empty
const sweepProjectDir = path.join(workDir, 'sweep-project');
const logFile = path.join(workDir, 'bench.log');
await mkdir(options.scale ? workDir : projectDir, { recursive: true });
await mkdir(options.outDir, { recursive: true });

const source = await pipeSource(options.worktree);
const pipeline = path.join(source.dir, 'pipelines', 'mobilenet.yaml');
const pipeBin = path.join(source.dir, 'bin', 'pipe.js');
const epochs = options.epochs ?? { initial: 10, fineTune: 10 };
let data = options.data;
if (options.limit !== undefined && !options.scale) {
  data = path.join(workDir, `data-limit-${options.limit}`);
  await limitedCopy(options.data, data, options.limit);
}

let result: BenchResult = {
  format: 'pipe-bench/2',
  date: new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
  partial: true,
  notes: [],
  machine: {
    cores: os.cpus().length,
    cpuModel: cpuModel(),
    ramGiB: Math.round(os.totalmem() / 2 ** 30),
    os: `${os.type()} ${os.release()}`,
    node: process.versions.node,
    loadAverage: { start: loadAverage() },
  },
  inputs: { data: fromRepo(options.data), weights: fromRepo(options.weights), ...(options.limit ? { limit: options.limit } : {}), epochs },
  options: { only: [...options.only], kerasSweep: options.kerasSweep, refitAt: options.refitAt, lr: options.lr, graphSeconds: options.graphSeconds },
  pipeSource: { commit: source.commit, from: source.from, dirty: source.dirty, dir: path.relative(root, source.dir) || '.' },
  targets: [],
};

async function save(): Promise<void> {
  result = withTargets(result);
  const base = path.join(options.outDir, stamp);
  await writeFile(`${base}.json`, `${JSON.stringify(result, null, 2)}\n`);
  await writeFile(`${base}.md`, renderMarkdown(result));
  await copyFile(`${base}.md`, path.join(options.outDir, 'latest.md'));
}

const env = { ...process.env, TF_CPP_MIN_LOG_LEVEL: '2', FORCE_COLOR: '0' };
const pipeEnv = {
  ...env,
  // the project directory is bench/work/<date>/project; the MLflow it starts is the repository's
  ...(existsSync(path.join(root, '.venv', 'bin', 'mlflow')) && !process.env['PIPE_MLFLOW_BIN'] ? { PIPE_MLFLOW_BIN: path.join(root, '.venv', 'bin', 'mlflow') } : {}),
};
const pipeParams = [
  '-p', `data=${data}`,
  '-p', `weights=${options.weights}`,
  ...(options.epochs ? ['-p', `initial_epochs=${epochs.initial}`, '-p', `fine_tune_epochs=${epochs.fineTune}`] : []),
];
/** Project directories pipe ran in (their embedded MLflow servers are stopped at the end). */
const pipeProjects = new Set<string>();

async function runDirs(project: string): Promise<Set<string>> {
  const dir = path.join(project, 'runs', 'mobilenet');
  return new Set(existsSync(dir) ? (await readdir(dir)).filter((n) => /^(sweep-)?\d{8}-\d{6}/.test(n)) : []);
}

interface RawStage {
  name: string;
  kind: string;
  status: string;
  durationMs: number;
  summary?: Record<string, unknown>;
}

async function pipeCommand(label: string, args: string[], project = projectDir): Promise<PipeRun & { raw: Record<string, unknown>; dir: string }> {
  await mkdir(project, { recursive: true });
  const before = await runDirs(project);
  say(`${label}: pipe ${args.join(' ')}${project === projectDir ? '' : ` (in ${path.relative(root, project)})`}`);
  pipeProjects.add(project);
  const run = await timedRun([process.execPath, pipeBin, ...args], { cwd: project, env: pipeEnv, logFile, echo: options.verbose });
  const added = [...(await runDirs(project))].filter((n) => !before.has(n)).sort();
  const name = added.pop();
  if (name === undefined) throw new Error(`${label}: pipe wrote no run directory (exit ${run.exitCode}; see ${run.log})`);
  const dir = path.join(project, 'runs', 'mobilenet', name);
  const summaryFile = path.join(dir, 'summary.json');
  if (!existsSync(summaryFile)) throw new Error(`${label}: no ${summaryFile} (exit ${run.exitCode}; see ${run.log})`);
  const raw = JSON.parse(await readFile(summaryFile, 'utf8')) as { status: string; stages: RawStage[]; metrics?: Record<string, number> };
  const stages: StageFigures[] = raw.stages.map((s) => {
    const summary = { ...(s.summary ?? {}) };
    const original = summary['original_duration_s'];
    delete summary['original_duration_s'];
    return {
      name: s.name,
      kind: s.kind,
      status: s.status,
      durationS: s.durationMs / 1000,
      ...(typeof original === 'number' ? { originalDurationS: original } : {}),
      summary,
    };
  });
  const metrics = raw.metrics ?? {};
  const figs: PipeRun = {
    ...figures(run),
    runDir: path.relative(root, dir),
    status: raw.status,
    stages,
    valAccuracy: metrics['val_accuracy'],
    testAccuracy: metrics['test_accuracy'],
    testLoss: metrics['test_loss'],
    metrics,
  };
  say(`${label}: ${formatDuration(run.wallS)}, ${raw.status}${figs.testAccuracy !== undefined ? `, test accuracy ${figs.testAccuracy}` : ''}; peak RSS ${Math.round(run.memory.treeMb)} MiB`);
  if (run.exitCode !== 0 || raw.status !== 'succeeded') throw new Error(`${label}: pipe exited ${run.exitCode} (${raw.status}); see ${run.log}`);
  return { ...figs, raw, dir };
}

async function kerasRun(label: string, fineTuneAt: number, fineTuneLr: number): Promise<KerasRun> {
  const out = path.join(workDir, `keras-${fineTuneAt}-${fineTuneLr}.json`);
  const args = [
    kerasScript, '--data', data, '--weights', options.weights, '--out', out,
    '--initial-epochs', String(epochs.initial), '--fine-tune-epochs', String(epochs.fineTune),
    '--fine-tune-at', String(fineTuneAt), '--fine-tune-lr', String(fineTuneLr),
  ];
  say(`${label}: keras_recipe.py (fine_tune_at ${fineTuneAt}, fine-tune lr ${fineTuneLr})`);
  const run = await timedRun([kerasPython, ...args], { cwd: root, env, logFile, echo: options.verbose });
  if (run.exitCode !== 0 || !existsSync(out)) throw new Error(`${label}: keras_recipe.py exited ${run.exitCode}; see ${run.log}`);
  const k = JSON.parse(await readFile(out, 'utf8')) as {
    times_s: Record<string, number>;
    phase1?: { val_accuracy?: number; fit?: { epochs_run?: number } };
    phase2?: { val_accuracy?: number; fit?: { epochs_run?: number } };
    test?: { accuracy?: number; loss?: number };
    peak_rss_mb?: number;
    data?: { counts?: Record<string, unknown> };
    versions?: Record<string, unknown>;
  };
  const figs: KerasRun = {
    ...figures(run),
    fineTuneAt,
    fineTuneLr,
    timesS: k.times_s,
    phase1Epochs: k.phase1?.fit?.epochs_run,
    phase2Epochs: k.phase2?.fit?.epochs_run,
    phase1ValAccuracy: k.phase1?.val_accuracy,
    valAccuracy: k.phase2?.val_accuracy,
    testAccuracy: k.test?.accuracy,
    testLoss: k.test?.loss,
    ownPeakRssMb: k.peak_rss_mb,
    counts: k.data?.counts,
    versions: k.versions,
  };
  say(`${label}: ${formatDuration(run.wallS)} (recipe ${formatDuration(k.times_s['recipe'] ?? NaN)}), test accuracy ${figs.testAccuracy}; peak RSS ${Math.round(run.memory.treeMb)} MiB`);
  return figs;
}

async function probe(withWeights: boolean): Promise<Probe> {
  say(`probe: matmul, FLOPs${withWeights ? ', images/s of the frozen base' : ''}`);
  const run = await timedRun(
    [process.execPath, '--import', 'tsx', path.join(root, 'bench', 'probe.ts'), ...(withWeights ? ['--weights', options.weights] : [])],
    { cwd: root, env, logFile },
  );
  if (run.exitCode !== 0) throw new Error(`probe exited ${run.exitCode}; see ${run.log}`);
  const p = lastJsonLine<Omit<Probe, 'wallS' | 'memory'>>(run.stdout);
  say(
    `probe: ${p.runtime.backend}, libtensorflow ${p.runtime.libtensorflow}; matmul ${p.matmul.bestGflops.toFixed(1)} GFLOP/s; ` +
      `${(p.flops.forwardFlops / 1e9).toFixed(3)} GFLOP per forward` +
      (p.throughput ? `; ${p.throughput.medianImagesPerSecond.toFixed(1)} images/s` : ''),
  );
  return { ...p, ...figures(run) };
}

/**
 * TF graph mode's rates, measured twice: with TensorFlow's defaults and with oneDNN's kernels
 * (TF_ENABLE_ONEDNN_OPTS=1, which pipe's stages use; TensorFlow enables them by default only on
 * CPUs with AVX-512). Each rate is the faster of the two, so pipe is compared with TensorFlow at
 * its best on this machine; both are kept in `variants`.
 */
async function graphRates(): Promise<GraphRates> {
  const variants: Array<{ onednn: string; figs: GraphRates }> = [];
  for (const onednn of ['0', '1']) {
    const out = path.join(workDir, `graph-rates-onednn${onednn}.json`);
    say(`graph: graph_rates.py (TF graph mode: base forward and fine-tuning step, ${options.graphSeconds} s each; TF_ENABLE_ONEDNN_OPTS=${onednn})`);
    const run = await timedRun(
      [kerasPython, graphScript, '--weights', options.weights, '--seconds', String(options.graphSeconds), '--fine-tune-at', String(PIPELINE.fineTuneAt), '--out', out],
      { cwd: root, env: { ...env, TF_ENABLE_ONEDNN_OPTS: onednn }, logFile, echo: options.verbose },
    );
    if (run.exitCode !== 0 || !existsSync(out)) throw new Error(`graph: graph_rates.py exited ${run.exitCode}; see ${run.log}`);
    const figs: GraphRates = { ...figures(run), ...parseGraphRates(JSON.parse(await readFile(out, 'utf8'))) };
    say(`graph: forward ${figs.forward?.imagesPerSecond ?? '—'} images/s, fine-tune step ${figs.fineTune?.imagesPerSecond ?? '—'} images/s (TF graph mode, TF_ENABLE_ONEDNN_OPTS=${onednn})`);
    variants.push({ onednn, figs });
  }
  const best = <K extends 'forward' | 'fineTune'>(key: K) =>
    variants.reduce<(typeof variants)[number] | undefined>((a, v) => ((v.figs[key]?.imagesPerSecond ?? 0) > (a?.figs[key]?.imagesPerSecond ?? 0) ? v : a), undefined);
  const forward = best('forward');
  const fineTune = best('fineTune');
  const first = variants[0]!.figs;
  return {
    ...first,
    ...(forward?.figs.forward ? { forward: { ...forward.figs.forward, onednn: forward.onednn } } : {}),
    ...(fineTune?.figs.fineTune ? { fineTune: { ...fineTune.figs.fineTune, onednn: fineTune.onednn } } : {}),
    variants: variants.map((v) => ({ onednn: v.onednn, forward: v.figs.forward?.imagesPerSecond, fineTune: v.figs.fineTune?.imagesPerSecond })),
  };
}

async function measure(name: string, step: () => Promise<void>): Promise<void> {
  try {
    await step();
  } catch (error) {
    const message = `${name} failed: ${(error as Error).message}`;
    say(message);
    result.notes.push(message);
    process.exitCode = 1;
  }
  await save();
}

say(`machine: ${result.machine.cores} cores, ${result.machine.cpuModel}, ${result.machine.ramGiB} GiB; load ${result.machine.loadAverage.start.join(' ')}`);
say(`work directory ${path.relative(root, workDir)} (log ${path.relative(root, logFile)}); results in ${path.relative(root, options.outDir) || '.'}/${stamp}${options.scale ? '-scale' : ''}.{json,md}`);
say(`running: ${options.scale ? 'scale' : [...options.only].join(', ')}; pipe from ${source.from} ${source.commit.slice(0, 12)}${source.from === 'HEAD' && source.dirty ? ' (the working tree has uncommitted changes to pipe: not measured)' : ''}`);
await writeFile(logFile, '');

if (options.scale) {
  // the scale measurement alone (bench/scale.ts), with the probe's runtime for its report
  try {
    const p = await probe(false);
    Object.assign(result.machine, { backend: p.runtime.backend, tfjs: p.runtime.tfjs, libtensorflow: p.runtime.libtensorflow });
  } catch (error) {
    say(`probe failed: ${(error as Error).message}`);
  }
  const scale = await measureScale({
    root, stamp, workDir, logFile, outDir: options.outDir, data: options.data, weights: options.weights, scale: options.scale,
    epochs: options.epochs ?? SCALE.epochs, verbose: options.verbose, pipeBin, pipeline,
    pipeSource: result.pipeSource, env: { ...pipeEnv, PIPE_NO_TRACK: '1' }, machine: result.machine, say, figures,
  });
  say(`done: ${path.relative(root, path.join(options.outDir, `${stamp}-scale.md`))}${scale.partial ? ' (partial)' : ''}`);
  // nothing of the other measurements runs
  process.exit();
}

await measure('probe', async () => {
  result.probe = await probe(options.only.has('throughput'));
  result.machine.backend = result.probe.runtime.backend;
  result.machine.tfjs = result.probe.runtime.tfjs;
  result.machine.libtensorflow = result.probe.runtime.libtensorflow;
});

if (options.only.has('keras')) {
  await measure('keras', async () => {
    result.keras = await kerasRun('keras', 100, 1e-5);
  });
}

const pipeRun = (extra: string[] = []) => ['run', pipeline, ...pipeParams, ...extra];
if (options.only.has('pipe')) {
  await measure('pipe', async () => {
    const { raw: _raw, dir: _dir, ...run } = await pipeCommand('pipe (cold cache)', pipeRun());
    result.pipe = run;
  });
}
if (options.only.has('graph')) {
  await measure('graph', async () => {
    result.graph = await graphRates();
  });
}
if (options.only.has('refit') && result.pipe) {
  await measure('refit', async () => {
    const { raw: _raw, dir: _dir, ...run } = await pipeCommand(`pipe (fine_tune_at=${options.refitAt})`, pipeRun(['-p', `fine_tune_at=${options.refitAt}`]));
    result.refit = run;
  });
}
if (options.only.has('lr') && result.pipe) {
  // fine_tune_at stays at the pipeline's default: only fine-tune and evaluate should run again
  const lr = String(Number(options.lr.toPrecision(12)));
  await measure('lr', async () => {
    const { raw: _raw, dir: _dir, ...run } = await pipeCommand(`pipe (fine_tune_learning_rate=${lr})`, pipeRun(['-p', `fine_tune_learning_rate=${lr}`]));
    result.lr = run;
  });
}
if (options.only.has('warm') && result.pipe) {
  await measure('warm', async () => {
    const { raw: _raw, dir: _dir, ...run } = await pipeCommand('pipe (warm, nothing changed)', pipeRun());
    result.warm = run;
  });
}
if (options.only.has('sweep')) {
  await measure('sweep', async () => {
    // a project directory of its own: the sweep starts from an empty cache
    const { raw: _raw, dir, ...run } = await pipeCommand('pipe sweep (empty cache)', ['sweep', pipeline, ...pipeParams], sweepProjectDir);
    const trialsRaw = JSON.parse(await readFile(path.join(dir, 'trials.json'), 'utf8')) as {
      id: string;
      values: Record<string, unknown>;
      status: string;
      metrics?: Record<string, number>;
    }[];
    const trials: SweepTrial[] = trialsRaw.map((t) => ({
      id: t.id,
      values: t.values,
      status: t.status,
      valAccuracy: t.metrics?.['val_accuracy'],
      testAccuracy: t.metrics?.['test_accuracy'],
    }));
    const sweep: PipeSweep = {
      ...run,
      emptyCache: true,
      ran: run.stages.filter((s) => s.status === 'ran').length,
      cached: run.stages.filter((s) => s.status === 'cached').length,
      trials,
    };
    result.sweep = sweep;
  });
  if (result.keras) {
    const single = result.keras;
    if (options.kerasSweep === 'extrapolate') {
      result.kerasSweep = {
        mode: 'extrapolated',
        totalS: 6 * single.wallS,
        runs: [],
        note: `extrapolated: 6 × the measured run (keras_recipe.py with fine_tune_at 100, lr 1e-5, ${formatDuration(single.wallS)}); a lower fine_tune_at trains more layers and costs Keras more per phase-2 step, so this is a lower estimate for the 60 trials.`,
      };
    } else {
      await measure('keras sweep', async () => {
        const runs: KerasRun[] = [];
        for (const at of [60, 100, 130]) {
          for (const lr of [1e-5, 3e-5]) {
            if (at === 100 && lr === 1e-5) runs.push(single);
            else runs.push(await kerasRun(`keras sweep ${at}/${lr}`, at, lr));
            result.kerasSweep = {
              mode: 'measured',
              totalS: runs.reduce((sum, r) => sum + r.wallS, 0),
              runs,
              note: `measured: ${runs.length} runs of keras_recipe.py, one per trial (the fine_tune_at 100 / 1e-5 one is the run of row 1), ${runs.map((r) => `${r.fineTuneAt}/${r.fineTuneLr}: ${formatDuration(r.wallS)}, test ${r.testAccuracy}`).join('; ')}.`,
            };
            await save();
          }
        }
      });
    }
    await save();
  }
}

if (options.only.has('throughput')) {
  await measure('probe (end)', async () => {
    result.probeEnd = await probe(true);
  });
}

for (const project of pipeProjects) {
  // the embedded MLflow server pipe started in a project directory outlives the runs: stop it
  const stop = await timedRun([process.execPath, pipeBin, 'ui', '--stop'], { cwd: project, env: pipeEnv, logFile });
  if (stop.exitCode !== 0) result.notes.push(`\`pipe ui --stop\` exited ${stop.exitCode}; the embedded MLflow server of ${path.relative(root, project)} may still run`);
}

result.machine.loadAverage.end = loadAverage();
result.partial = false;
result.notes.push(
  'Peak memory is the largest sum of resident set sizes over the process tree, sampled every 200 ms from /proc (shared library pages count once per process). ' +
    'For pipe the tree is the CLI and its stage processes; the embedded MLflow server is counted apart (it is shared by runs and outlives them).',
);
if (result.sweep) {
  result.notes.push(
    `The sweep ran in a project directory of its own (${path.relative(root, sweepProjectDir)}), from an empty cache: none of its stages came from the single runs' cache.` +
      (result.kerasSweep?.mode === 'extrapolated' ? ' Its Keras side is extrapolated: 6 × the measured run (`--keras-sweep measure` runs the five other trials).' : ''),
  );
}
if (result.graph) {
  result.notes.push(
    'The rates compare images/s per computation on the same machine: pipe\'s from its stage metrics (`features`: extract_images_per_second, compute only; ' +
      '`fine-tune`: fine_tune_images_per_second, training steps only, loading and validation excluded), TF graph mode\'s from bench/graph_rates.py (random inputs, after a warm-up).',
  );
}
await save();
say(`done: ${path.relative(root, path.join(options.outDir, `${stamp}.md`))}`);
for (const t of result.targets) say(`target ${t.pass ? 'pass' : 'MISS'}: ${t.label}: ${t.text}`);
