// The contract between the runner and a stage kind (one file per kind under stages/).
//
// A stage kind is a pure description plus a `run` function. The runner validates the stage's
// parameters against `params` (JSON schema, ajv), hashes the files named by `inputPaths`,
// fingerprints everything, and, on a cache miss, calls `run` in a child process with a context
// whose `outDir` is a private temporary directory. When `run` resolves, the directory is moved into
// the content-addressed cache atomically; when it throws, nothing is published.

import type { ParamsSchema } from './params-schema.ts';

export type { ParamsOf, ParamsSchema } from './params-schema.ts';

/** The TensorFlow.js package a run uses: 'cpu' = @tensorflow/tfjs-node, 'gpu' = @tensorflow/tfjs-node-gpu. */
export type Flavour = 'cpu' | 'gpu';

/** A flavour as a pipeline or `--backend` asks for it: 'auto' = gpu when set up and a GPU is visible. */
export type RequestedFlavour = Flavour | 'auto';

/** Where a stage runs. `cpu` is a count of CPU slots ('all' = every slot); `gpu` a count of GPUs. */
export interface Resources {
  cpu?: number | 'all';
  gpu?: number;
}

export interface StageKind<P = Record<string, unknown>> {
  /** The name used in pipeline files: `kind: extract-features`. */
  name: string;
  /** Bump whenever a change to `run` can change its artifacts: it is part of the fingerprint. */
  version: number;
  description: string;
  /** The one source of the parameters: types (ParamsOf), defaults (applied by ajv), constraints. */
  params: ParamsSchema;
  /**
   * Input slots: slot name -> the kinds whose artifacts it accepts. A pipeline names upstream
   * stages in `needs:`; each slot is bound to the one needed stage of an accepted kind (or
   * explicitly, `needs: {slot: stage}`). A slot ending in `?` is optional.
   */
  inputs: Record<string, readonly string[]>;
  /**
   * Local files or directories among the (resolved) params whose content is an input: they are
   * hashed into the fingerprint. Paths are resolved against the pipeline file's directory.
   */
  inputPaths?: (params: P) => string[];
  /**
   * The parameters as they enter the fingerprint, when two values can give the same artifacts:
   * e.g. extract-features maps `fine_tune_at` to the block boundary it implies, so fine_tune_at
   * 100 and 101 share one cache entry. Default: the resolved params as they are.
   */
  fingerprintParams?: (params: P) => Record<string, unknown>;
  /** True when results depend on the TensorFlow runtime (tfjs version, native backend flavour). */
  usesTensorflow: boolean;
  /** Default resources; a stage may override them in the pipeline (`resources:`). */
  resources?: Resources;
  run(ctx: StageContext<P>): Promise<void>;
  /**
   * Declares that the kind maps over its input rows, so that a queued run (`--shards N`) can split
   * it into shard jobs on several workers. Shard `index` of `count` writes a part into its own
   * `outDir`; `merge` then writes, from the parts in shard order, the artifact `run` would have
   * written, byte for byte: the cache key does not depend on the number of shards.
   */
  shard?: ShardedPass<P>;
}

/** Which part of a sharded pass a shard job computes: shard `index` (0-based) of `count`. */
export interface Shard {
  index: number;
  count: number;
}

export interface ShardedPass<P = Record<string, unknown>> {
  /** Computes shard `shard.index` of `shard.count` into `ctx.outDir` (a part, not the artifact). */
  run(ctx: StageContext<P>, shard: Shard): Promise<void>;
  /**
   * Writes the artifact into `ctx.outDir` from `parts` (the parts' directories, in shard order). No
   * TensorFlow: merging is file work. It reports the stage's summary and metrics for the whole pass.
   */
  merge(ctx: StageContext<P>, parts: string[]): Promise<void>;
}

/**
 * The contiguous range [start, end) of `total` items that shard `index` of `count` takes: equal
 * counts. With fewer items than shards, each item is a shard's and the other shards get none.
 */
export function shardRange(total: number, shard: Shard): { start: number; end: number } {
  return { start: Math.floor((total * shard.index) / shard.count), end: Math.floor((total * (shard.index + 1)) / shard.count) };
}

/**
 * The contiguous range [start, end) of the items that shard `index` of `count` takes when item i
 * costs `costs[i]`: the shards take about equal costs rather than equal counts. The list is cut at
 * the item boundary nearest each mark 1/count, 2/count, … of the whole cost (of two as near, the
 * earlier), so a shard's cost is off its share by less than one item. (Cutting at the last
 * boundary at or before each mark would lean every cut early, and a coarse list, a few batches a
 * shard, could come out less even than equal counts.) Every shard computes its own range from the
 * same list, so the cut is a pure function of it: the ranges cover every item once, in order,
 * whichever shard asks. With equal costs the shards' sizes differ by one at most, as with
 * `shardRange` (the same ranges when `count` divides the items). Each shard gets one item at
 * least when there are as many items as shards; with fewer (or no cost at all) the ranges are
 * `shardRange`'s, one item a shard at most, which is the best a cut can do then.
 */
