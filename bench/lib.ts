// The pure parts of `npm run bench` (bench/run.ts): options, FLOP counting, targets, the markdown
// table. No I/O here, so that test/bench/ can check them in milliseconds.

import { sharedPhotos, sharedWeights } from './shared.ts';

// ---- options ----

export const MEASUREMENTS = ['keras', 'pipe', 'graph', 'refit', 'lr', 'warm', 'sweep', 'throughput'] as const;
export type Measurement = (typeof MEASUREMENTS)[number];

export interface BenchOptions {
  data: string;
  weights: string;
  outDir: string;
  only: Set<Measurement>;
  limit: number | undefined;
  epochs: { initial: number; fineTune: number } | undefined;
  kerasSweep: 'measure' | 'extrapolate';
  refitAt: number;
  /** The fine-tuning learning rate of the `lr` run (the pipeline's default is 1e-5). */
  lr: number;
  /** Seconds each TF graph-mode rate is timed over (`graph`). */
  graphSeconds: number;
  verbose: boolean;
  /** `--scale`: only the scale measurement (bench/scale.ts), none of the others. */
  scale: ScaleOptions | undefined;
}

/** What `--scale` measures: the pipeline on data sets of these sizes, and the sharded base pass. */
export interface ScaleOptions {
  /** Source images per data set, ascending (default 3,000, 12,000, 48,000). */
  sizes: number[];
  /** The data set the sharded base pass runs on (default the smallest), or undefined: none. */
  shardSize: number | undefined;
  /** The data set the 3 × 2 sweep runs on, for the cache it leaves (default the smallest), or undefined: none. */
  sweepSize: number | undefined;
}

export interface RawOptions {
  data?: string;
  weights?: string;
  'out-dir'?: string;
  only?: string;
  skip?: string;
  limit?: string;
  epochs?: string;
  'keras-sweep'?: string;
  'refit-at'?: string;
  lr?: string;
  'graph-seconds'?: string;
  verbose?: boolean;
  scale?: boolean;
  'scale-sizes'?: string;
  'scale-shard-size'?: string;
  'scale-sweep-size'?: string;
}

export const DEFAULTS = {
  // ../shared beside the repository (bench/shared.ts), wherever it is cloned
  data: sharedPhotos,
  weights: sharedWeights,
  outDir: 'bench/results',
  refitAt: 120,
  lr: 0.00003,
  graphSeconds: 20,
};

/**
 * The scale measurement (issue 16): the flagship pipeline with few epochs and one view per image
 * (10 views of 48,000 images would be 26 GB of views and about 40 minutes of base passes on 2 cores).
 */
export const SCALE = {
  sizes: [3000, 12000, 48000],
  epochs: { initial: 1, fineTune: 1 },
  views: 1,
  /** The smallest data set: split needs a few images of each class in each of its three sets. */
  minSize: 40,
  /** Two one-core workers against one: the sharded pass's wall time at most this fraction. */
  shardRatio: 0.6,
  /** The largest data set against the smallest: peak RSS and wall time per image at most this ratio. */
  growth: 1.1,
  /** Cache bytes per source image after the flagship's 3 × 2 sweep (decimal MB, as `du` counts). */
  sweepBytesPerImage: 0.4e6,
} as const;

/** The pipeline's defaults the runs change one at a time (pipelines/mobilenet.yaml). */
export const PIPELINE = {
  fineTuneAt: 100,
  /** The lowest fine_tune_at its cached activations (block_5_add) serve without a pass from the pixels. */
  lowestFineTuneAt: 54,
  fineTuneLearningRate: 0.00001,
};

function measurementList(flag: string, text: string, problems: string[]): Measurement[] {
  const names = text.split(',').map((s) => s.trim()).filter(Boolean);
  const known = new Set<string>(MEASUREMENTS);
  const bad = names.filter((n) => !known.has(n));
  if (bad.length > 0) problems.push(`--${flag}: unknown measurement(s) ${bad.join(', ')} (known: ${MEASUREMENTS.join(', ')})`);
  if (names.length === 0) problems.push(`--${flag}: give at least one of ${MEASUREMENTS.join(', ')}`);
  return names.filter((n): n is Measurement => known.has(n));
}

function positiveInteger(flag: string, text: string, problems: string[]): number | undefined {
  if (!/^\d+$/.test(text.trim()) || Number(text) < 1) {
    problems.push(`--${flag}: expected a positive integer, got '${text}'`);
    return undefined;
  }
  return Number(text);
}

