// The shape of a benchmark result (bench/results/<date>.json) and its markdown rendering. Pure: the
// driver (bench/run.ts) fills a BenchResult as measurements complete and renders it after each.

import { PIPELINE, TARGETS, evaluateTargets, formatDuration, formatMb, markdownTable, signedPoints, type Target } from './lib.ts';
import type { MemoryPeak } from './proc.ts';

export interface Machine {
  cores: number;
  cpuModel: string;
  ramGiB: number;
  os: string;
  node: string;
  backend?: string;
  tfjs?: string;
  libtensorflow?: string;
  loadAverage: { start: number[]; end?: number[] };
}

export interface ProcessFigures {
  command: string;
  wallS: number;
  exitCode: number | null;
  startedAt: string;
  loadAverage: { start: number[]; end: number[] };
  memory: MemoryPeak;
  log: string;
}

export interface KerasRun extends ProcessFigures {
  fineTuneAt: number;
  fineTuneLr: number;
  timesS: Record<string, number>;
  phase1Epochs?: number;
  phase2Epochs?: number;
  phase1ValAccuracy?: number;
  valAccuracy?: number;
  testAccuracy?: number;
  testLoss?: number;
  ownPeakRssMb?: number;
  counts?: Record<string, unknown>;
  versions?: Record<string, unknown>;
}

export interface StageFigures {
  name: string;
  kind: string;
  status: string;
  durationS: number;
  originalDurationS?: number;
  summary: Record<string, unknown>;
}

export interface PipeRun extends ProcessFigures {
  runDir: string;
  status: string;
  stages: StageFigures[];
  valAccuracy?: number;
  testAccuracy?: number;
  testLoss?: number;
  /** The run's metrics as summary.json has them (the last value of each), e.g. extract_images_per_second. */
  metrics?: Record<string, number>;
}

export interface SweepTrial {
  id: string;
  values: Record<string, unknown>;
  status: string;
  valAccuracy?: number;
  testAccuracy?: number;
}

export interface PipeSweep extends PipeRun {
  /**
   * Run in a fresh project directory of its own: an empty cache (issue 11). Results of older
   * benchmarks (without it) ran the sweep in the cache of the single runs.
   */
  emptyCache?: boolean;
  ran: number;
  cached: number;
  trials: SweepTrial[];
}

/** One rate of bench/graph_rates.py: images per second over the timed batches, after a warm-up. */
export interface GraphRate {
  imagesPerSecond: number;
  medianBatchImagesPerSecond: number;
  batches: number;
  seconds: number;
  /** The untimed warm-up steps (the first one traces the tf.function). */
  warmupS: number;
  /** TF_ENABLE_ONEDNN_OPTS of the measurement this rate comes from (the faster of 0 and 1). */
  onednn?: string;
}

/** TensorFlow in graph mode (tf.function) on this machine: bench/graph_rates.py. */
export interface GraphRates extends ProcessFigures {
  versions?: Record<string, unknown>;
  imageSize: number;
  batchSize: number;
  /** The Keras MobileNetV2 base forward (include_top=False, training=False). */
  forward?: GraphRate;
  /** A train step over the top of the base from cached boundary activations, with the recipe's head. */
  fineTune?: GraphRate & {
    fineTuneAt: number;
    boundary: string;
    boundaryShape: number[];
    trainableVariables: number;
    trainableParams: { base: number; head: number; total: number };
  };
  ownPeakRssMb?: number;
  /** Graph mode measured with TF_ENABLE_ONEDNN_OPTS=0 and =1: its rates (images/s) each way; forward and fineTune are the faster. */
  variants?: Array<{ onednn: string; forward?: number; fineTune?: number }>;
}

export interface Probe extends Partial<ProcessFigures> {
  runtime: { backend: string; tfjs: string; libtensorflow: string };
  matmul: { n: number; reps: number; bestGflops: number; medianGflops: number };
  flops: {
    model: string;
    alpha: number;
    size: number;
    layers: number;
    macs: number;
    forwardFlops: number;
    macsByClass: Record<string, number>;
    /** MACs up to and including each layer, by Keras layer name. */
    cumulativeMacs?: Record<string, number>;
  };
  throughput?: {
    batch: number;
    batches: number;
    medianImagesPerSecond: number;
    bestImagesPerSecond: number;
    cpuMsPerImage: number;
    /** The folded base up to a layer: its MACs and images/s (median), in network order. */
    prefixes?: { layer: string; macs: number; imagesPerSecond: number }[];
  };
  wallS: number;
  memory: MemoryPeak;
}

interface RawGraphRate {
  images_per_second: number;
  median_batch_images_per_second: number;
  batches: number;
  seconds: number;
  warmup_s: number;
}

/**
 * The JSON bench/graph_rates.py prints (snake_case) as the result stores it; throws when a rate
 * it should hold is missing or not a positive number.
 */
export function parseGraphRates(json: unknown): Omit<GraphRates, keyof ProcessFigures> {
  const g = json as {
    format?: string;
    versions?: Record<string, unknown>;
    image_size: number;
    batch_size: number;
    forward?: RawGraphRate;
    fine_tune?: RawGraphRate & {
      fine_tune_at: number;
      boundary: string;
      boundary_shape: number[];
      trainable_variables: number;
      trainable_params: { base: number; head: number; total: number };
    };
    peak_rss_mb?: number;
  };
  if (g?.format !== 'pipe-graph-rates/1') throw new Error(`graph_rates.py: expected format pipe-graph-rates/1, got ${String(g?.format)}`);
  const rate = (name: string, x: RawGraphRate): GraphRate => {
    if (!(typeof x.images_per_second === 'number' && x.images_per_second > 0)) throw new Error(`graph_rates.py: ${name} has no images_per_second`);
    return {
      imagesPerSecond: x.images_per_second,
      medianBatchImagesPerSecond: x.median_batch_images_per_second,
      batches: x.batches,
      seconds: x.seconds,
      warmupS: x.warmup_s,
    };
  };
  const ft = g.fine_tune;
  return {
    versions: g.versions,
    imageSize: g.image_size,
    batchSize: g.batch_size,
    ...(g.forward ? { forward: rate('forward', g.forward) } : {}),
    ...(ft
      ? {
          fineTune: {
            ...rate('fine_tune', ft),
            fineTuneAt: ft.fine_tune_at,
            boundary: ft.boundary,
            boundaryShape: ft.boundary_shape,
            trainableVariables: ft.trainable_variables,
            trainableParams: ft.trainable_params,
          },
        }
      : {}),
    ...(g.peak_rss_mb !== undefined ? { ownPeakRssMb: g.peak_rss_mb } : {}),
  };
}

