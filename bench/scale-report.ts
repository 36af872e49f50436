// The shape of a scale result (`npm run bench -- --scale`, bench/results/<date>-scale.json), its
// targets (issue 16) and its markdown. Pure, as bench/report.ts: the driver (bench/scale.ts) fills
// a ScaleResult as the measurements complete and renders it after each.

import { SCALE, formatDuration, formatMb, markdownTable } from './lib.ts';
import type { Machine, ProcessFigures } from './report.ts';

/** One stage of a scale run, as the run summary (`pipe run --json`) gives it. */
export interface ScaleStage {
  name: string;
  kind: string;
  status: string;
  durationS: number;
  /** Bytes of its cache entry. */
  cacheBytes?: number;
  summary: Record<string, unknown>;
}

/** The flagship pipeline on one data set, from an empty cache. */
export interface ScaleRun extends ProcessFigures {
  /** Source images (symlinks to the shared photos). */
  images: number;
  projectDir: string;
  status: string;
  stages: ScaleStage[];
  /** Bytes of the run's cache entries, a file shared by several counted once (the summary's `cacheBytes`). */
  cacheBytes?: number;
  testAccuracy?: number;
}

/** One pass of the base (the `features` stage) through the queue. */
export interface ShardPassRun extends ProcessFigures {
  workers: string[];
  /** The core each worker was pinned to (`taskset -c`), in the order of `workers`; absent: not pinned. */
  cores?: number[];
  shards: number;
  /** The stage's time in the run summary: for shards, the first shard's start to the merge's end. */
  featuresS: number;
  /** Who computed it (the summary's `worker` column: `w1+w2` for two shards). */
  worker?: string;
  fingerprint: string;
  /** The `fetch` stage (decoding the images) in the same run, when it ran there (absent: cached, or an older report). */
  fetch?: { seconds: number; worker?: string; fingerprint: string };
}

/** The sharded base pass: one `--cpus 1` worker, one job, against two such workers, two shards. */
export interface ShardPass {
  images: number;
  one: ShardPassRun;
  two?: ShardPassRun;
  /** The entry of the two shards is the one job's: same fingerprint, files and bytes. */
  identical?: boolean;
  /** The same for `fetch`'s entry, when both passes decoded the images. */
  fetchIdentical?: boolean;
  /** Files and bytes of the one job's entry (out/). */
  files?: number;
  bytes?: number;
  /** TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS as the workers' own environment had them ('' when unset: the worker sets them from --cpus). */
  threadsEnv: string;
  /** Why the workers ran unpinned (no taskset, or no such core) when they could not be pinned. */
  unpinned?: string;
}

/** The flagship's 3 × 2 sweep (`pipe sweep`, its `sweep:` grid) from an empty cache, for the cache it leaves. */
export interface ScaleSweep extends ProcessFigures {
  images: number;
  projectDir: string;
  status: string;
  /** The `-p` overrides of the sweep (data and weights aside). */
  params: string[];
  /** Bytes under the project's cache directory, each file counted once however many links it has. */
  cacheBytes: number;
  /** The same, by stage kind (from each entry's record.json); `other` for what belongs to no entry. */
  byKind: Record<string, number>;
  entries: number;
}

export type ScaleTargetId = 'scale-runs' | 'scale-rss' | 'scale-time' | 'scale-shards' | 'scale-sweep-bytes';

export interface ScaleTarget {
  id: ScaleTargetId;
  label: string;
  pass: boolean;
  text: string;
}

export interface ScaleResult {
  format: 'pipe-bench-scale/1';
  date: string;
  partial: boolean;
  notes: string[];
  machine: Machine;
  inputs: {
    /** The photos the data sets replicate, and the weights. */
    data: string;
    weights: string;
    sizes: number[];
    shardSize?: number;
    epochs: { initial: number; fineTune: number };
    views: number;
    /** The `-p` overrides every run of the pipeline gets (data aside). */
    params: string[];
  };
  pipeSource: { commit: string; from: 'HEAD' | 'working tree'; dirty: boolean; dir: string };
  runs: ScaleRun[];
  shards?: ShardPass;
  sweep?: ScaleSweep;
  targets: ScaleTarget[];
  /** Written after the run (bench/render.ts --note FILE). */
  closingNote?: string;
}

