// Early-stopping rules (src/plan/scheduler.ts), against results worked out by hand from Ray Tune's
// ASHAScheduler and MedianStoppingRule.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { createScheduler, median, percentile, rungEpochs, type SchedulerConfig } from '../../src/plan/scheduler.ts';

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

test.run();