export interface BenchResult {
  /** 2: issue 11's measurements (lr, graph, the sweep from an empty cache). */
  format: 'pipe-bench/1' | 'pipe-bench/2';
  date: string;
  partial: boolean;
  notes: string[];
  machine: Machine;
  inputs: { data: string; weights: string; limit?: number; epochs: { initial: number; fineTune: number } };
  options: { only: string[]; kerasSweep: 'measure' | 'extrapolate'; refitAt: number; lr?: number; graphSeconds?: number };
  /** Which pipe was measured: an export of the committed HEAD or the working tree. */
  pipeSource: { commit: string; from: 'HEAD' | 'working tree'; dirty: boolean; dir: string };
  probe?: Probe;
  /** The same probe at the end of the benchmark (the machine's load changes). */
  probeEnd?: Probe;
  keras?: KerasRun;
  kerasSweep?: { mode: 'measured' | 'extrapolated'; totalS: number; runs: KerasRun[]; note: string };
  pipe?: PipeRun;
  refit?: PipeRun;
  /** Only the fine-tuning learning rate changed (options.lr), in the cache of the runs before it. */
  lr?: PipeRun;
  warm?: PipeRun;
  sweep?: PipeSweep;
  graph?: GraphRates;
  targets: Target[];
  /** Written after the run (bench/render.ts --note FILE): what bounds each missed target. */
  closingNote?: string;
}

/** Re-derives the targets from the figures present. */
export function withTargets(result: BenchResult): BenchResult {
  return {
    ...result,
    targets: evaluateTargets({
      kerasWallS: result.keras?.wallS,
      kerasTestAccuracy: result.keras?.testAccuracy,
      kerasPeakRssMb: result.keras?.memory.treeMb,
      pipeWallS: result.pipe?.wallS,
      pipeTestAccuracy: result.pipe?.testAccuracy,
      pipePeakRssMb: result.pipe?.memory.treeMb,
      refitWallS: result.refit?.wallS,
      lrWallS: result.lr?.wallS,
      sweepWallS: result.sweep?.emptyCache ? result.sweep.wallS : undefined,
      kerasSweepS: result.kerasSweep?.totalS,
      kerasSweepMode: result.kerasSweep?.mode,
      pipeForwardRate: pipeForwardRate(result.pipe)?.imagesPerSecond,
      graphForwardRate: result.graph?.forward?.imagesPerSecond,
      pipeFineTuneRate: pipeFineTuneRate(result.pipe)?.imagesPerSecond,
      graphFineTuneRate: result.graph?.fineTune?.imagesPerSecond,
    }),
  };
}

/** A rate of pipe's and where it comes from. */
export interface PipeRate {
  imagesPerSecond: number;
  how: string;
  /** Not the stage's own measurement: derived from its wall time (a lower bound). */
  estimated?: boolean;
}

/**
 * Images/s of the frozen base's forward in pipe's run: the `features` stage's (extract-features)
 * compute-only rate, its metric extract_images_per_second (also in its summary as images_per_second).
 */
export function pipeForwardRate(run: PipeRun | undefined): PipeRate | undefined {
  if (!run) return undefined;
  const passes = run.stages.filter((s) => s.kind === 'extract-features' && s.status === 'ran');
  const metric = run.metrics?.['extract_images_per_second'];
  // The run's metric is the last value reported: unambiguous only when one extract-features stage ran.
  if (passes.length === 1 && metric !== undefined && metric > 0) {
    return { imagesPerSecond: metric, how: `${passes[0]!.name} stage, compute only (metric extract_images_per_second)` };
  }
  const features = passes.find((s) => s.name === 'features') ?? passes[0];
  const rate = features?.summary['images_per_second'];
  return typeof rate === 'number' ? { imagesPerSecond: rate, how: `${features!.name} stage, compute only` } : undefined;
}

/**
 * Training images/s of the `fine-tune` stage: (training views × epochs run) / its training time,
 * the metric fine_tune_images_per_second (training steps only: forward, backward and the update;
 * loading and validation excluded). Older runs without it: the same count over the stage's whole
 * time, labelled as the lower bound it is.
 */
export function pipeFineTuneRate(run: PipeRun | undefined): PipeRate | undefined {
  if (!run) return undefined;
  const metric = run.metrics?.['fine_tune_images_per_second'];
  if (metric !== undefined && metric > 0) return { imagesPerSecond: metric, how: 'fine-tune stage, training steps only (metric fine_tune_images_per_second)' };
  const ft = run.stages.find((s) => s.kind === 'fine-tune' && s.status === 'ran');
  const train = run.stages.find((s) => s.kind === 'split')?.summary['train_images'];
  const epochs = ft?.summary['epochs_run'];
  if (!ft || typeof train !== 'number' || typeof epochs !== 'number' || !(ft.durationS > 0)) return undefined;
  return {
    imagesPerSecond: (train * epochs) / ft.durationS,
    how: 'estimated: training images × epochs over the fine-tune stage’s whole time (with loading and validation), a lower bound',
    estimated: true,
  };
}

/** The best matmul rate and timed-pass rate over the probes (start and end). */
export function bestProbe(r: BenchResult): { gflops: number; imagesPerSecond?: number; forwardFlops: number; n: number; reps: number } | undefined {
  const probes = [r.probe, r.probeEnd].filter((p): p is Probe => p !== undefined);
  const first = probes[0];
  if (!first) return undefined;
  const rates = probes.map((p) => p.throughput?.medianImagesPerSecond).filter((x): x is number => x !== undefined);
  return {
    gflops: Math.max(...probes.map((p) => p.matmul.bestGflops)),
    imagesPerSecond: rates.length > 0 ? Math.max(...rates) : undefined,
    forwardFlops: first.flops.forwardFlops,
    n: first.matmul.n,
    reps: probes.reduce((sum, p) => sum + p.matmul.reps, 0),
  };
}

/** FLOPs of one pass of the base that stops at `layer` (the whole forward without one). */
export function passFlops(r: BenchResult, layer: string | undefined): number | undefined {
  const f = r.probe?.flops;
  if (!f) return undefined;
  if (layer === undefined) return f.forwardFlops;
  const macs = f.cumulativeMacs?.[layer];
  return macs === undefined ? undefined : 2 * macs;
}

const acc = (x: number | undefined) => (x === undefined ? '—' : x.toFixed(4).replace(/0$/, ''));
const num = (x: number, digits = 1) => x.toLocaleString('en-US', { maximumFractionDigits: digits, minimumFractionDigits: digits });
const load = (l: number[] | undefined) => (l === undefined ? '—' : l.map((x) => x.toFixed(2)).join(' / '));

function stageImages(stage: StageFigures): number | undefined {
  const s = stage.summary;
  if (typeof s['images'] === 'number') return s['images'];
  if (typeof s['augmented_images'] === 'number') return s['augmented_images'];
  return undefined;
}