export function weightedShardRange(costs: readonly number[], shard: Shard): { start: number; end: number } {
  const n = costs.length;
  const prefix = [0];
  for (const [i, cost] of costs.entries()) {
    if (!(cost >= 0 && Number.isFinite(cost))) throw new Error(`bug: item ${i} of a sharded pass costs ${cost}`);
    prefix.push(prefix[i]! + cost);
  }
  const total = prefix[n]!;
  if (n < shard.count || total === 0) return shardRange(n, shard);
  // Running sums of fractional costs drift in the last bits: two boundaries within this of equally
  // near a mark are a tie (equal costs then cut alike whatever the cost).
  const slack = total * 1e-12;
  let cut = 0;
  let b = 0; // the last boundary at or before the mark: prefix[b] <= mark
  const cuts = [0];
  for (let i = 1; i < shard.count; i++) {
    const mark = (total * i) / shard.count;
    while (b < n && prefix[b + 1]! <= mark + slack) b++;
    const nearest = b < n && prefix[b + 1]! - mark < mark - prefix[b]! - slack ? b + 1 : b;
    // Leave one item at least to this shard and to each after it.
    cut = Math.min(Math.max(nearest, cut + 1), n - (shard.count - i));
    cuts.push(cut);
  }
  cuts.push(n);
  return { start: cuts[shard.index]!, end: cuts[shard.index + 1]! };
}

/** Which items of a sharded pass a part holds: [start, end) of the pass's `of`. */
export interface PartRange {
  start: number;
  end: number;
  of: number;
}

/**
 * Checks, before a merge, that `parts` (in shard order, as their shards recorded them) are shards
 * 0…n−1 of n whose ranges of `unit`s (e.g. 'batches') tile the whole pass end to end: parts cut by
 * another rule (another pipe's) would stitch a wrong artifact together.
 */
export function checkPartsTile(parts: ReadonlyArray<{ shard: Shard; range?: PartRange }>, unit: string): void {
  const of = parts[0]?.range?.of;
  parts.forEach(({ shard, range }, i) => {
    if (shard.index !== i || shard.count !== parts.length) {
      throw new Error(`bug: part ${i} of ${parts.length} is shard ${shard.index} of ${shard.count}`);
    }
    const from = i === 0 ? 0 : parts[i - 1]!.range?.end;
    if (!range || range.start !== from || range.of !== of || (i === parts.length - 1 && range.end !== range.of)) {
      const holds = range ? `${unit} ${range.start}–${range.end} of ${range.of}` : `no range of ${unit}`;
      throw new Error(
        `bug: part ${i} of ${parts.length} holds ${holds}, not from ${from}: the parts were cut differently ` +
          '(by pipes of other versions?); --force the stage to compute them again',
      );
    }
  });
}

/** A metric point as MLflow models it: key, value, step, wall-clock timestamp (ms). */
export interface MetricPoint {
  key: string;
  value: number;
  step: number;
  timestamp: number;
}

export interface StageContext<P = Record<string, unknown>> {
  /** This stage's name in the pipeline (for messages only: it is not part of the fingerprint). */
  stageName: string;
  /** Validated parameters with the schema's defaults filled in. */
  params: P;
  /** Slot name -> the upstream stage's artifact directory (read-only). */
  inputs: Record<string, string>;
  /** Where the stage writes its artifacts. Empty at start; published atomically on success. */
  outDir: string;
  /** A scratch directory that is deleted after the stage, whatever happens. */
  tmpDir: string;
  /** A directory that survives across runs for downloads and similar reusable inputs. */
  downloadCacheDir: string;
  /** The tfjs flavour of the run (the pipeline's `backend:`, or `--backend`). */
  flavour: Flavour;
  /**
   * The CPU slots this stage holds (its `resources.cpu`, 'all' = every slot of the runner or
   * worker): how many threads a stage that computes in JS on threads of its own (augment) may
   * keep busy. No other stage runs on them meanwhile. TensorFlow sizes its own thread pools.
   */
  cpus: number;
  /** A line for the run log (and the terminal in verbose mode). */
  log(message: string): void;
  /** Progress of the current step; `total` may be unknown. */
  progress(done: number, total?: number, label?: string): void;
  /** A metric point (per-epoch history uses step = epoch). Stored with the artifacts. */
  metric(key: string, value: number, step?: number): void;
  /**
   * Declares a file under `outDir` (relative path) as a run artifact to show in MLflow, e.g.
   * `plots/learning_curves.png`.
   */
  artifact(relPath: string): void;
  /** Facts for the end-of-run summary and the MLflow note, e.g. {skipped_images: 3}. */
  summary(facts: Record<string, string | number | boolean>): void;
  /**
   * A learning stage calls this after each epoch, once that epoch's metrics are reported: `epoch`
   * counts the epochs this stage has run (1-based), `of` the epochs it would run. Resolves true
   * when a sweep's scheduler stops the trial here (early stopping); the stage then trains no more
   * and writes its outputs as they are, which pipe keeps as a pruned result, apart from the full
   * one. Without a scheduler it resolves false at once; after the last epoch it is always false.
   */
  epochEnd(epoch: number, of: number): Promise<boolean>;
  /**
   * This stage's training checkpoints: a directory kept across runs, one per fingerprint. A
   * learning stage resumes from the newest checkpoint there when it finds one (as if it had never
   * stopped), and, when `write` is true (a sweep's scheduler watches it), saves one after each
   * epoch. pipe removes the directory once the stage's full result is in the cache.
   */
  checkpoints: { dir: string; write: boolean };
}

/**
 * The stage kinds a pipeline can name. The registry (src/stages/index.ts) is one; the use cases pass
 * it down to analysis, so that the layers below never import the stages themselves.
 */
export interface StageKinds {
  readonly names: readonly string[];
  /** The kind named `name`, or undefined when no such kind exists. */
  load(name: string): Promise<StageKind | undefined>;
}