function positiveNumber(flag: string, text: string, problems: string[]): number | undefined {
  const value = Number(text.trim());
  if (text.trim() === '' || !Number.isFinite(value) || value <= 0) {
    problems.push(`--${flag}: expected a positive number, got '${text}'`);
    return undefined;
  }
  return value;
}

/** --scale, --scale-sizes, --scale-shard-size: the scale measurement's options, or undefined without --scale. */
function scaleOptions(raw: RawOptions, problems: string[]): ScaleOptions | undefined {
  if (!raw.scale) {
    for (const flag of ['scale-sizes', 'scale-shard-size', 'scale-sweep-size'] as const) if (raw[flag] !== undefined) problems.push(`--${flag} applies only with --scale`);
    return undefined;
  }
  // the other measurements' options say nothing to it
  for (const flag of ['only', 'skip', 'limit', 'keras-sweep', 'refit-at', 'lr', 'graph-seconds'] as const) {
    if (raw[flag] !== undefined) problems.push(`--${flag} does not apply to --scale`);
  }
  let sizes: number[] = [...SCALE.sizes];
  if (raw['scale-sizes'] !== undefined) {
    const parts = raw['scale-sizes'].split(',').map((s) => s.trim()).filter(Boolean);
    if (parts.length === 0) problems.push(`--scale-sizes: expected a list of image counts (e.g. ${SCALE.sizes.join(',')}), got '${raw['scale-sizes']}'`);
    sizes = parts.map((p) => positiveInteger('scale-sizes', p, problems)).filter((n): n is number => n !== undefined);
    const small = sizes.filter((n) => n < SCALE.minSize);
    if (small.length > 0) problems.push(`--scale-sizes: at least ${SCALE.minSize} images per data set, got ${small.join(', ')}`);
  }
  sizes = [...new Set(sizes)].sort((a, b) => a - b);
  const sizeOf = (flag: 'scale-shard-size' | 'scale-sweep-size'): number | undefined => {
    const text = raw[flag];
    if (text === undefined) return sizes[0];
    if (text.trim() === 'none') return undefined;
    const size = positiveInteger(flag, text, problems);
    if (size !== undefined && !sizes.includes(size)) problems.push(`--${flag}: expected one of --scale-sizes (${sizes.join(', ')}) or none, got ${size}`);
    return size;
  };
  return { sizes, shardSize: sizeOf('scale-shard-size'), sweepSize: sizeOf('scale-sweep-size') };
}

/** Validated options, or every problem found (all at once). */
export function parseBenchOptions(raw: RawOptions): { options: BenchOptions } | { problems: string[] } {
  const problems: string[] = [];
  if (raw.only !== undefined && raw.skip !== undefined) problems.push('--only and --skip exclude each other');
  let only = new Set<Measurement>(MEASUREMENTS);
  if (raw.only !== undefined) only = new Set(measurementList('only', raw.only, problems));
  if (raw.skip !== undefined) for (const m of measurementList('skip', raw.skip, problems)) only.delete(m);
  // refit, lr and warm run in the cache the cold pipe run filled: they need it. (The sweep runs
  // in a project directory of its own, from an empty cache.)
  for (const m of ['refit', 'lr', 'warm'] as const) {
    if (only.has(m) && !only.has('pipe')) problems.push(`${m} runs in the cache of the cold pipe run: it needs 'pipe' too`);
  }
  const limit = raw.limit === undefined ? undefined : positiveInteger('limit', raw.limit, problems);
  let epochs: BenchOptions['epochs'];
  if (raw.epochs !== undefined) {
    const parts = raw.epochs.split(',');
    if (parts.length !== 2) problems.push(`--epochs: expected INITIAL,FINE_TUNE (e.g. 10,10), got '${raw.epochs}'`);
    else {
      const initial = positiveInteger('epochs', parts[0]!, problems);
      const fineTune = positiveInteger('epochs', parts[1]!, problems);
      if (initial !== undefined && fineTune !== undefined) epochs = { initial, fineTune };
    }
  }
  const kerasSweep = raw['keras-sweep'] ?? 'extrapolate';
  if (kerasSweep !== 'measure' && kerasSweep !== 'extrapolate') {
    problems.push(`--keras-sweep: expected measure or extrapolate, got '${kerasSweep}'`);
  }
  const refitAt = raw['refit-at'] === undefined ? DEFAULTS.refitAt : positiveInteger('refit-at', raw['refit-at'], problems);
  if (refitAt !== undefined && (refitAt < PIPELINE.lowestFineTuneAt || refitAt > 153 || refitAt === PIPELINE.fineTuneAt)) {
    problems.push(
      `--refit-at: expected ${PIPELINE.lowestFineTuneAt}–153 (the cached activations serve fine_tune_at ≥ ${PIPELINE.lowestFineTuneAt}) and not ${PIPELINE.fineTuneAt} (the default), got ${refitAt}`,
    );
  }
  const lr = raw.lr === undefined ? DEFAULTS.lr : positiveNumber('lr', raw.lr, problems);
  if (lr !== undefined && lr === PIPELINE.fineTuneLearningRate) problems.push(`--lr: expected a learning rate other than ${PIPELINE.fineTuneLearningRate} (the default), got ${raw.lr}`);
  const graphSeconds = raw['graph-seconds'] === undefined ? DEFAULTS.graphSeconds : positiveNumber('graph-seconds', raw['graph-seconds'], problems);
  const scale = scaleOptions(raw, problems);
  // --scale measures that alone
  if (scale) only = new Set();
  if (problems.length > 0) return { problems };
  return {
    options: {
      data: raw.data ?? DEFAULTS.data,
      weights: raw.weights ?? DEFAULTS.weights,
      outDir: raw['out-dir'] ?? DEFAULTS.outDir,
      only,
      limit,
      epochs,
      kerasSweep: kerasSweep as BenchOptions['kerasSweep'],
      refitAt: refitAt!,
      lr: lr!,
      graphSeconds: graphSeconds!,
      verbose: Boolean(raw.verbose),
      scale,
    },
  };
}

