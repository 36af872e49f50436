// Early-stopping rules (src/plan/scheduler.ts), against results worked out by hand from Ray Tune's
// ASHAScheduler and MedianStoppingRule.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createScheduler, median, PausingAsha, percentile, rungEpochs, type SchedulerConfig } from '../../src/plan/scheduler.ts';

const base: SchedulerConfig = { type: 'asha', metric: 'val_accuracy', mode: 'max', stage: 'fine-tune', gracePeriod: 1, reductionFactor: 2, minSamplesRequired: 3 };

test('rungs: grace_period · reduction_factor^k below max_t, as Ray counts them', () => {
  assert.equal(rungEpochs(1, 2, 4), [1, 2, 4]);
  assert.equal(rungEpochs(1, 3, 9), [1, 3, 9]);
  assert.equal(rungEpochs(1, 4, 10), [1, 4]);
  assert.equal(rungEpochs(2, 2, 10), [2, 4, 8]);
  assert.equal(rungEpochs(3, 2, 2), [], 'grace period beyond max_t: no rung, nobody stops');
});

test('percentile and median interpolate linearly, as numpy does', () => {
  assert.is(percentile([0.5], 50), 0.5);
  assert.is(percentile([0.4, 0.5], 50), 0.45);
  assert.is(percentile([1, 2, 3, 4], 75), 3.25);
  assert.ok(Math.abs(percentile([0.1, 0.9, 0.5], 100 * (1 - 1 / 3)) - 0.6333333333) < 1e-9);
  assert.is(median([3, 1, 2]), 2);
  assert.is(percentile([-Infinity, -Infinity], 50), -Infinity);
});

test('asha: the first trial at a rung goes on; later ones below the top 1/rf stop there', () => {
  const s = createScheduler(base, 4);
  assert.is(s.onResult('a', 1, 0.5), 'continue', 'alone at rung 1');
  assert.is(s.onResult('b', 1, 0.4), 'stop', 'below the median of [0.5]');
  assert.is(s.onResult('c', 1, 0.7), 'continue', 'above the median of [0.5, 0.4] = 0.45');
  assert.is(s.onResult('a', 2, 0.6), 'continue', 'alone at rung 2');
  assert.is(s.onResult('c', 2, 0.59), 'stop', 'below 0.6 at rung 2');
  assert.is(s.onResult('a', 3, 0.1), 'continue', 'no rung at epoch 3: already recorded at rung 2');
  assert.is(s.onResult('a', 4, 0.9), 'stop', 'epoch 4 is max_t (the stage’s epochs): done');
});

test('asha: mode min compares negated results; equal results go on', () => {
  const s = createScheduler({ ...base, mode: 'min', metric: 'val_loss' }, 4);
  assert.is(s.onResult('a', 1, 0.5), 'continue');
  assert.is(s.onResult('b', 1, 0.6), 'stop', 'a higher loss than 0.5');
  assert.is(s.onResult('c', 1, 0.2), 'continue');
  assert.is(s.onResult('d', 1, 0.5), 'continue', 'at the cutoff: median of [-0.5, -0.6, -0.2] is -0.5, not below');
});

test('asha: a trial that reports first past a rung is recorded at the highest rung it reached', () => {
  const s = createScheduler({ ...base, reductionFactor: 3, gracePeriod: 1 }, 9);
  assert.is(s.onResult('a', 3, 0.8), 'continue', 'rung 3, not rung 1');
  assert.is(s.onResult('b', 1, 0.1), 'continue', 'rung 1 is still empty');
  assert.is(s.onResult('c', 3, 0.7), 'stop', 'below the 2/3 quantile of [0.8] at rung 3');
});

test('asha: NaN is the worst result; max_t from the config wins over the stage epochs, and stops every trial there (as Ray)', () => {
  const s = createScheduler({ ...base, maxT: 3 }, 100);
  assert.is(s.onResult('a', 1, 0.5), 'continue');
  assert.is(s.onResult('b', 1, Number.NaN), 'stop');
  assert.is(s.onResult('a', 2, 0.5), 'continue');
  assert.is(s.onResult('c', 2, 0.4), 'stop', 'rung 2 exists (max_t 3)');
  assert.is(s.onResult('a', 3, 0.9), 'stop', 'max_t reached: no rung 4, the trial ends');
  const full = createScheduler(base, 3);
  assert.is(full.onResult('a', 3, 0.9), 'stop', 'at the stage’s last epoch too (a moot decision: the stage is over)');
});