/** What a stage's time buys, in words: images and images/s where that is meaningful. */
function stageWork(stage: StageFigures, trainImages: number | undefined, metrics: Record<string, number> | undefined): string {
  const s = stage.summary;
  const images = stageImages(stage);
  const seconds = stage.status === 'cached' ? stage.originalDurationS : stage.durationS;
  const parts: string[] = [];
  if (images !== undefined) {
    parts.push(`${images.toLocaleString('en-US')} images`);
    if (seconds) parts.push(`${num(images / seconds)} images/s over the stage`);
  }
  if (typeof s['images_per_second'] === 'number') parts.push(`${num(s['images_per_second'])} images/s in the base (compute only)`);
  if (stage.kind === 'derive-activations' && typeof s['rows'] === 'number') {
    parts.push(`${s['rows'].toLocaleString('en-US')} views from ${String(s['from'])}`);
    if (typeof s['rows_per_second'] === 'number') parts.push(`${num(s['rows_per_second'])} views/s (compute only)`);
  }
  if (typeof s['boundary'] === 'string') parts.push(`boundary ${s['boundary']} (${String(s['boundary_shape'])})`);
  if (stage.kind === 'fine-tune' && typeof s['epochs_run'] === 'number') {
    parts.push(`${s['epochs_run']} epochs`);
    const rate = stage.status === 'ran' ? metrics?.['fine_tune_images_per_second'] : undefined;
    if (rate !== undefined) parts.push(`${num(rate)} training images/s (training steps only)`);
    else if (trainImages && seconds) parts.push(`${num((s['epochs_run'] * trainImages) / seconds)} training images/s (top only, forward + backward, + validation)`);
  }
  if (stage.kind === 'train-head' && typeof s['val_accuracy'] === 'number') parts.push(`val accuracy ${acc(s['val_accuracy'])}`);
  return parts.join('; ');
}

function commandLine(run: ProcessFigures): string {
  return `\`${run.command}\``;
}

export function renderMarkdown(r: BenchResult): string {
  const out: string[] = [];
  out.push(`# pipe against the Keras recipe — ${r.date}${r.partial ? ' (partial: the benchmark did not finish)' : ''}`);
  out.push('');
  out.push(...renderHeadline(r));
  if (r.closingNote) out.push('## Closing note', '', r.closingNote.trim(), '');
  out.push(...renderDetails(r));
  return `${out.join('\n')}\n`;
}

/** The section README.md shows: machine, inputs, the side-by-side table and the targets. */
export function renderReadmeSection(r: BenchResult, resultsLink: string): string {
  const out: string[] = [];
  out.push(`Latest \`npm run bench\`, ${r.date}${r.partial ? ' (partial: the benchmark did not finish)' : ''}; the full report with the profile and the sweep: [${resultsLink}](${resultsLink}).`);
  out.push('');
  out.push(...renderHeadline(r));
  if (r.closingNote) out.push('**Closing note.**', '', r.closingNote.trim(), '');
  return out.join('\n');
}

/** A learning rate as the pipeline writes it: 0.00003, not 3e-5. */
function lrText(lr: number): string {
  return lr >= 1e-6 ? String(Number(lr.toFixed(12))) : String(lr);
}

/** How the six Keras runs of the sweep were obtained, for the tables. */
function kerasSweepText(ks: NonNullable<BenchResult['kerasSweep']>): string {
  return `${formatDuration(ks.totalS)} (${ks.mode === 'measured' ? 'six runs, measured' : 'extrapolated: 6 × the measured run'})`;
}

/** "0.352 (≤ 0.40: pass)" for the target `id`, or the plain ratio when it was not judged. */
function targetCell(r: BenchResult, id: Target['id'], ratio?: number): string {
  const t = r.targets.find((x) => x.id === id);
  if (!t) return ratio === undefined ? '—' : ratio.toFixed(3);
  const limit = t.unit === 'pp' ? signedPoints(t.limit) : t.limit.toFixed(2);
  const measured = t.unit === 'pp' ? signedPoints(t.measured) : t.measured.toFixed(3);
  return `${measured} (target ${t.comparison} ${limit}: **${t.pass ? 'pass' : 'miss'}**)`;
}

/**
 * The short table the top-level README.md shows: when, on what machine at what load, and the
 * headline figures of both sides against issue 11's targets; the rest is in bench/README.md
 * (`benchReadme`, a link from README.md). Every row is there, with — when it was not measured.
 */
export function renderSummary(r: BenchResult, benchReadme: string): string {
  const m = r.machine;
  const k = r.keras;
  const ep = r.inputs.epochs;
  const loadAt = (l: number[] | undefined) => (l?.[0] === undefined ? '—' : l[0].toFixed(1));
  const versions = k?.versions ? ` (${Object.entries(k.versions).filter(([name]) => name !== 'numpy').map(([name, v]) => `${name} ${String(v)}`).join(', ')})` : '';
  const wall = (run: ProcessFigures | undefined) => (run ? formatDuration(run.wallS) : '—');
  const ratio = (a: number | undefined, b: number | undefined) => (a !== undefined && b !== undefined ? a / b : undefined);
  const ks = r.kerasSweep;
  const sweep = r.sweep?.emptyCache ? r.sweep : undefined;
  const pf = pipeForwardRate(r.pipe);
  const pt = pipeFineTuneRate(r.pipe);
  const g = r.graph;
  const rate = (x: number | undefined, note = '') => (x === undefined ? '—' : `${num(x)} images/s${note}`);
  const rows: string[][] = [
    [`whole recipe (${ep.initial} + ${ep.fineTune + 1} epochs, evaluation), cold cache`, wall(r.pipe), wall(k), targetCell(r, 'recipe', ratio(r.pipe?.wallS, k?.wallS))],
    [`again with only \`fine_tune_at\` = ${r.options.refitAt}`, wall(r.refit), k ? `${formatDuration(k.wallS)} (a whole new run)` : '—', targetCell(r, 'refit', ratio(r.refit?.wallS, k?.wallS))],
    [
      `again with only the fine-tuning learning rate = ${lrText(r.options.lr ?? 0.00003)}`,
      wall(r.lr),
      k ? `${formatDuration(k.wallS)} (a whole new run)` : '—',
      targetCell(r, 'lr', ratio(r.lr?.wallS, k?.wallS)),
    ],
    [
      'sweep, 3 `fine_tune_at` × 2 learning rates, from an empty cache',
      sweep ? formatDuration(sweep.wallS) : '—',
      ks ? kerasSweepText(ks) : '—',
      targetCell(r, 'sweep', ratio(sweep?.wallS, ks?.totalS)),
    ],
    [
      'base forward, batch 32 (pipe: the `features` stage; TF graph mode: `tf.function`)',
      rate(pf?.imagesPerSecond, pf?.estimated ? ' (estimated)' : ''),
      g?.forward ? `${rate(g.forward.imagesPerSecond)} (TF graph mode${onednnNote(g.forward)})` : '—',
      targetCell(r, 'forward-rate', ratio(pf?.imagesPerSecond, g?.forward?.imagesPerSecond)),
    ],
    [
      'fine-tune step over the top, batch 32 (training images/s)',
      rate(pt?.imagesPerSecond, pt?.estimated ? ' (estimated, a lower bound)' : ''),
      g?.fineTune ? `${rate(g.fineTune.imagesPerSecond)} (TF graph mode${onednnNote(g.fineTune)})` : '—',
      targetCell(r, 'fine-tune-rate', ratio(pt?.imagesPerSecond, g?.fineTune?.imagesPerSecond)),
    ],
    ['peak memory (RSS of the process tree)', formatMb(r.pipe?.memory.treeMb), formatMb(k?.memory.treeMb), targetCell(r, 'memory', ratio(r.pipe?.memory.treeMb, k?.memory.treeMb))],
    [
      'test accuracy',
      acc(r.pipe?.testAccuracy),
      acc(k?.testAccuracy),
      r.pipe?.testAccuracy !== undefined && k?.testAccuracy !== undefined ? targetCell(r, 'accuracy') : '—',
    ],
  ];
  const oldSweep = r.sweep && !r.sweep.emptyCache ? ` Its sweep ran in the cache of the single runs (${formatDuration(r.sweep.wallS)}), not from an empty cache: not judged here.` : '';
  return [
    `The latest \`npm run bench\` (${r.date}${r.partial ? ', partial: the benchmark did not finish' : ''}, pipe at commit \`${r.pipeSource.commit.slice(0, 12)}\`): ` +
      `${m.cores} cores (${m.cpuModel}), ${m.ramGiB} GiB RAM, no GPU, tfjs-node ${m.tfjs ?? '?'} on libtensorflow ${m.libtensorflow ?? '?'}, ` +
      `pipe and the tutorial's Keras code${versions} run one after the other on the same photos${r.inputs.limit ? ` (the first ${r.inputs.limit} of each class)` : ''} and weights. ` +
      `Load average (1 min): ${loadAt(m.loadAverage.start)} at the start, ${loadAt(m.loadAverage.end)} at the end (other jobs may share the machine). ` +
      'Wall times are whole processes, spawn to exit; ratios are pipe / Keras, and for the two rates pipe / TensorFlow in graph mode on the same machine' +
      (r.graph?.variants
        ? ` (graph mode measured with oneDNN's kernels off and on: ${r.graph.variants.map((v) => `TF_ENABLE_ONEDNN_OPTS=${v.onednn} forward ${v.forward?.toFixed(1) ?? '—'}, fine-tune ${v.fineTune?.toFixed(1) ?? '—'} images/s`).join('; ')}; the faster counts. pipe's stages run with them on, the Keras recipe with TensorFlow's defaults).`
        : '.') +
      oldSweep,
    '',
    markdownTable(['measurement', 'pipe', 'Keras recipe (rates: TF graph mode)', 'ratio (target)'], rows),
    '',
    `The full report (profile, per-stage times, the targets and what bounds them), the earlier measurements and how to run the benchmark: [bench/README.md](${benchReadme}).`,
  ].join('\n');
}