// ---- FLOPs ----

/** What FLOP counting needs of a layer: its class, its kernel's shape, its output shape (batch first). */
export interface LayerShape {
  name: string;
  className: string;
  kernelShape?: readonly number[];
  outputShape: readonly (number | null)[];
}

/**
 * Multiply-accumulates of one forward pass of one image: Conv2D (kh·kw·cin·cout per output pixel),
 * DepthwiseConv2D (kh·kw·cin·multiplier per output pixel), Dense (in·out per output position).
 * BatchNormalization, activations, padding and adds are not counted (elementwise, and BN folds into
 * the convolution in inference). FLOPs = 2 × MACs.
 */
export function countMacs(layers: readonly LayerShape[]): { macs: number; byClass: Record<string, number> } {
  const byClass: Record<string, number> = {};
  let macs = 0;
  for (const layer of layers) {
    if (!['Conv2D', 'DepthwiseConv2D', 'Dense'].includes(layer.className)) continue;
    const kernel = layer.kernelShape;
    if (kernel === undefined) throw new Error(`countMacs: ${layer.name} (${layer.className}) has no kernel shape`);
    const out = layer.outputShape.slice(1).map((d) => {
      if (d === null) throw new Error(`countMacs: ${layer.name} has an unknown output dimension`);
      return d;
    });
    const positions = out.slice(0, -1).reduce((a, b) => a * b, 1);
    let perPosition: number;
    if (layer.className === 'Dense') perPosition = kernel[0]! * kernel[1]!;
    else if (layer.className === 'Conv2D') perPosition = kernel[0]! * kernel[1]! * kernel[2]! * kernel[3]!;
    // depthwise: the kernel is [kh, kw, cin, multiplier]; each output channel sees one input channel
    else perPosition = kernel[0]! * kernel[1]! * kernel[2]! * kernel[3]!;
    const layerMacs = positions * perPosition;
    macs += layerMacs;
    byClass[layer.className] = (byClass[layer.className] ?? 0) + layerMacs;
  }
  return { macs, byClass };
}

/** The layers of a tfjs LayersModel as countMacs reads them (kernel = the weight named *kernel). */
export function layerShapes(model: {
  layers: readonly { name: string; getClassName(): string; weights: readonly { name: string; shape: readonly (number | null)[] }[]; outputShape: unknown }[];
}): LayerShape[] {
  return model.layers.map((layer) => {
    const kernel = layer.weights.find((w) => /kernel/.test(w.name));
    const out = layer.outputShape;
    // a layer with one output has a flat shape; multi-output layers (none in MobileNetV2) a list of them
    const outputShape = (Array.isArray(out) && Array.isArray(out[0]) ? out[0] : out) as (number | null)[];
    const kernelShape = kernel?.shape.map((d) => {
      if (d === null) throw new Error(`layerShapes: ${layer.name} has a kernel of unknown shape`);
      return d;
    });
    return { name: layer.name, className: layer.getClassName(), kernelShape, outputShape };
  });
}