export const isScaleResult = (r: { format?: string }): boolean => r.format === 'pipe-bench-scale/1';

/** Wall time of the whole `pipe run` per source image, ms. */
export const msPerImage = (run: ScaleRun): number => (1000 * run.wallS) / run.images;

/** Cache bytes per source image, or undefined when the summary had none. */
export const bytesPerImage = (run: ScaleRun): number | undefined => (run.cacheBytes === undefined ? undefined : run.cacheBytes / run.images);

/** The smallest and the largest data set that ran to the end, when there are two. */
function extremes(r: ScaleResult): { small: ScaleRun; large: ScaleRun } | undefined {
  const done = r.runs.filter((run) => run.status === 'succeeded').sort((a, b) => a.images - b.images);
  const small = done[0];
  const large = done[done.length - 1];
  return small && large && large.images > small.images ? { small, large } : undefined;
}

const n = (x: number) => x.toLocaleString('en-US');
const ratio3 = (x: number) => x.toFixed(3);

/** Issue 16's targets for what was measured. */
export function scaleTargets(r: ScaleResult): ScaleTarget[] {
  const targets: ScaleTarget[] = [];
  const largest = Math.max(...r.inputs.sizes);
  const run = r.runs.find((x) => x.images === largest);
  if (run) {
    targets.push({
      id: 'scale-runs',
      label: `${n(largest)} images through the flagship pipeline run`,
      pass: run.status === 'succeeded' && run.exitCode === 0,
      text: `${run.status}, exit ${run.exitCode}, ${formatDuration(run.wallS)}`,
    });
  }
  const ends = extremes(r);
  if (ends) {
    const { small, large } = ends;
    const rss = large.memory.treeMb / small.memory.treeMb;
    targets.push({
      id: 'scale-rss',
      label: `peak RSS, ${n(large.images)} / ${n(small.images)} images ≤ ${SCALE.growth.toFixed(2)}`,
      pass: rss <= SCALE.growth + 1e-9,
      text: `${formatMb(large.memory.treeMb)} / ${formatMb(small.memory.treeMb)} = ${ratio3(rss)}`,
    });
    const time = msPerImage(large) / msPerImage(small);
    targets.push({
      id: 'scale-time',
      label: `wall time per image, ${n(large.images)} / ${n(small.images)} images ≤ ${SCALE.growth.toFixed(2)}`,
      pass: time <= SCALE.growth + 1e-9,
      text: `${msPerImage(large).toFixed(1)} / ${msPerImage(small).toFixed(1)} ms = ${ratio3(time)}`,
    });
  }
  const sw = r.sweep;
  if (sw) {
    const perImage = sw.cacheBytes / sw.images;
    targets.push({
      id: 'scale-sweep-bytes',
      label: `cache bytes per source image after the 3 × 2 sweep (${n(sw.images)} images) ≤ ${(SCALE.sweepBytesPerImage / 1e6).toFixed(1)} MB`,
      pass: sw.status === 'succeeded' && perImage <= SCALE.sweepBytesPerImage,
      text: `${formatBytes(sw.cacheBytes)} / ${n(sw.images)} = ${(perImage / 1e6).toFixed(3)} MB${sw.status === 'succeeded' ? '' : ` (${sw.status})`}`,
    });
  }
  const s = r.shards;
  if (s?.two) {
    const ratio = s.two.featuresS / s.one.featuresS;
    targets.push({
      id: 'scale-shards',
      label: `sharded base pass, 2 one-core workers / 1 ≤ ${SCALE.shardRatio} and the same entry, byte for byte`,
      pass: ratio <= SCALE.shardRatio + 1e-9 && s.identical === true,
      text: `${formatDuration(s.two.featuresS)} / ${formatDuration(s.one.featuresS)} = ${ratio3(ratio)}; ${s.identical ? 'identical' : 'NOT identical'}`,
    });
  }
  return targets;
}