test('median: stop when the best so far is below the median of the others’ running means', () => {
  const s = createScheduler({ ...base, type: 'median', gracePeriod: 1, minSamplesRequired: 2 }, 10);
  assert.is(s.onResult('a', 1, 0.8), 'continue', 'no other trial yet');
  assert.is(s.onResult('a', 2, 0.9), 'continue');
  assert.is(s.onResult('b', 1, 0.6), 'continue', 'one other trial, two required');
  assert.is(s.onResult('b', 2, 0.7), 'continue', 'one other trial at epoch 2');
  assert.is(s.onResult('c', 1, 0.5), 'stop', 'median of a 0.8, b 0.6 is 0.7');
  assert.is(s.onResult('d', 1, 0.75), 'continue', 'median of 0.8, 0.6, 0.5 is 0.6');
  assert.is(s.onResult('d', 2, 0.55), 'continue', 'best 0.75 is the median of the means to epoch 2 (0.85, 0.65)');
  assert.is(s.onResult('e', 1, 0.7), 'continue');
  assert.is(s.onResult('e', 2, 0.6), 'continue', 'best 0.7 above the median of a 0.85, b 0.65, d 0.65 (c never reached epoch 2)');
  assert.is(s.onResult('f', 1, 0.55), 'stop', 'median of 0.8, 0.6, 0.5, 0.75, 0.7 is 0.7');
});

test('median: nothing stops within the grace period; mode min', () => {
  const s = createScheduler({ ...base, type: 'median', gracePeriod: 2, minSamplesRequired: 1, mode: 'min' }, 10);
  assert.is(s.onResult('a', 1, 0.1), 'continue');
  assert.is(s.onResult('a', 2, 0.1), 'continue');
  assert.is(s.onResult('b', 1, 5), 'continue', 'grace period');
  assert.is(s.onResult('b', 2, 0.2), 'stop', 'best loss 0.2 worse than the mean 0.1 over epochs 2..2 of a');
  assert.is(s.onResult('c', 2, 0.05), 'continue');
});

/**
 * A sweep on one slot, as the local runner runs it: trials in order; a paused trial waits and, once
 * promoted, goes back in the queue (behind those already waiting); when the queue is empty, the
 * final promotion. Returns the epochs each trial ran and the order of the attempts.
 */
function simulate(curves: Record<string, number[]>, config: SchedulerConfig, maxT: number): { epochs: Record<string, number>; attempts: string[] } {
  const asha = createScheduler(config, maxT) as PausingAsha;
  const queue = Object.keys(curves);
  const epochs: Record<string, number> = Object.fromEntries(queue.map((t) => [t, 0]));
  const paused = new Set<string>();
  const attempts: string[] = [];
  const wake = (final: boolean) => {
    const next = asha.promotion(paused, final);
    if (next === undefined) return false;
    paused.delete(next);
    queue.push(next);
    return true;
  };
  for (;;) {
    const trial = queue.shift() ?? (wake(true) ? queue.shift() : undefined);
    if (trial === undefined) break;
    attempts.push(trial);
    // A resumed trial tells its last epoch again (its checkpoint's), then trains on.
    for (let e = Math.max(1, epochs[trial]!); e <= maxT; e++) {
      epochs[trial] = e;
      const decision = asha.onResult(trial, e, curves[trial]![e - 1]!);
      while (wake(false));
      if (decision === 'stop') {
        if (e < maxT) paused.add(trial);
        break;
      }
    }
  }
  return { epochs, attempts };
}