/** Machine, inputs, the side-by-side table, the targets. */
export function renderHeadline(r: BenchResult): string[] {
  const out: string[] = [];
  const m = r.machine;
  out.push(
    `- **Machine:** ${m.cores} cores (${m.cpuModel}), ${m.ramGiB} GiB RAM, no GPU, ${m.os}, Node ${m.node}; ` +
      `pipe on tfjs-node ${m.tfjs ?? '?'}, backend \`${m.backend ?? '?'}\`, libtensorflow ${m.libtensorflow ?? '?'}` +
      (r.keras?.versions ? `; Keras side: ${Object.entries(r.keras.versions).map(([k, v]) => `${k} ${String(v)}`).join(', ')}` : '') +
      (!r.keras?.versions && r.graph?.versions ? `; TF graph mode: ${Object.entries(r.graph.versions).map(([k, v]) => `${k} ${String(v)}`).join(', ')}` : '') +
      '.',
  );
  out.push(
    `- **Load average** (1 / 5 / 15 min) at the start ${load(m.loadAverage.start)}, at the end ${load(m.loadAverage.end)}. ` +
      'Other jobs may share this machine; every measurement records the load at its start and end (in the JSON).',
  );
  const ep = r.inputs.epochs;
  out.push(
    `- **Inputs** (the same for both sides): data \`${r.inputs.data}\`${r.inputs.limit ? ` (the first ${r.inputs.limit} images of each class, copied to a folder both sides read)` : ''}, ` +
      `weights \`${r.inputs.weights}\`; ${ep.initial} + ${ep.fineTune} epochs (phase 2 runs ${ep.fineTune + 1}, as the recipe's \`initial_epoch\` quirk).` +
      (r.keras?.counts ? ` Split (train / validation / test): ${splitText(r.keras.counts)}.` : ''),
  );
  out.push(
    `- **pipe** at commit \`${r.pipeSource.commit.slice(0, 12)}\`${r.pipeSource.from === 'working tree' ? ` (the working tree${r.pipeSource.dirty ? ', with uncommitted changes' : ''})` : ''}.`,
  );
  out.push('');
  out.push('Wall times are whole processes as a user runs them, from spawn to exit (start-up, imports, tracking included).');
  out.push('');

  // ---- the side-by-side table ----
  const rows: string[][] = [];
  const k = r.keras;
  const p = r.pipe;
  const ratio = (a: number | undefined, b: number | undefined) => (a !== undefined && b !== undefined ? `${(a / b).toFixed(3)}` : '—');
  const whole = k ? `${formatDuration(k.wallS)} (a whole new run)` : '—';
  rows.push([
    `1. whole recipe (${ep.initial} + ${ep.fineTune + 1} epochs, evaluation), cold cache`,
    p ? formatDuration(p.wallS) : '—',
    k ? formatDuration(k.wallS) : '—',
    `pipe / Keras = ${ratio(p?.wallS, k?.wallS)}`,
  ]);
  if (k) {
    rows.push([
      '   Keras `times_s.total` / `times_s.recipe` (fit + evaluate only)',
      '',
      `${formatDuration(k.timesS['total'] ?? NaN)} / ${formatDuration(k.timesS['recipe'] ?? NaN)}`,
      `pipe / Keras recipe part = ${ratio(p?.wallS, k.timesS['recipe'])}`,
    ]);
  }
  rows.push(['   validation accuracy (after phase 2)', acc(p?.valAccuracy), acc(k?.valAccuracy), '']);
  rows.push([
    '   test accuracy',
    acc(p?.testAccuracy),
    acc(k?.testAccuracy),
    p?.testAccuracy !== undefined && k?.testAccuracy !== undefined ? `pipe − Keras = ${signedPoints((p.testAccuracy - k.testAccuracy) * 100)}` : '',
  ]);
  const reran = (run: PipeRun) => `${run.stages.filter((s) => s.status === 'ran').map((s) => s.name).join(', ') || 'nothing'} ran`;
  if (r.refit) {
    rows.push([
      `2. again with only \`fine_tune_at\` = ${r.options.refitAt}`,
      formatDuration(r.refit.wallS),
      whole,
      `pipe / Keras = ${ratio(r.refit.wallS, k?.wallS)}; ${reran(r.refit)}; test accuracy ${acc(r.refit.testAccuracy)}`,
    ]);
  }
  if (r.lr) {
    rows.push([
      `3. again with only the fine-tuning learning rate = ${lrText(r.options.lr ?? 0.00003)} (\`fine_tune_at\` ${PIPELINE.fineTuneAt})`,
      formatDuration(r.lr.wallS),
      whole,
      `pipe / Keras = ${ratio(r.lr.wallS, k?.wallS)}; ${reran(r.lr)}; test accuracy ${acc(r.lr.testAccuracy)}`,
    ]);
  }
  if (r.warm) rows.push(['4. warm re-run, nothing changed', formatDuration(r.warm.wallS), whole, `${r.warm.stages.filter((s) => s.status === 'cached').length} of ${r.warm.stages.length} stages cached`]);
  if (r.sweep) {
    const ks = r.kerasSweep;
    const s = r.sweep;
    rows.push([
      s.emptyCache
        ? '5. sweep: 3 `fine_tune_at` × 2 learning rates, from an empty cache (a project directory of its own)'
        : '5. sweep: 3 `fine_tune_at` × 2 learning rates, in the cache of the runs above (not from an empty cache)',
      formatDuration(s.wallS),
      ks ? kerasSweepText(ks) : '—',
      `pipe / Keras = ${ratio(s.wallS, ks?.totalS)}; ${s.ran} stages ran, ${s.cached} from the cache`,
    ]);
  }
  const pr = bestProbe(r);
  const limitRate = pr ? (pr.gflops * 1e9) / pr.forwardFlops : undefined;
  const pf = pipeForwardRate(p);
  const g = r.graph;
  if (pf || g?.forward || pr) {
    const pipeCell = [
      pf ? `${num(pf.imagesPerSecond)} images/s (${pf.how})` : undefined,
      pr?.imagesPerSecond !== undefined ? `${num(pr.imagesPerSecond)} images/s (timed pass, same code path, median of a batch of 32)` : undefined,
    ]
      .filter(Boolean)
      .join('; ');
    rows.push([
      '6. base forward (frozen MobileNetV2, 160 px, batch 32)',
      pipeCell || '—',
      g?.forward ? `TF graph mode: ${num(g.forward.imagesPerSecond)} images/s (\`tf.function\` around the Keras base, training=False; ${g.forward.batches} batches in ${num(g.forward.seconds)} s)` : '—',
      [
        pf && g?.forward ? `pipe / graph mode = ${ratio(pf.imagesPerSecond, g.forward.imagesPerSecond)}` : undefined,
        pr && limitRate !== undefined
          ? `limit: ${num(pr.gflops)} GFLOP/s (matmul ${pr.n}³, best of ${pr.reps}) ÷ ${(pr.forwardFlops / 1e9).toFixed(3)} GFLOP per forward (counted) = ${num(limitRate)} images/s` +
            (pf ? `; pipe at ${((100 * pf.imagesPerSecond) / limitRate).toFixed(0)} % of it` : '')
          : undefined,
      ]
        .filter(Boolean)
        .join('; '),
    ]);
  }
  const pt = pipeFineTuneRate(p);
  if (pt || g?.fineTune) {
    const ft = g?.fineTune;
    rows.push([
      `7. fine-tune step over the top (${ft ? `from \`${ft.boundary}\`, ${ft.boundaryShape.join('×')}` : 'from the cached activations'}; forward, backward, RMSprop; batch 32)`,
      pt ? `${num(pt.imagesPerSecond)} training images/s (${pt.how})` : '—',
      ft ? `TF graph mode: ${num(ft.imagesPerSecond)} images/s (\`tf.function\` train step, ${ft.trainableVariables} variables, BN in inference mode; ${ft.batches} steps in ${num(ft.seconds)} s)` : '—',
      pt && ft ? `pipe / graph mode = ${ratio(pt.imagesPerSecond, ft.imagesPerSecond)}` : '',
    ]);
  }
  if (p || k) {
    rows.push([
      '8. peak memory: RSS of the process tree (largest process)',
      p ? `${formatMb(p.memory.treeMb)} (${formatMb(p.memory.processMb)})` : '—',
      k ? `${formatMb(k.memory.treeMb)} (${formatMb(k.memory.processMb)})` : '—',
      [p && k ? `pipe / Keras = ${ratio(p.memory.treeMb, k.memory.treeMb)}` : undefined, p ? `pipe: CLI + stage processes, the MLflow server apart (${formatMb(p.memory.mlflowMb)})` : undefined]
        .filter(Boolean)
        .join('; '),
    ]);
  }
  out.push(markdownTable(['measurement', 'pipe', 'Keras', 'ratio / note'], rows));
  out.push('');

  // ---- targets ----
  if (r.targets.length > 0) {
    out.push('## Targets');
    out.push('');
    out.push(markdownTable(['target', 'measured', ''], r.targets.map((t) => [t.label, t.text, t.pass ? '**pass**' : '**miss**'])));
    out.push('');
  }

  return out;
}