export function withScaleTargets(r: ScaleResult): ScaleResult {
  return { ...r, targets: scaleTargets(r) };
}

/** 196,608 B → "192.0 KiB"; 3.2e9 → "2.98 GiB". */
export function formatBytes(bytes: number | undefined): string {
  if (bytes === undefined || !Number.isFinite(bytes)) return '—';
  if (bytes >= 2 ** 30) return `${(bytes / 2 ** 30).toFixed(2)} GiB`;
  if (bytes >= 2 ** 20) return `${(bytes / 2 ** 20).toFixed(1)} MiB`;
  if (bytes >= 2 ** 10) return `${(bytes / 2 ** 10).toFixed(1)} KiB`;
  return `${Math.round(bytes)} B`;
}

const load = (l: number[] | undefined) => (l === undefined ? '—' : l.map((x) => x.toFixed(2)).join(' / '));

/** The report: machine, inputs, one row per data set, stages, cache, the sharded pass, targets. */
export function renderScaleMarkdown(r: ScaleResult): string {
  const out = [`# pipe at scale — ${r.date}${r.partial ? ' (partial: the measurement did not finish)' : ''}`, '', ...renderScaleSection(r)];
  if (r.notes.length > 0) out.push('## Notes', '', ...r.notes.map((note) => `- ${note}`), '');
  return `${out.join('\n')}\n`;
}

/** What bench/README.md shows between its scale markers (bench/render.ts --readme). */
export function renderScaleReadmeSection(r: ScaleResult, resultsLink: string): string {
  return [`Latest \`npm run bench -- --scale\`, ${r.date}${r.partial ? ' (partial: it did not finish)' : ''}; the full report: [${resultsLink}](${resultsLink}).`, '', ...renderScaleSection(r)].join('\n');
}

function renderScaleSection(r: ScaleResult): string[] {
  const out: string[] = [];
  const m = r.machine;
  out.push(
    `- **Machine:** ${m.cores} cores (${m.cpuModel}), ${m.ramGiB} GiB RAM, ${m.os}, Node ${m.node}; tfjs-node ${m.tfjs ?? '?'}, backend \`${m.backend ?? '?'}\`, libtensorflow ${m.libtensorflow ?? '?'}.`,
    `- **Load average** (1 / 5 / 15 min) at the start ${load(m.loadAverage.start)}, at the end ${load(m.loadAverage.end)}; each run's in the JSON. Other jobs may share this machine.`,
    `- **Data:** ${r.inputs.sizes.map(n).join(', ')} images, the photos of \`${r.inputs.data}\` replicated under new names (symlinks, classes balanced); a replica is the same picture, so the accuracies say nothing here. Weights \`${r.inputs.weights}\`.`,
    `- **Pipeline:** \`pipelines/mobilenet.yaml\` with ${r.inputs.params.map((p) => `\`-p ${p}\``).join(' ')}, no tracking, each data set in a fresh project directory (empty cache). One view per image: the default 10 views of 48,000 images would be 26 GB of views and about 40 minutes of base passes on 2 cores.`,
    `- **pipe** at commit \`${r.pipeSource.commit.slice(0, 12)}\`${r.pipeSource.from === 'working tree' ? ` (the working tree${r.pipeSource.dirty ? ', with uncommitted changes' : ''})` : ''}.`,
    '',
  );
  if (r.runs.length > 0) out.push(...runsTable(r), ...stagesTable(r), ...cacheTable(r));
  if (r.shards) out.push(...shardsSection(r.shards));
  if (r.sweep) out.push(...sweepSection(r.sweep));
  if (r.targets.length > 0) {
    out.push('### Targets (issue 16)', '', markdownTable(['target', 'measured', ''], r.targets.map((t) => [t.label, t.text, t.pass ? '**pass**' : '**miss**'])), '');
  }
  if (r.closingNote) out.push('### Closing note', '', r.closingNote.trim(), '');
  return out;
}