// ---- targets ----

/** Issue 11's targets: ratios of pipe to the Keras recipe (wall time, memory) or to TF graph mode (rates). */
export const TARGETS = {
  /** cold whole recipe / Keras */
  recipe: 0.4,
  /** only fine_tune_at changed / Keras */
  refit: 0.15,
  /** only the fine-tuning learning rate changed / Keras */
  lr: 0.2,
  /** the 3 × 2 sweep from an empty cache / six Keras runs */
  sweep: 0.25,
  /** pipe's base forward images/s / TF graph mode's (at least) */
  forwardRate: 1.0,
  /** pipe's fine-tuning images/s / TF graph mode's (at least) */
  fineTuneRate: 1.0,
  /** peak RSS / Keras */
  memory: 1.25,
  /** test accuracy: pipe at least Keras − this (one point) */
  accuracy: 0.01,
} as const;

export interface Figures {
  kerasWallS?: number;
  kerasTestAccuracy?: number;
  kerasPeakRssMb?: number;
  pipeWallS?: number;
  pipeTestAccuracy?: number;
  pipePeakRssMb?: number;
  refitWallS?: number;
  lrWallS?: number;
  /** The sweep's wall time, only when it ran from an empty cache. */
  sweepWallS?: number;
  /** Six Keras runs: measured, or extrapolated as 6 × the measured run. */
  kerasSweepS?: number;
  kerasSweepMode?: 'measured' | 'extrapolated';
  /** Images/s: pipe's (stage metrics) and TF graph mode's (bench/graph_rates.py). */
  pipeForwardRate?: number;
  graphForwardRate?: number;
  pipeFineTuneRate?: number;
  graphFineTuneRate?: number;
}

export type TargetId = 'recipe' | 'refit' | 'lr' | 'sweep' | 'forward-rate' | 'fine-tune-rate' | 'memory' | 'accuracy';

export interface Target {
  id: TargetId;
  label: string;
  /** The measured figure and the limit it is held against, in the same unit: a ratio, or points of accuracy. */
  measured: number;
  limit: number;
  /** measured ≤ limit or measured ≥ limit passes */
  comparison: '≤' | '≥';
  unit: '×' | 'pp';
  pass: boolean;
  text: string;
}

const EPS = 1e-9;
const ratio3 = (x: number) => x.toFixed(3);

