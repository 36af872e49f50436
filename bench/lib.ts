// The pure parts of `npm run bench` (bench/run.ts): options, FLOP counting, targets, the markdown
// table. No I/O here, so that test/bench/ can check them in milliseconds.

import { sharedPhotos, sharedWeights } from './shared.ts';

// ---- options ----

export const MEASUREMENTS = ['keras', 'pipe', 'refit', 'warm', 'sweep', 'throughput'] as const;
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
  verbose: boolean;
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
  verbose?: boolean;
}

export const DEFAULTS = {
  // ../shared beside the repository (bench/shared.ts), wherever it is cloned
  data: sharedPhotos,
  weights: sharedWeights,
  outDir: 'bench/results',
  refitAt: 120,
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

/** Validated options, or every problem found (all at once). */
export function parseBenchOptions(raw: RawOptions): { options: BenchOptions } | { problems: string[] } {
  const problems: string[] = [];
  if (raw.only !== undefined && raw.skip !== undefined) problems.push('--only and --skip exclude each other');
  let only = new Set<Measurement>(MEASUREMENTS);
  if (raw.only !== undefined) only = new Set(measurementList('only', raw.only, problems));
  if (raw.skip !== undefined) for (const m of measurementList('skip', raw.skip, problems)) only.delete(m);
  // refit, warm and sweep run in the cache the cold pipe run filled: they need it.
  for (const m of ['refit', 'warm', 'sweep'] as const) {
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
  if (refitAt !== undefined && (refitAt > 153 || refitAt === 100)) problems.push(`--refit-at: expected 1–153 and not 100 (the default), got ${refitAt}`);
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
      verbose: Boolean(raw.verbose),
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

export interface Figures {
  kerasWallS?: number;
  kerasTestAccuracy?: number;
  pipeWallS?: number;
  pipeTestAccuracy?: number;
  refitWallS?: number;
  warmWallS?: number;
  sweepWallS?: number;
}

export interface Target {
  id: 'recipe' | 'accuracy' | 'refit' | 'warm' | 'sweep';
  label: string;
  /** The measured figure and the limit it is held against, in the same unit. */
  measured: number;
  limit: number;
  unit: 's' | 'pp' | '×';
  pass: boolean;
  text: string;
}

/** The targets, for every figure that was measured. */
export function evaluateTargets(f: Figures): Target[] {
  const targets: Target[] = [];
  if (f.pipeWallS !== undefined && f.kerasWallS !== undefined) {
    const ratio = f.pipeWallS / f.kerasWallS;
    targets.push({
      id: 'recipe',
      label: 'whole recipe with pipe ≤ ¼ of the Keras wall time',
      measured: ratio,
      limit: 0.25,
      unit: '×',
      pass: ratio <= 0.25,
      text: `${formatDuration(f.pipeWallS)} / ${formatDuration(f.kerasWallS)} = ${ratio.toFixed(3)} (limit 0.25, i.e. ${formatDuration(f.kerasWallS / 4)})`,
    });
  }
  if (f.pipeTestAccuracy !== undefined && f.kerasTestAccuracy !== undefined) {
    const pp = Math.abs(f.pipeTestAccuracy - f.kerasTestAccuracy) * 100;
    targets.push({
      id: 'accuracy',
      label: 'same test accuracy (within 1 percentage point)',
      measured: pp,
      limit: 1,
      unit: 'pp',
      pass: pp <= 1 + 1e-9,
      text: `pipe ${f.pipeTestAccuracy.toFixed(3)} vs Keras ${f.kerasTestAccuracy.toFixed(3)}: ${pp.toFixed(1)} pp`,
    });
  }
  if (f.refitWallS !== undefined && f.kerasWallS !== undefined) {
    const ratio = f.refitWallS / f.kerasWallS;
    targets.push({
      id: 'refit',
      label: '`fine_tune_at` change < 1/10 of the Keras wall time',
      measured: ratio,
      limit: 0.1,
      unit: '×',
      pass: ratio < 0.1,
      text: `${formatDuration(f.refitWallS)} / ${formatDuration(f.kerasWallS)} = ${ratio.toFixed(3)} (limit 0.1, i.e. ${formatDuration(f.kerasWallS / 10)})`,
    });
  }
  if (f.warmWallS !== undefined) {
    targets.push({
      id: 'warm',
      label: 'warm re-run < 5 s',
      measured: f.warmWallS,
      limit: 5,
      unit: 's',
      pass: f.warmWallS < 5,
      text: `${f.warmWallS.toFixed(1)} s`,
    });
  }
  if (f.sweepWallS !== undefined && f.pipeWallS !== undefined) {
    const ratio = f.sweepWallS / f.pipeWallS;
    targets.push({
      id: 'sweep',
      label: 'sweep (3 × 2) < 2 × a single pipe run',
      measured: ratio,
      limit: 2,
      unit: '×',
      pass: ratio < 2,
      text: `${formatDuration(f.sweepWallS)} / ${formatDuration(f.pipeWallS)} = ${ratio.toFixed(2)} (limit 2, i.e. ${formatDuration(2 * f.pipeWallS)})`,
    });
  }
  return targets;
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