function runsTable(r: ScaleResult): string[] {
  const rows = r.runs.map((run) => [
    n(run.images),
    `${formatDuration(run.wallS)}${run.status === 'succeeded' ? '' : ` (${run.status}, exit ${run.exitCode})`}`,
    msPerImage(run).toFixed(1),
    `${formatMb(run.memory.treeMb)} (${formatMb(run.memory.processMb)})`,
    formatBytes(run.cacheBytes),
    formatBytes(bytesPerImage(run)),
    load(run.loadAverage.start),
  ]);
  const ends = extremes(r);
  if (ends) {
    const { small, large } = ends;
    const perImage = (a?: number, b?: number) => (a !== undefined && b !== undefined ? ratio3(a / b) : '—');
    rows.push([
      `${n(large.images)} / ${n(small.images)}`,
      ratio3(large.wallS / small.wallS),
      perImage(msPerImage(large), msPerImage(small)),
      `${perImage(large.memory.treeMb, small.memory.treeMb)} (${perImage(large.memory.processMb, small.memory.processMb)})`,
      perImage(large.cacheBytes, small.cacheBytes),
      perImage(bytesPerImage(large), bytesPerImage(small)),
      '',
    ]);
  }
  return [
    '### Per data set',
    '',
    'Wall time is the whole `pipe run`, spawn to exit. Peak RSS is the largest sum over its process tree (the CLI and its stage processes), sampled every 200 ms; in brackets the largest single process.',
    '',
    markdownTable(['images', 'wall time', 'ms per image', 'peak RSS (largest process)', 'cache', 'cache per image', 'load at start'], rows),
    '',
  ];
}

function stagesTable(r: ScaleResult): string[] {
  const names = [...new Set(r.runs.flatMap((run) => run.stages.map((s) => s.name)))];
  const rows = names.map((name) => [
    `\`${name}\``,
    ...r.runs.map((run) => {
      const s = run.stages.find((x) => x.name === name);
      if (!s) return '—';
      const ms = (1000 * s.durationS) / run.images;
      return `${formatDuration(s.durationS)} (${ms.toFixed(2)} ms/image)${s.status === 'ran' ? '' : ` ${s.status}`}`;
    }),
  ]);
  return ['### Stages', '', markdownTable(['stage', ...r.runs.map((run) => `${n(run.images)} images`)], rows), ''];
}

function cacheTable(r: ScaleResult): string[] {
  const names = [...new Set(r.runs.flatMap((run) => run.stages.map((s) => s.name)))];
  const rows = names.map((name) => [
    `\`${name}\``,
    ...r.runs.map((run) => {
      const s = run.stages.find((x) => x.name === name);
      return s?.cacheBytes === undefined ? '—' : `${formatBytes(s.cacheBytes)} (${formatBytes(s.cacheBytes / run.images)}/image)`;
    }),
  ]);
  return [
    '### Cache entries',
    '',
    "Each stage's entry, with the files it shares with another entry (hard links, e.g. `split`'s with `fetch`'s); the run's total above counts those once.",
    '',
    markdownTable(['stage', ...r.runs.map((run) => `${n(run.images)} images`)], rows),
    '',
  ];
}