test('asha, pause: 12 trials, reduction factor 4: 12 run one epoch, the best 3 run to rung 4, the best of those to the end', () => {
  const config: SchedulerConfig = { ...base, reductionFactor: 4, pause: true };
  // Trial k's accuracy: a level plus a slope (so the ranking at epoch 4 differs from epoch 1's).
  const level = [0.7, 0.5, 0.9, 0.6, 0.8, 0.55, 0.85, 0.65, 0.75, 0.52, 0.88, 0.58];
  const slope = [0.01, 0, 0.001, 0, 0.002, 0, 0.03, 0, 0, 0, 0.002, 0];
  const curves = Object.fromEntries(level.map((l, i) => [`t${i + 1}`, Array.from({ length: 11 }, (_, e) => l + slope[i]! * e)]));
  const { epochs, attempts } = simulate(curves, config, 11);
  // Rung 1: t3 (0.9), t11 (0.88), t7 (0.85) are the best three; at rung 4: t7 (0.85 + 0.09) wins.
  assert.equal(epochs, { t1: 1, t2: 1, t3: 4, t4: 1, t5: 1, t6: 1, t7: 11, t8: 1, t9: 1, t10: 1, t11: 4, t12: 1 });
  assert.is(Object.values(epochs).reduce((a, b) => a + b, 0), 12 + 3 * 3 + 7, 'against 12 × 11 without early stopping');
  assert.is(attempts.length, 12 + 3 + 1, 'every trial once, three promotions to rung 4 and one to the end');
});

test('asha, pause: a paused trial is promoted when later results put it in its rung’s top 1/rf; one in it at once goes on', () => {
  const s = new PausingAsha({ ...base, pause: true }, 4);
  assert.is(s.onResult('a', 1, 0.9), 'stop', 'alone at rung 1: floor(1/2) = 0 go on; a pauses');
  assert.is(s.pausedAt('a'), 1);
  assert.is(s.promotion(new Set(['a']), false), undefined);
  assert.is(s.onResult('b', 1, 0.5), 'stop', 'two at rung 1: one goes on, and it is a');
  assert.is(s.promotion(new Set(['a', 'b']), false), 'a');
  assert.is(s.pausedAt('a'), undefined, 'promoted');
  assert.is(s.promotion(new Set(['b']), false), undefined, 'the quota of rung 1 is used');
  assert.is(s.onResult('a', 1, 0.9), 'continue', 'the resumed trial tells epoch 1 again: promoted, it goes on');
  assert.is(s.onResult('a', 2, 0.95), 'stop', 'alone at rung 2: pauses again');
  assert.is(s.onResult('c', 1, 0.2), 'stop');
  assert.is(s.onResult('d', 1, 0.99), 'continue', 'four at rung 1, two go on: d is in at once');
  assert.is(s.onResult('d', 2, 0.1), 'stop');
  assert.is(s.promotion(new Set(['b', 'c']), false), undefined);
  assert.is(s.promotion(new Set(['a', 'b', 'c', 'd']), false), 'a', 'two at rung 2: a (0.95) goes on');
  assert.is(s.onResult('a', 3, 0.9), 'continue');
  assert.is(s.onResult('a', 4, 0.9), 'stop', 'max_t: done');
  assert.is(s.promotion(new Set(['b', 'c', 'd']), true), undefined, 'final: rung 2 has its one, rung 1 its two: the rest end paused');
});

test('asha, pause: the final promotion rounds the quota up, highest rung first; a trial that ran past a rung counts as promoted there', () => {
  const s = new PausingAsha({ ...base, reductionFactor: 4, pause: true }, 8);
  s.onResult('done', 1, 0.1);
  s.onResult('done', 8, 0.1); // a complete trial from the cache, replayed: it went on from rung 1
  assert.is(s.onResult('x', 1, 0.8), 'stop');
  assert.is(s.onResult('y', 1, 0.7), 'stop');
  assert.is(s.promotion(new Set(['x', 'y']), false), undefined, 'floor(3/4) = 0 and `done` went on already');
  assert.is(s.promotion(new Set(['x', 'y']), true), undefined, 'ceil(3/4) = 1: taken by `done`');
  const t = new PausingAsha({ ...base, reductionFactor: 4, pause: true }, 8);
  assert.is(t.onResult('x', 1, 0.8), 'stop');
  assert.is(t.onResult('y', 1, 0.7), 'stop');
  assert.is(t.promotion(new Set(['x', 'y']), true), 'x', 'nothing else to run: the best paused one goes on');
  assert.is(t.onResult('x', 1, 0.8), 'continue');
  assert.is(t.onResult('x', 4, 0.8), 'stop', 'rung 4');
  assert.is(t.promotion(new Set(['x', 'y']), true), 'x', 'the highest rung first');
});

test.run();