/** The runs, the profile of the cold run with its bounds, the Keras phases, the sweep, notes. */
export function renderDetails(r: BenchResult): string[] {
  const out: string[] = [];
  const p = r.pipe;
  const k = r.keras;
  const runs: [string, Partial<ProcessFigures> | undefined][] = [
    ['Keras recipe', k],
    ['pipe, cold cache', p],
    ['TF graph mode rates', r.graph],
    [`pipe, fine_tune_at=${r.options.refitAt}`, r.refit],
    [`pipe, fine_tune_learning_rate=${lrText(r.options.lr ?? 0.00003)}`, r.lr],
    ['pipe, warm', r.warm],
    [r.sweep?.emptyCache ? 'pipe sweep (empty cache)' : 'pipe sweep', r.sweep],
    ...(r.kerasSweep?.runs ?? []).filter((x) => x !== k).map((x): [string, ProcessFigures] => [`Keras ${x.fineTuneAt} / ${x.fineTuneLr}`, x]),
    ['probe (start)', r.probe],
    ['probe (end)', r.probeEnd],
  ];
  const present = runs.filter((x): x is [string, ProcessFigures] => x[1]?.startedAt !== undefined && x[1].loadAverage !== undefined);
  if (present.length > 0) {
    out.push('## The runs');
    out.push('');
    out.push(
      markdownTable(
        ['run', 'started (UTC)', 'wall', 'exit', 'load at start → end (1 min)', 'peak RSS, tree', 'largest process'],
        present.map(([name, x]) => [
          name,
          x.startedAt.slice(11, 19),
          formatDuration(x.wallS),
          String(x.exitCode),
          `${x.loadAverage.start[0]?.toFixed(2)} → ${x.loadAverage.end[0]?.toFixed(2)}`,
          formatMb(x.memory.treeMb),
          `${formatMb(x.memory.processMb)}`,
        ]),
      ),
    );
    out.push('');
  }

  const prefixProbe = [r.probeEnd, r.probe].find((x) => x?.throughput?.prefixes !== undefined);
  const prefixes = prefixProbe?.throughput?.prefixes;
  const full = prefixes?.find((x) => x.layer === 'out_relu');
  if (prefixProbe && prefixes && full) {
    out.push('## Where the frozen base’s time goes');
    out.push('');
    out.push(
      `The folded base (pipe's extract-features path) up to each boundary the pipeline's \`fine_tune_at\` values use, timed on batches of ${prefixProbe.throughput!.batch} ` +
        `(probe at ${prefixProbe === r.probeEnd ? 'the end' : 'the start'} of the benchmark): time is not spread like the FLOPs.`,
    );
    out.push('');
    out.push(
      markdownTable(
        ['up to layer', 'GFLOP per image', 'share of the forward’s FLOPs', 'images/s', 'share of the forward’s time', 'GFLOP/s'],
        prefixes.map((x) => [
          x.layer,
          ((2 * x.macs) / 1e9).toFixed(3),
          `${((100 * x.macs) / full.macs).toFixed(0)} %`,
          num(x.imagesPerSecond),
          `${((100 * full.imagesPerSecond) / x.imagesPerSecond).toFixed(0)} %`,
          num((2 * x.macs * x.imagesPerSecond) / 1e9),
        ]),
      ),
    );
    out.push('');
  }

  // ---- profile ----
  if (p) {
    out.push('## Where pipe’s time goes (the cold run)');
    out.push('');
    const trainImages = p.stages.find((s) => s.kind === 'split')?.summary['train_images'];
    const stageSum = p.stages.reduce((sum, s) => sum + s.durationS, 0);
    const stageRows = p.stages.map((s) => [s.name, s.status, formatDuration(s.durationS), `${((100 * s.durationS) / p.wallS).toFixed(1)} %`, stageWork(s, typeof trainImages === 'number' ? trainImages : undefined, p.metrics)]);
    stageRows.push(['(outside the stages: start-up, planning, tracking, MLflow server)', '', formatDuration(p.wallS - stageSum), `${((100 * (p.wallS - stageSum)) / p.wallS).toFixed(1)} %`, '']);
    stageRows.push(['**whole run**', p.status, `**${formatDuration(p.wallS)}**`, '100 %', `peak RSS ${formatMb(p.memory.treeMb)}`]);
    out.push(markdownTable(['stage', 'status', 'time', 'share', 'work'], stageRows));
    out.push('');
    out.push(...bounds(r).map((line) => `- ${line}`));
    out.push('');
  }
  if (k) {
    out.push('## The Keras run');
    out.push('');
    const t = k.timesS;
    out.push(
      markdownTable(
        ['import', 'data', 'build', 'phase 1', 'phase 2', 'evaluate', 'recipe', 'total (in-process)', 'wall (process)'],
        [[t['import'], t['data'], t['build'], t['phase1'], t['phase2'], t['evaluate'], t['recipe'], t['total']].map((x) => (x === undefined ? '—' : formatDuration(x))).concat(formatDuration(k.wallS))],
      ),
    );
    out.push('');
    const phase1Rate = kerasPhase1Rate(k);
    out.push(
      `Validation accuracy after phase 1 ${acc(k.phase1ValAccuracy)}, after phase 2 ${acc(k.valAccuracy)}; test loss ${k.testLoss?.toFixed(4) ?? '—'}, accuracy ${acc(k.testAccuracy)}. Peak RSS ${formatMb(k.ownPeakRssMb)} (getrusage).` +
        (phase1Rate !== undefined ? ` Phase 1 pushed ${num(phase1Rate)} images/s through the base (its forwards ÷ its time, with decoding and augmentation).` : ''),
    );
    out.push('');
  }
  if (r.graph) {
    const g = r.graph;
    out.push('## TensorFlow in graph mode (the per-image reference)');
    out.push('');
    out.push(
      `\`bench/graph_rates.py\`${g.versions ? ` (${Object.entries(g.versions).map(([name, v]) => `${name} ${String(v)}`).join(', ')})` : ''}, the weights above, ${g.imageSize} px, batches of ${g.batchSize}, random inputs; ` +
        'each rate timed after untimed warm-up steps (the first traces the `tf.function`).',
    );
    out.push('');
    const line = (name: string, x: GraphRate | undefined, what: string, pipe: PipeRate | undefined) =>
      x
        ? [name, what, num(x.imagesPerSecond), num(x.medianBatchImagesPerSecond), `${x.batches} in ${num(x.seconds)} s`, `${num(x.warmupS)} s`, pipe ? `${num(pipe.imagesPerSecond)} (${(pipe.imagesPerSecond / x.imagesPerSecond).toFixed(3)})` : '—']
        : undefined;
    const ft = g.fineTune;
    const rows = [
      line('forward', g.forward, 'the Keras MobileNetV2 base, include_top=False, training=False', pipeForwardRate(r.pipe)),
      line(
        'fine-tune step',
        ft,
        ft
          ? `fine_tune_at ${ft.fineTuneAt}: the top from \`${ft.boundary}\` (${ft.boundaryShape.join('×')}) to out_relu, BatchNormalization in inference mode, + GAP → Dropout(0.2) → Dense(1); ` +
              `BinaryCrossentropy(from_logits), RMSprop; ${ft.trainableVariables} trainable variables, ${ft.trainableParams.total.toLocaleString('en-US')} parameters`
          : '',
        pipeFineTuneRate(r.pipe),
      ),
    ].filter((x): x is string[] => x !== undefined);
    out.push(markdownTable(['rate', 'what', 'images/s', 'median batch, images/s', 'timed batches', 'warm-up', 'pipe, images/s (pipe / graph)'], rows));
    out.push('');
  }
  if (r.kerasSweep) {
    out.push(`Keras sweep: ${r.kerasSweep.note}`);
    out.push('');
  }
  if (r.sweep) {
    const s = r.sweep;
    out.push('## The sweep');
    out.push('');
    const cachedNames = s.stages.filter((x) => x.status === 'cached').map((x) => x.name);
    out.push(
      `${s.emptyCache ? 'From an empty cache (a project directory of its own)' : 'In the cache of the runs before it'}: ${s.ran + s.cached} distinct stages, ` +
        `${s.ran} ran, ${s.cached} from the cache${cachedNames.length > 0 ? ` (${cachedNames.join(', ')})` : ''}; ${formatDuration(s.wallS)} in all.`,
    );
    out.push('');
    const byKind = new Map<string, { count: number; seconds: number }>();
    for (const stage of s.stages.filter((x) => x.status === 'ran')) {
      const k2 = byKind.get(stage.kind) ?? { count: 0, seconds: 0 };
      k2.count++;
      k2.seconds += stage.durationS;
      byKind.set(stage.kind, k2);
    }
    if (byKind.size > 0) {
      out.push(
        markdownTable(
          ['stage kind', 'stages that ran', 'time (summed)', 'share of the sweep’s wall time'],
          [...byKind].map(([kind, x]) => [kind, String(x.count), formatDuration(x.seconds), `${((100 * x.seconds) / s.wallS).toFixed(0)} %`]),
        ),
      );
      out.push('');
    }
    out.push(
      markdownTable(
        ['trial', 'params', 'status', 'validation accuracy', 'test accuracy'],
        s.trials.map((t) => [t.id, Object.entries(t.values).map(([key, v]) => `${key}=${String(v)}`).join(' '), t.status, acc(t.valAccuracy), acc(t.testAccuracy)]),
      ),
    );
    out.push('');
  }
  if (r.notes.length > 0) {
    out.push('## Notes');
    out.push('');
    out.push(...r.notes.map((n) => `- ${n}`));
    out.push('');
  }
  return out;
}