function sweepSection(s: ScaleSweep): string[] {
  const kinds = Object.entries(s.byKind).sort((a, b) => b[1] - a[1]);
  return [
    '### The cache after the 3 × 2 sweep',
    '',
    `\`pipe sweep\` of the flagship pipeline (its \`sweep:\` grid: fine_tune_at 60, 100, 130 × two fine-tuning learning rates) on the ${n(s.images)}-image set from an empty cache, ` +
      `\`${s.params.join(' ')}\` (the epochs do not change what is cached, apart from checkpoints): ${s.status} in ${formatDuration(s.wallS)}, peak RSS ${formatMb(s.memory.treeMb)}. ` +
      `The cache holds ${s.entries} entries, ${formatBytes(s.cacheBytes)} (each file once, however many links it has): ${((s.cacheBytes / s.images) / 1e6).toFixed(3)} MB per source image.`,
    '',
    markdownTable(['stage kind', 'bytes', 'per source image'], kinds.map(([kind, bytes]) => [kind, formatBytes(bytes), `${(bytes / s.images / 1e3).toFixed(1)} kB`])),
    '',
  ];
}

function shardsSection(s: ShardPass): string[] {
  const workers = (p: ShardPassRun) => p.workers.map((w, k) => (p.cores?.[k] !== undefined ? `${w} (core ${p.cores[k]})` : w)).join(', ');
  const baseRow = (label: string, p: ShardPassRun) => [label, workers(p), String(p.shards), formatDuration(p.featuresS), p.worker ?? '—', formatDuration(p.wallS), load(p.loadAverage.start)];
  // Alone, an unpinned --cpus 1 worker still runs its augmentation threads and reads on an idle
  // core, which two workers do not leave: the report says which the measurement was.
  const pinned = s.one.cores !== undefined && (s.two === undefined || s.two.cores !== undefined);
  const pinning = pinned
    ? "each pinned to one core with `taskset -c` (the table says which), so that, as on a one-core machine, a worker's augmentation threads and reads share its core with TensorFlow"
    : `not pinned to cores${s.unpinned ? ` (${s.unpinned})` : ''}: alone, a worker's augmentation threads and reads also use an idle core, which two workers do not leave`;
  const withFetch = s.one.fetch !== undefined && s.two?.fetch !== undefined;
  const fetchCell = (p: ShardPassRun) => (p.fetch ? `${formatDuration(p.fetch.seconds)} (${p.fetch.worker ?? '?'})` : '—');
  const row = (label: string, p: ShardPassRun) => {
    const cells = baseRow(label, p);
    return withFetch ? [...cells.slice(0, 3), fetchCell(p), ...cells.slice(3)] : cells;
  };
  const rows = [row('one worker, one job', s.one)];
  if (s.two) rows.push(row(withFetch ? 'two workers, two shards (`--force fetch`: every stage again)' : 'two workers, two shards (`--force features`)', s.two));
  const out = [
    '### Sharded base pass',
    '',
    `The flagship's data stages and base pass (\`fetch\` → \`split\` → \`augment\` → \`features\`) on the ${n(s.images)}-image set through a private Redis, on \`pipe worker --cpus 1\` processes of this machine standing in for one-core machines ` +
      `(TensorFlow threads: ${s.threadsEnv || 'set by the worker from --cpus: 1 intra-op, 1 inter-op'}), ${pinning}; the time of \`features\` is the run summary's (for shards the first shard's start to the merge's end).`,
    '',
    markdownTable(['pass', 'workers', 'shards', ...(withFetch ? ['`fetch` (computed by)'] : []), '`features`', 'computed by', 'whole submit', 'load at start'], rows),
    '',
  ];
  if (s.two) {
    out.push(
      `Two / one: ${ratio3(s.two.featuresS / s.one.featuresS)}. The entry: ${s.identical ? 'identical' : '**not identical**'} (fingerprint ${s.one.fingerprint.slice(0, 12)}${s.files !== undefined ? `, ${s.files} files, ${formatBytes(s.bytes)}` : ''}).`,
      '',
    );
    if (withFetch) {
      out.push(
        `\`fetch\` (decoding the ${n(s.images)} photos, sharded too): two / one ${ratio3(s.two.fetch!.seconds / s.one.fetch!.seconds)} (no target); its entry: ${s.fetchIdentical ? 'identical' : '**not identical**'} (fingerprint ${s.one.fetch!.fingerprint.slice(0, 12)}).`,
        '',
      );
    }
  }
  return out;
}
