// Early stopping of a sweep's trials: the decision rules, pure (no I/O, no clock). A learning stage
// reports a metric after each of its epochs; the scheduler says whether the trial goes on. The rules
// are Ray Tune's, with its names and defaults, so that a Ray user reads the settings as they expect:
//
// - `asha`: asynchronous successive halving (Ray's ASHAScheduler, Li et al. 2018). Rungs at
//   grace_period · reduction_factor^k epochs (up to max_t). A trial reaching a rung is compared with
//   the trials that reached it before: below the (1 − 1/reduction_factor) quantile of their results
//   it stops; the first trial at a rung goes on. A trial that reaches max_t stops, as in Ray.
// - `median`: the median stopping rule (Ray's MedianStoppingRule, Golovin et al. 2017). After
//   grace_period epochs a trial stops when its best result so far is worse than the median of the
//   other trials' running means up to the same epoch, once min_samples_required trials are there.
//
// - `asha` with `pause: true`: the promotion form of ASHA (Li et al. 2020, Algorithm 2). A trial
//   reaching a rung pauses there (its checkpoint kept) unless it is already among the best
//   floor(n / reduction_factor) of the n trials that reached the rung; a paused trial resumes from
//   its checkpoint when later results put it there. When nothing else can run, the sweep promotes
//   the best paused trial of the highest rung short of its quota, ceil(n / reduction_factor), so
//   that a finite sweep ends with trials that ran to max_t. It costs what the stopping form costs
//   per epoch, but never runs a trial to the end only because it came first (the stopping form
//   lets the first trials at a rung through, with nothing to compare them with).
//
// Time is counted as Ray's training_iteration: the epochs the stage has run, 1, 2, … (not the
// Keras epoch index, which continues from the head's epochs in fine-tune).

export type SchedulerType = 'asha' | 'median';

export interface SchedulerConfig {
  type: SchedulerType;
  /** The metric reported per epoch, e.g. `val_accuracy`. */
  metric: string;
  mode: 'max' | 'min';
  /** The stage whose epochs are watched (a fine-tune or train-head stage of the pipeline). */
  stage: string;
  /** Epochs a trial runs before it can be stopped (Ray: grace_period). */
  gracePeriod: number;
  /** asha: 1/reduction_factor of the trials go on at each rung (Ray's default 4). */
  reductionFactor: number;
  /** asha: the most epochs a trial runs, as Ray's max_t (default: the stage's epochs); rungs up to it. */
  maxT?: number;
  /** median: how many other trials must have reached the epoch before one is compared (Ray's default 3). */
  minSamplesRequired: number;
  /** asha: trials below the cut pause at their rung and may resume from their checkpoint (the promotion form). */
  pause?: boolean;
}

export type Decision = 'continue' | 'stop';

export interface Scheduler {
  readonly config: SchedulerConfig;
  /** A trial's result after `iteration` epochs (1-based). NaN counts as the worst result. */
  onResult(trial: string, iteration: number, value: number): Decision;
}

export function createScheduler(config: SchedulerConfig, epochs: number): Scheduler {
  switch (config.type) {
    case 'asha':
      return config.pause ? new PausingAsha(config, config.maxT ?? epochs) : new Asha(config, config.maxT ?? epochs);
    case 'median':
      return new MedianStopping(config);
    default: {
      const never: never = config.type;
      throw new Error(`bug: scheduler ${String(never)}`);
    }
  }
}

/** Higher is better after this: results are compared as sign · value (Ray's metric_op). */
function signed(config: SchedulerConfig, value: number): number {
  if (Number.isNaN(value)) return -Infinity;
  return config.mode === 'max' ? value : -value;
}

/** The rung epochs of ASHA for grace period, reduction factor and max_t, lowest first. */
export function rungEpochs(gracePeriod: number, reductionFactor: number, maxT: number): number[] {
  // Ray: max_rungs = int(log(max_t / grace_period) / log(rf) + 1); milestones grace·rf^k, k < max_rungs.
  const count = Math.floor(Math.log(maxT / gracePeriod) / Math.log(reductionFactor) + 1 + 1e-9);
  const rungs: number[] = [];
  for (let k = 0; k < count; k++) rungs.push(gracePeriod * reductionFactor ** k);
  return rungs;
}

/** numpy's percentile with linear interpolation (the default of np.nanpercentile). */
export function percentile(values: readonly number[], q: number): number {
  const sorted = [...values].sort((a, b) => a - b);
  if (sorted.length === 0) return NaN;
  const pos = (q / 100) * (sorted.length - 1);
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  const a = sorted[lo]!;
  const b = sorted[hi]!;
  if (a === b) return a; // also ±Infinity, where a + (b − a)·0 would be NaN
  return a + (b - a) * (pos - lo);
}

export function median(values: readonly number[]): number {
  return percentile(values, 50);
}

class Asha implements Scheduler {
  /** Highest rung first, as Ray walks them: a trial is recorded at the highest rung it reached. */
  private readonly rungs: Array<{ epoch: number; recorded: Map<string, number> }>;

  constructor(readonly config: SchedulerConfig, private readonly maxT: number) {
    this.rungs = rungEpochs(config.gracePeriod, config.reductionFactor, maxT)
      .reverse()
      .map((epoch) => ({ epoch, recorded: new Map<string, number>() }));
  }