function splitText(counts: Record<string, unknown>): string {
  return ['train', 'validation', 'test']
    .map((set) => {
      const c = counts[set] as Record<string, number> | undefined;
      return c ? String(Object.values(c).reduce((a, b) => a + b, 0)) : '—';
    })
    .join(' / ');
}

/** Images per second of Keras's phase 1: (train + validation) × epochs forward passes over its time. */
export function kerasPhase1Rate(k: KerasRun): number | undefined {
  const counts = k.counts as { train?: Record<string, number>; validation?: Record<string, number> } | undefined;
  const sum = (o: Record<string, number> | undefined) => (o ? Object.values(o).reduce((a, b) => a + b, 0) : 0);
  const images = sum(counts?.train) + sum(counts?.validation);
  const epochs = k.phase1Epochs;
  const seconds = k.timesS['phase1'];
  if (!images || !epochs || !seconds) return undefined;
  return (images * epochs) / seconds;
}

export interface WorkCount {
  /** FLOPs in total and by part (what, FLOPs). */
  flops: number;
  parts: [string, number][];
}

/** FLOPs per image of an extract-features pass: the whole forward for pooled features, else up to its boundary. */
function extractFlops(r: BenchResult, stage: StageFigures): number | undefined {
  const boundary = stage.summary['boundary'];
  // `features` computes the pooled output (the whole base), whatever boundary it also stores
  return passFlops(r, stage.name === 'features' || typeof boundary !== 'string' ? undefined : boundary);
}