/** Issue 11's targets, for every figure that was measured, in the issue's order. */
export function evaluateTargets(f: Figures): Target[] {
  const targets: Target[] = [];
  const wall = (id: TargetId, label: string, pipeS: number | undefined, kerasS: number | undefined, limit: number, kerasText = formatDuration) => {
    if (pipeS === undefined || kerasS === undefined) return;
    const ratio = pipeS / kerasS;
    targets.push({
      id,
      label,
      measured: ratio,
      limit,
      comparison: '≤',
      unit: '×',
      pass: ratio <= limit + EPS,
      text: `${formatDuration(pipeS)} / ${kerasText(kerasS)} = ${ratio3(ratio)} (limit ${limit.toFixed(2)}, i.e. ${formatDuration(kerasS * limit)})`,
    });
  };
  wall('recipe', `cold whole recipe / Keras ≤ ${TARGETS.recipe.toFixed(2)}`, f.pipeWallS, f.kerasWallS, TARGETS.recipe);
  wall('refit', `only \`fine_tune_at\` changed (refit) / Keras ≤ ${TARGETS.refit.toFixed(2)}`, f.refitWallS, f.kerasWallS, TARGETS.refit);
  wall('lr', `only the fine-tuning learning rate changed / Keras ≤ ${TARGETS.lr.toFixed(2)}`, f.lrWallS, f.kerasWallS, TARGETS.lr);
  wall(
    'sweep',
    `3 × 2 sweep from an empty cache / six Keras runs ≤ ${TARGETS.sweep.toFixed(2)}`,
    f.sweepWallS,
    f.kerasSweepS,
    TARGETS.sweep,
    (s) => `${formatDuration(s)} (six Keras runs, ${f.kerasSweepMode === 'measured' ? 'measured' : 'extrapolated: 6 × the measured run'})`,
  );
  const rate = (id: TargetId, label: string, pipe: number | undefined, graph: number | undefined, limit: number) => {
    if (pipe === undefined || graph === undefined) return;
    const ratio = pipe / graph;
    targets.push({
      id,
      label,
      measured: ratio,
      limit,
      comparison: '≥',
      unit: '×',
      pass: ratio >= limit - EPS,
      text: `${pipe.toFixed(1)} / ${graph.toFixed(1)} images/s = ${ratio3(ratio)} (limit ${limit.toFixed(2)}, i.e. ${(graph * limit).toFixed(1)} images/s)`,
    });
  };
  rate('forward-rate', `base forward rate / TF graph mode ≥ ${TARGETS.forwardRate.toFixed(1)}`, f.pipeForwardRate, f.graphForwardRate, TARGETS.forwardRate);
  rate('fine-tune-rate', `fine-tune step rate / TF graph mode ≥ ${TARGETS.fineTuneRate.toFixed(1)}`, f.pipeFineTuneRate, f.graphFineTuneRate, TARGETS.fineTuneRate);
  if (f.pipePeakRssMb !== undefined && f.kerasPeakRssMb !== undefined) {
    const ratio = f.pipePeakRssMb / f.kerasPeakRssMb;
    targets.push({
      id: 'memory',
      label: `peak RSS / Keras ≤ ${TARGETS.memory.toFixed(2)}`,
      measured: ratio,
      limit: TARGETS.memory,
      comparison: '≤',
      unit: '×',
      pass: ratio <= TARGETS.memory + EPS,
      text: `${formatMb(f.pipePeakRssMb)} / ${formatMb(f.kerasPeakRssMb)} = ${ratio3(ratio)} (limit ${TARGETS.memory.toFixed(2)}, i.e. ${formatMb(f.kerasPeakRssMb * TARGETS.memory)})`,
    });
  }
  if (f.pipeTestAccuracy !== undefined && f.kerasTestAccuracy !== undefined) {
    const pp = (f.pipeTestAccuracy - f.kerasTestAccuracy) * 100;
    const limit = -TARGETS.accuracy * 100;
    targets.push({
      id: 'accuracy',
      label: 'test accuracy: pipe ≥ Keras − 0.01 (one point)',
      measured: pp,
      limit,
      comparison: '≥',
      unit: 'pp',
      pass: pp >= limit - EPS,
      text: `pipe ${f.pipeTestAccuracy.toFixed(3)} vs Keras ${f.kerasTestAccuracy.toFixed(3)}: ${signedPoints(pp)} (limit ${signedPoints(limit)}, i.e. ${(f.kerasTestAccuracy - TARGETS.accuracy).toFixed(3)})`,
    });
  }
  return targets;
}

/** +0.5 pp, −1.0 pp, 0.0 pp */
export function signedPoints(pp: number): string {
  const rounded = Number(pp.toFixed(1));
  return `${rounded > 0 ? '+' : rounded < 0 ? '−' : ''}${Math.abs(rounded).toFixed(1)} pp`;
}

// ---- formatting ----

/** 894.4 → "14m54s", 2.04 → "2.0 s", 3725 → "1h02m05s". */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '—';
  if (seconds < 60) return `${seconds.toFixed(1)} s`;
  const total = Math.round(seconds);
  const h = Math.floor(total / 3600);
  const m = Math.floor((total % 3600) / 60);
  const s = total % 60;
  const pad = (n: number) => String(n).padStart(2, '0');
  return h > 0 ? `${h}h${pad(m)}m${pad(s)}s` : `${m}m${pad(s)}s`;
}

export function formatMb(mb: number | undefined): string {
  if (mb === undefined || !Number.isFinite(mb)) return '—';
  return mb >= 1024 ? `${(mb / 1024).toFixed(2)} GiB` : `${Math.round(mb)} MiB`;
}

/** A GitHub markdown table; `|` in cells is escaped. */
export function markdownTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  const cell = (s: string) => s.replace(/\|/g, '\\|').replace(/\n/g, ' ');
  const line = (cells: readonly string[]) => `| ${cells.map(cell).join(' | ')} |`;
  return [line(header), line(header.map(() => '---')), ...rows.map(line)].join('\n');
}