  onResult(trial: string, iteration: number, value: number): Decision {
    const result = signed(this.config, value);
    // As Ray's: a trial that reached max_t stops there (whatever its rung says).
    const atMax = iteration >= this.maxT;
    for (const rung of this.rungs) {
      if (iteration < rung.epoch || rung.recorded.has(trial)) continue;
      const others = [...rung.recorded.values()];
      const cutoff = others.length > 0 ? percentile(others, (1 - 1 / this.config.reductionFactor) * 100) : undefined;
      rung.recorded.set(trial, result);
      return atMax || (cutoff !== undefined && result < cutoff) ? 'stop' : 'continue';
    }
    return atMax ? 'stop' : 'continue';
  }
}

class MedianStopping implements Scheduler {
  private readonly results = new Map<string, Array<{ iteration: number; value: number }>>();

  constructor(readonly config: SchedulerConfig) {}

  onResult(trial: string, iteration: number, value: number): Decision {
    const own = this.results.get(trial) ?? [];
    own.push({ iteration, value: signed(this.config, value) });
    this.results.set(trial, own);
    if (iteration < this.config.gracePeriod) return 'continue';
    const others = [...this.results].filter(([id, rs]) => id !== trial && (rs.at(-1)?.iteration ?? 0) >= iteration).map(([, rs]) => rs);
    if (others.length < this.config.minSamplesRequired) return 'continue';
    const means = others.map((rs) => {
      const scoped = rs.filter((r) => r.iteration >= this.config.gracePeriod && r.iteration <= iteration);
      return scoped.reduce((sum, r) => sum + r.value, 0) / scoped.length;
    });
    const best = Math.max(...own.map((r) => r.value));
    return best < median(means) ? 'stop' : 'continue';
  }
}

/**
 * ASHA's promotion form: 'stop' at a rung means *paused* (resumable), and `promotion` names the
 * paused trials that go on. The caller says which trials are paused and waiting (a trial that was
 * stopped in an earlier sweep and is not running now cannot be promoted in this one).
 */
export class PausingAsha implements Scheduler {
  /** Lowest rung first. `promoted`: trials that went on past the rung (promoted, or ran through it). */
  private readonly rungs: Array<{ epoch: number; recorded: Map<string, number>; promoted: Set<string> }>;

  constructor(readonly config: SchedulerConfig, private readonly maxT: number) {
    this.rungs = rungEpochs(config.gracePeriod, config.reductionFactor, maxT)
      .filter((epoch) => epoch < maxT)
      .map((epoch) => ({ epoch, recorded: new Map<string, number>(), promoted: new Set<string>() }));
  }

  onResult(trial: string, iteration: number, value: number): Decision {
    // A trial reporting past a rung went on from it (promoted earlier, or a complete trial replayed).
    for (const rung of this.rungs) if (iteration > rung.epoch && rung.recorded.has(trial)) rung.promoted.add(trial);
    if (iteration >= this.maxT) return 'stop';
    const rung = this.rungs.find((r) => r.epoch === iteration);
    if (!rung) return 'continue';
    if (!rung.recorded.has(trial)) rung.recorded.set(trial, signed(this.config, value));
    if (rung.promoted.has(trial)) return 'continue';
    // In the quota now: it goes on at once (its own promotion, without a pause).
    if (this.candidates(rung, Math.floor(rung.recorded.size / this.config.reductionFactor)).includes(trial)) {
      rung.promoted.add(trial);
      return 'continue';
    }
    return 'stop';
  }

  /**
   * A paused trial to resume, marked promoted, or undefined. Highest rung first; a rung promotes
   * up to floor(n / reduction_factor) of its n trials, or ceil(…) when `final` (nothing else can
   * run: without it a finite sweep would leave its best trials paused short of max_t).
   */
  promotion(paused: ReadonlySet<string>, final: boolean): string | undefined {
    for (const rung of [...this.rungs].reverse()) {
      const n = rung.recorded.size;
      const quota = final ? Math.ceil(n / this.config.reductionFactor) : Math.floor(n / this.config.reductionFactor);
      const trial = this.candidates(rung, quota).find((t) => paused.has(t) && this.pausedAt(t) === rung.epoch);
      if (trial !== undefined) {
        rung.promoted.add(trial);
        return trial;
      }
    }
    return undefined;
  }

  /** The rung a trial is paused at: the highest it reached and was not promoted from. */
  pausedAt(trial: string): number | undefined {
    const reached = this.rungs.filter((r) => r.recorded.has(trial));
    const top = reached.at(-1);
    return top && !top.promoted.has(trial) ? top.epoch : undefined;
  }

  /** The best `quota` of a rung's trials that were not promoted yet, once the promoted ones fill their part of it. */
  private candidates(rung: { recorded: Map<string, number>; promoted: Set<string> }, quota: number): string[] {
    const free = quota - rung.promoted.size;
    if (free <= 0) return [];
    // Best first; ties by arrival (Map order), as a sort is stable.
    const ranked = [...rung.recorded].sort((a, b) => b[1] - a[1]).map(([t]) => t);
    return ranked.slice(0, quota).filter((t) => !rung.promoted.has(t)).slice(0, free);
  }
}