/** FLOPs per view of a derive-activations stage: the frozen blocks from its cached boundary to the new one. */
function deriveFlops(r: BenchResult, stage: StageFigures): number | undefined {
  const from = stage.summary['from'];
  const to = stage.summary['boundary'];
  if (typeof from !== 'string' || typeof to !== 'string') return undefined;
  const [a, b] = [passFlops(r, from), passFlops(r, to)];
  return a === undefined || b === undefined ? undefined : b - a;
}

/** The layer whose output the fine-tuned top of `run` starts from. */
function fineTuneBoundary(run: PipeRun): string | undefined {
  const derived = run.stages.find((s) => s.kind === 'derive-activations' && typeof s.summary['boundary'] === 'string');
  if (derived) return derived.summary['boundary'] as string;
  const extracted = run.stages.filter((s) => s.kind === 'extract-features' && typeof s.summary['boundary'] === 'string');
  const stage = extracted.find((s) => s.name !== 'features') ?? extracted[0];
  return stage?.summary['boundary'] as string | undefined;
}

/**
 * The counted work of a pipe run: the base passes it ran (the whole forward for pooled features,
 * up to the boundary for activations alone), the frozen blocks a derive-activations stage runs,
 * fine-tuning the top (forward + backward ≈ 3 × forward per training image, forward per validation
 * image and epoch) and the evaluation (top forward per test image).
 */
export function pipeWork(r: BenchResult, run: PipeRun): WorkCount | undefined {
  const f = r.probe?.flops;
  const split = (r.pipe ?? run).stages.find((s) => s.kind === 'split')?.summary;
  if (!f || !split) return undefined;
  const train = Number(split['train_images']);
  const validation = Number(split['validation_images']);
  const test = Number(split['test_images']);
  const parts: [string, number][] = [];
  const boundaryName = fineTuneBoundary(run);
  const boundary = boundaryName === undefined ? undefined : passFlops(r, boundaryName);
  for (const s of run.stages.filter((x) => x.kind === 'extract-features' && x.status === 'ran')) {
    const perImage = extractFlops(r, s);
    const images = stageImages(s);
    if (perImage === undefined || images === undefined) return undefined;
    parts.push([`${s.name}: ${images.toLocaleString('en-US')} × ${(perImage / 1e9).toFixed(3)} GFLOP`, images * perImage]);
  }
  for (const s of run.stages.filter((x) => x.kind === 'derive-activations' && x.status === 'ran')) {
    const perView = deriveFlops(r, s);
    const rows = s.summary['rows'];
    if (perView === undefined || typeof rows !== 'number') return undefined;
    parts.push([`${s.name}: ${rows.toLocaleString('en-US')} × ${(perView / 1e9).toFixed(3)} GFLOP (${String(s.summary['from'])} → ${String(s.summary['boundary'])})`, rows * perView]);
  }
  if (boundary === undefined) return undefined;
  const top = f.forwardFlops - boundary;
  const ft = run.stages.find((s) => s.kind === 'fine-tune' && s.status === 'ran');
  if (ft) {
    const epochs = Number(ft.summary['epochs_run']);
    parts.push([`${ft.name}: ${epochs} × (${train} × 3 + ${validation}) × ${(top / 1e9).toFixed(3)} GFLOP (top)`, epochs * (3 * train + validation) * top]);
  }
  const ev = run.stages.find((s) => s.kind === 'evaluate' && s.status === 'ran');
  if (ev) parts.push([`${ev.name}: ${test} × ${(top / 1e9).toFixed(3)} GFLOP`, test * top]);
  return { flops: parts.reduce((sum, [, x]) => sum + x, 0), parts };
}

/**
 * The counted work of the Keras recipe: every epoch runs the whole base forward over the training
 * and validation images; phase 2 adds the backward pass (≈ 2 × forward) through the layers from
 * fine_tune_at up; the evaluation is one forward per test image.
 */
