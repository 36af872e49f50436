// The shape of a benchmark result (bench/results/<date>.json) and its markdown rendering. Pure: the
// driver (bench/run.ts) fills a BenchResult as measurements complete and renders it after each.

import { evaluateTargets, formatDuration, formatMb, markdownTable, type Target } from './lib.ts';
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
}

export interface SweepTrial {
  id: string;
  values: Record<string, unknown>;
  status: string;
  valAccuracy?: number;
  testAccuracy?: number;
}

export interface PipeSweep extends PipeRun {
  ran: number;
  cached: number;
  /** Sum of the original (cold) durations of the stages the sweep took from the cache. */
  cachedOriginalS: number;
  /** sweep wall time + cachedOriginalS: what the sweep would take on an empty cache (estimated). */
  estimatedColdS: number;
  trials: SweepTrial[];
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

export interface BenchResult {
  format: 'pipe-bench/1';
  date: string;
  partial: boolean;
  notes: string[];
  machine: Machine;
  inputs: { data: string; weights: string; limit?: number; epochs: { initial: number; fineTune: number } };
  options: { only: string[]; kerasSweep: 'measure' | 'extrapolate'; refitAt: number };
  /** Which pipe was measured: an export of the committed HEAD or the working tree. */
  pipeSource: { commit: string; from: 'HEAD' | 'working tree'; dirty: boolean; dir: string };
  probe?: Probe;
  /** The same probe at the end of the benchmark (the machine's load changes). */
  probeEnd?: Probe;
  keras?: KerasRun;
  kerasSweep?: { mode: 'measured' | 'extrapolated'; totalS: number; runs: KerasRun[]; note: string };
  pipe?: PipeRun;
  refit?: PipeRun;
  warm?: PipeRun;
  sweep?: PipeSweep;
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
      pipeWallS: result.pipe?.wallS,
      pipeTestAccuracy: result.pipe?.testAccuracy,
      refitWallS: result.refit?.wallS,
      warmWallS: result.warm?.wallS,
      sweepWallS: result.sweep?.wallS,
    }),
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
function stageWork(stage: StageFigures, trainImages: number | undefined): string {
  const s = stage.summary;
  const images = stageImages(stage);
  const seconds = stage.status === 'cached' ? stage.originalDurationS : stage.durationS;
  const parts: string[] = [];
  if (images !== undefined) {
    parts.push(`${images.toLocaleString('en-US')} images`);
    if (seconds) parts.push(`${num(images / seconds)} images/s over the stage`);
  }
  if (typeof s['images_per_second'] === 'number') parts.push(`${num(s['images_per_second'])} images/s in the base (compute only)`);
  if (typeof s['boundary'] === 'string') parts.push(`boundary ${s['boundary']} (${String(s['boundary_shape'])})`);
  if (stage.kind === 'fine-tune' && typeof s['epochs_run'] === 'number') {
    parts.push(`${s['epochs_run']} epochs`);
    if (trainImages && seconds) parts.push(`${num((s['epochs_run'] * trainImages) / seconds)} training images/s (top only, forward + backward, + validation)`);
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

/**
 * The short table the top-level README.md shows: when, on what machine at what load, and the
 * headline figures of both sides; the rest is in bench/README.md (`benchReadme`, a link from README.md).
 */
export function renderSummary(r: BenchResult, benchReadme: string): string {
  const m = r.machine;
  const k = r.keras;
  const ep = r.inputs.epochs;
  const loadAt = (l: number[] | undefined) => (l?.[0] === undefined ? '—' : l[0].toFixed(1));
  const versions = k?.versions ? ` (${Object.entries(k.versions).filter(([name]) => name !== 'numpy').map(([name, v]) => `${name} ${String(v)}`).join(', ')})` : '';
  const whole = k ? `${formatDuration(k.wallS)} (a whole new run)` : '—';
  const rows: string[][] = [
    [`whole recipe (${ep.initial} + ${ep.fineTune + 1} epochs, evaluation), cold cache`, r.pipe ? formatDuration(r.pipe.wallS) : '—', k ? formatDuration(k.wallS) : '—'],
    ['test accuracy', acc(r.pipe?.testAccuracy), acc(k?.testAccuracy)],
  ];
  if (r.refit) rows.push([`again with only \`fine_tune_at\` = ${r.options.refitAt}`, formatDuration(r.refit.wallS), whole]);
  if (r.warm) rows.push(['warm re-run, nothing changed', formatDuration(r.warm.wallS), whole]);
  if (r.sweep) {
    const ks = r.kerasSweep;
    rows.push(['sweep, 3 `fine_tune_at` × 2 learning rates (in the cache of the runs above)', formatDuration(r.sweep.wallS), ks ? `${formatDuration(ks.totalS)} (${ks.mode})` : '—']);
  }
  if (r.pipe || k) rows.push(['peak memory (RSS of the process tree)', formatMb(r.pipe?.memory.treeMb), formatMb(k?.memory.treeMb)]);
  return [
    `The latest \`npm run bench\` (${r.date}${r.partial ? ', partial: the benchmark did not finish' : ''}, pipe at commit \`${r.pipeSource.commit.slice(0, 12)}\`): ` +
      `${m.cores} cores (${m.cpuModel}), ${m.ramGiB} GiB RAM, no GPU, tfjs-node ${m.tfjs ?? '?'} on libtensorflow ${m.libtensorflow ?? '?'}, ` +
      `pipe and the tutorial's Keras code${versions} run one after the other on the same photos${r.inputs.limit ? ` (the first ${r.inputs.limit} of each class)` : ''} and weights. ` +
      `Load average (1 min): ${loadAt(m.loadAverage.start)} at the start, ${loadAt(m.loadAverage.end)} at the end (other jobs may share the machine). ` +
      'Wall times are whole processes, spawn to exit.',
    '',
    markdownTable(['measurement', 'pipe', 'Keras recipe'], rows),
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
    p?.testAccuracy !== undefined && k?.testAccuracy !== undefined ? `${(Math.abs(p.testAccuracy - k.testAccuracy) * 100).toFixed(1)} pp apart` : '',
  ]);
  if (r.refit) {
    rows.push([
      `2. again with only \`fine_tune_at\` = ${r.options.refitAt}`,
      formatDuration(r.refit.wallS),
      k ? `${formatDuration(k.wallS)} (a whole new run)` : '—',
      `pipe / Keras = ${ratio(r.refit.wallS, k?.wallS)}; test accuracy ${acc(r.refit.testAccuracy)}`,
    ]);
  }
  if (r.warm) rows.push(['3. warm re-run, nothing changed', formatDuration(r.warm.wallS), k ? `${formatDuration(k.wallS)} (a whole new run)` : '—', `${r.warm.stages.filter((s) => s.status === 'cached').length} of ${r.warm.stages.length} stages cached`]);
  if (r.sweep) {
    const ks = r.kerasSweep;
    rows.push([
      '4. sweep: 3 `fine_tune_at` × 2 learning rates, in the cache of the runs above',
      formatDuration(r.sweep.wallS),
      ks ? `${formatDuration(ks.totalS)} (${ks.mode})` : '—',
      `pipe / Keras = ${ratio(r.sweep.wallS, ks?.totalS)}; ${r.sweep.ran} stages ran, ${r.sweep.cached} from the cache`,
    ]);
    rows.push([
      '   the same sweep on an empty cache (estimated: + the reused stages’ cold times)',
      formatDuration(r.sweep.estimatedColdS),
      ks ? formatDuration(ks.totalS) : '—',
      `pipe / Keras = ${ratio(r.sweep.estimatedColdS, ks?.totalS)}`,
    ]);
  }
  const pr = bestProbe(r);
  const features = p?.stages.find((s) => s.name === 'features');
  if (pr || features) {
    const stageRate = typeof features?.summary['images_per_second'] === 'number' ? features.summary['images_per_second'] : undefined;
    const limitRate = pr ? (pr.gflops * 1e9) / pr.forwardFlops : undefined;
    const pipeCell = [
      stageRate !== undefined ? `${num(stageRate)} images/s (features stage, compute only)` : undefined,
      pr?.imagesPerSecond !== undefined ? `${num(pr.imagesPerSecond)} images/s (timed pass, same code path, median of a batch of 32)` : undefined,
    ]
      .filter(Boolean)
      .join('; ');
    const kerasRate = k && k.counts ? kerasPhase1Rate(k) : undefined;
    rows.push([
      '5. feature extraction (frozen base forward, batch 32)',
      pipeCell || '—',
      kerasRate !== undefined ? `${num(kerasRate)} images/s (phase 1 forwards ÷ phase 1 time, incl. decoding and augmentation)` : '—',
      pr && limitRate !== undefined
        ? `limit: ${num(pr.gflops)} GFLOP/s (matmul ${pr.n}³, best of ${pr.reps}) ÷ ${(pr.forwardFlops / 1e9).toFixed(3)} GFLOP per forward (counted) = ${num(limitRate)} images/s; ` +
          `pipe at ${[stageRate, pr.imagesPerSecond].filter((x): x is number => x !== undefined).map((x) => `${((100 * x) / limitRate).toFixed(0)} %`).join(' / ')} of it`
        : '',
    ]);
  }
  if (p || k) {
    rows.push([
      '6. peak memory: RSS of the process tree (largest process)',
      p ? `${formatMb(p.memory.treeMb)} (${formatMb(p.memory.processMb)})` : '—',
      k ? `${formatMb(k.memory.treeMb)} (${formatMb(k.memory.processMb)})` : '—',
      p ? `pipe: CLI + stage processes, the MLflow server apart (${formatMb(p.memory.mlflowMb)})` : '',
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
    [`pipe, fine_tune_at=${r.options.refitAt}`, r.refit],
    ['pipe, warm', r.warm],
    ['pipe sweep', r.sweep],
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
    const stageRows = p.stages.map((s) => [s.name, s.status, formatDuration(s.durationS), `${((100 * s.durationS) / p.wallS).toFixed(1)} %`, stageWork(s, typeof trainImages === 'number' ? trainImages : undefined)]);
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
    out.push(`Validation accuracy after phase 1 ${acc(k.phase1ValAccuracy)}, after phase 2 ${acc(k.valAccuracy)}; test loss ${k.testLoss?.toFixed(4) ?? '—'}, accuracy ${acc(k.testAccuracy)}. Peak RSS ${formatMb(k.ownPeakRssMb)} (getrusage).`);
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
    out.push(
      `${s.ran + s.cached} distinct stages: ${s.ran} ran, ${s.cached} from the cache (${s.stages.filter((x) => x.status === 'cached').map((x) => x.name).join(', ')}); ` +
        `the cached ones took ${formatDuration(s.cachedOriginalS)} when they ran (summed), hence the estimate for an empty cache.`,
    );
    out.push('');
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

/**
 * The counted work of a pipe run: the base passes it ran (full forwards for pooled features, up to
 * the boundary for activations), fine-tuning the top (forward + backward ≈ 3 × forward per training
 * image, forward per validation image and epoch) and the evaluation (top forward per test image).
 */
export function pipeWork(r: BenchResult, run: PipeRun): WorkCount | undefined {
  const f = r.probe?.flops;
  const split = r.pipe?.stages.find((s) => s.kind === 'split')?.summary;
  if (!f || !split) return undefined;
  const train = Number(split['train_images']);
  const validation = Number(split['validation_images']);
  const test = Number(split['test_images']);
  const parts: [string, number][] = [];
  const boundaryStage = run.stages.find((s) => s.kind === 'extract-features' && typeof s.summary['boundary'] === 'string');
  const boundary = boundaryStage ? passFlops(r, boundaryStage.summary['boundary'] as string) : undefined;
  for (const s of run.stages.filter((x) => x.kind === 'extract-features' && x.status === 'ran')) {
    const perImage = passFlops(r, typeof s.summary['boundary'] === 'string' ? s.summary['boundary'] : undefined);
    const images = stageImages(s);
    if (perImage === undefined || images === undefined) return undefined;
    parts.push([`${s.name}: ${images.toLocaleString('en-US')} × ${(perImage / 1e9).toFixed(3)} GFLOP`, images * perImage]);
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
      const perPass = base.map((s) => passFlops(r, s.name === 'features' || typeof s.summary['boundary'] !== 'string' ? undefined : s.summary['boundary']));
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
  const ft = p.stages.find((s) => s.kind === 'fine-tune' && s.status === 'ran');
  if (ft) lines.push(`Fine-tuning the top (forward + backward over the cached activations): ${formatDuration(ft.durationS)}, ${((100 * ft.durationS) / p.wallS).toFixed(0)} % of the run.`);
  if (r.keras) {
    const quarter = r.keras.wallS / 4;
    lines.push(`A quarter of the Keras wall time is ${formatDuration(quarter)}; the base passes alone take ${formatDuration(baseS)}.`);
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
  return lines;
}