export function kerasWork(r: BenchResult, k: KerasRun): WorkCount | undefined {
  const f = r.probe?.flops;
  const counts = k.counts as Record<string, Record<string, number>> | undefined;
  if (!f || !counts || !f.cumulativeMacs || k.phase1Epochs === undefined || k.phase2Epochs === undefined) return undefined;
  const sum = (o: Record<string, number> | undefined) => (o ? Object.values(o).reduce((a, b) => a + b, 0) : 0);
  const [train, validation, test] = [sum(counts['train']), sum(counts['validation']), sum(counts['test'])];
  const frozen = Object.values(f.cumulativeMacs)[k.fineTuneAt - 1];
  if (frozen === undefined) return undefined;
  const top = f.forwardFlops - 2 * frozen;
  const F = f.forwardFlops;
  const parts: [string, number][] = [
    [`phase 1: ${k.phase1Epochs} × (${train} + ${validation}) × ${(F / 1e9).toFixed(3)} GFLOP`, k.phase1Epochs * (train + validation) * F],
    [
      `phase 2: ${k.phase2Epochs} × ((${train} + ${validation}) × ${(F / 1e9).toFixed(3)} + ${train} × 2 × ${(top / 1e9).toFixed(3)}) GFLOP`,
      k.phase2Epochs * ((train + validation) * F + 2 * train * top),
    ],
    [`evaluate: ${test} × ${(F / 1e9).toFixed(3)} GFLOP`, test * F],
  ];
  return { flops: parts.reduce((s2, [, x]) => s2 + x, 0), parts };
}

/** The measured bounds of the cold run: how long the base passes must take at the measured rates. */
export function bounds(r: BenchResult): string[] {
  const p = r.pipe;
  if (!p) return [];
  const lines: string[] = [];
  const base = p.stages.filter((s) => s.kind === 'extract-features' && s.status === 'ran');
  const baseS = base.reduce((sum, s) => sum + s.durationS, 0);
  if (base.length > 0) {
    const images = base.map((s) => stageImages(s) ?? 0);
    lines.push(
      `The frozen base: ${base.length} pass${base.length > 1 ? 'es' : ''} (${base.map((s, i) => `${s.name}: ${images[i]!.toLocaleString('en-US')} images in ${formatDuration(s.durationS)}`).join('; ')}) = ${formatDuration(baseS)}, ` +
        `${((100 * baseS) / p.wallS).toFixed(0)} % of the run.`,
    );
    const pr = bestProbe(r);
    if (pr) {
      const perPass = base.map((s) => extractFlops(r, s));
      if (perPass.every((x): x is number => x !== undefined)) {
        const flops = perPass.reduce((sum, f, i) => sum + f * images[i]!, 0);
        lines.push(
          `Counted work of these passes: ${base.map((s, i) => `${s.name} ${(perPass[i]! / 1e9).toFixed(3)} GFLOP per image`).join(', ')} = ${num(flops / 1e12, 2)} TFLOP; ` +
            `at the matmul rate (${num(pr.gflops)} GFLOP/s) that is ${formatDuration(flops / (pr.gflops * 1e9))}, the floor for this much work on these cores` +
            (pr.imagesPerSecond !== undefined ? `; at the timed pass's ${num(pr.imagesPerSecond)} full forwards/s, ${formatDuration(flops / pr.forwardFlops / pr.imagesPerSecond)}` : '') +
            '.',
        );
      }
    }
  }
  const derive = p.stages.filter((s) => s.kind === 'derive-activations' && s.status === 'ran');
  for (const s of derive) {
    const rows = s.summary['rows'];
    lines.push(
      `Deriving the activations (${s.name}: ${String(s.summary['from'])} → ${String(s.summary['boundary'])}${typeof rows === 'number' ? `, ${rows.toLocaleString('en-US')} views` : ''}): ` +
        `${formatDuration(s.durationS)}, ${((100 * s.durationS) / p.wallS).toFixed(0)} % of the run.`,
    );
  }
  const ft = p.stages.find((s) => s.kind === 'fine-tune' && s.status === 'ran');
  if (ft) {
    const rate = pipeFineTuneRate(p);
    const graph = r.graph?.fineTune?.imagesPerSecond;
    lines.push(
      `Fine-tuning the top (forward + backward over the cached activations): ${formatDuration(ft.durationS)}, ${((100 * ft.durationS) / p.wallS).toFixed(0)} % of the run` +
        (rate ? `; ${num(rate.imagesPerSecond)} training images/s${rate.estimated ? ' (estimated)' : ''}` : '') +
        (rate && graph ? `, TF graph mode ${num(graph)} (${(rate.imagesPerSecond / graph).toFixed(2)}×)` : '') +
        '.',
    );
  }
  if (r.keras) {
    const budget = r.keras.wallS * TARGETS.recipe;
    lines.push(
      `The cold-run target (≤ ${TARGETS.recipe.toFixed(2)} of the Keras wall time) is ${formatDuration(budget)}; the base pass${base.length === 1 ? '' : 'es'} alone take${base.length === 1 ? 's' : ''} ${formatDuration(baseS)}` +
        (ft ? `, fine-tuning ${formatDuration(ft.durationS)}` : '') +
        '.',
    );
  }
  const pr = bestProbe(r);
  const tf = (x: number) => `${num(x / 1e12, 2)} TFLOP`;
  const describe = (w: WorkCount) => `${tf(w.flops)} (${w.parts.map(([what, x]) => `${what} = ${tf(x)}`).join('; ')})`;
  const kw = r.keras ? kerasWork(r, r.keras) : undefined;
  const pw = pipeWork(r, p);
  if (kw) lines.push(`Counted work of the Keras recipe (backward ≈ 2 × forward): ${describe(kw)}; ${num(kw.flops / r.keras!.wallS / 1e9)} GFLOP/s over its wall time.`);
  if (pw) {
    const stageS = p.stages.filter((s) => s.status === 'ran').reduce((sum, s) => sum + s.durationS, 0);
    lines.push(
      `Counted work of pipe's cold run: ${describe(pw)}; ${num(pw.flops / stageS / 1e9)} GFLOP/s over its stages` +
        (kw ? `; ${((100 * pw.flops) / kw.flops).toFixed(0)} % of Keras's work` : '') +
        (pr ? `. At the best matmul rate (${num(pr.gflops)} GFLOP/s) this work takes at least ${formatDuration(pw.flops / (pr.gflops * 1e9))}` : '') +
        '.',
    );
  }
  if (r.refit) {
    const rw = pipeWork(r, r.refit);
    if (rw) lines.push(`The \`fine_tune_at\` = ${r.options.refitAt} run: ${describe(rw)}, in ${formatDuration(r.refit.wallS)}${pr ? `; at least ${formatDuration(rw.flops / (pr.gflops * 1e9))} at the matmul rate` : ''}.`);
  }
  if (r.lr) {
    const lw = pipeWork(r, r.lr);
    if (lw) lines.push(`The fine-tuning learning rate = ${lrText(r.options.lr ?? 0.00003)} run: ${describe(lw)}, in ${formatDuration(r.lr.wallS)}${pr ? `; at least ${formatDuration(lw.flops / (pr.gflops * 1e9))} at the matmul rate` : ''}.`);
  }
  return lines;
}

/** Which oneDNN setting a graph-mode rate was the faster with (bench/run.ts measures both). */
function onednnNote(rate: GraphRate): string {
  return rate.onednn === undefined ? '' : `, TF_ENABLE_ONEDNN_OPTS=${rate.onednn}`;
}
