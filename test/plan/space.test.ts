// Sampled search spaces: the Halton design, the distributions, reading the pipeline and -S forms.
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { halton, makeDistribution, parseDistributionArg, readDistribution, sampleAt, valueAt, type Distribution } from '../../src/plan/space.ts';

test('halton: the radical inverse in base 2 and 3', () => {
  assert.equal([1, 2, 3, 4, 5].map((i) => halton(i, 2)), [0.5, 0.25, 0.75, 0.125, 0.625]);
  assert.equal([1, 2, 3].map((i) => Number(halton(i, 3).toFixed(6))), [0.333333, 0.666667, 0.111111]);
});

test('sampleAt depends only on the space, the index and the seed: 2N samples start with the N', () => {
  const dims: Distribution[] = [{ kind: 'loguniform', low: 1e-6, high: 1e-4 }, { kind: 'choice', values: [60, 100, 130] }];
  const first = Array.from({ length: 12 }, (_, i) => sampleAt(dims, i, 7));
  const more = Array.from({ length: 24 }, (_, i) => sampleAt(dims, i, 7));
  assert.equal(more.slice(0, 12), first);
  const other = Array.from({ length: 12 }, (_, i) => sampleAt(dims, i, 8));
  assert.not.equal(other, first);
});

test('12 quasi-random log-uniform samples cover both decades and every choice evenly', () => {
  const dims: Distribution[] = [{ kind: 'loguniform', low: 1e-6, high: 1e-4 }, { kind: 'choice', values: [60, 100, 130] }];
  const points = Array.from({ length: 12 }, (_, i) => sampleAt(dims, i, 0));
  const lrs = points.map((p) => p[0] as number);
  assert.ok(lrs.every((lr) => lr >= 1e-6 && lr <= 1e-4), String(lrs));
  assert.is(lrs.filter((lr) => lr < 1e-5).length, 6, `half in each decade: ${lrs}`);
  const counts = [60, 100, 130].map((v) => points.filter((p) => p[1] === v).length);
  assert.equal(counts, [4, 4, 4]);
  // Quartiles of the log scale each get 3 of 12 (a random draw would often leave one with 0 or 1).
  const quartiles = [0, 1, 2, 3].map((q) => lrs.filter((lr) => Math.floor((Math.log10(lr) + 6) * 2) === q).length);
  assert.equal(quartiles, [3, 3, 3, 3]);
  // A seed shifts the design: still within one of even for every seed tried.
  for (const seed of [1, 2, 3, 42, 1234]) {
    const shifted = Array.from({ length: 12 }, (_, i) => sampleAt(dims, i, seed));
    const low = shifted.filter((p) => (p[0] as number) < 1e-5).length;
    assert.ok(low >= 5 && low <= 7, `seed ${seed}: ${low} of 12 below 1e-5`);
    for (const v of [60, 100, 130]) {
      const n = shifted.filter((p) => p[1] === v).length;
      assert.ok(n >= 3 && n <= 5, `seed ${seed}: ${n} of 12 at ${v}`);
    }
  }
});

test('valueAt: bounds, int ranges inclusive, 6 significant digits', () => {
  assert.is(valueAt({ kind: 'uniform', low: 0.1, high: 0.5 }, 0), 0.1);
  assert.is(valueAt({ kind: 'uniform', low: 0, high: 1 }, 1 / 3), 0.333333);
  assert.is(valueAt({ kind: 'loguniform', low: 1e-6, high: 1e-4 }, 0.5), 1e-5);
  const ints = Array.from({ length: 100 }, (_, i) => valueAt({ kind: 'int', low: 5, high: 7 }, i / 100));
  assert.equal([...new Set(ints)].sort(), [5, 6, 7]);
  assert.is(valueAt({ kind: 'int', low: 5, high: 7 }, 0.9999999), 7);
  assert.is(valueAt({ kind: 'choice', values: ['a', 'b'] }, 0.5), 'b');
});

test('readDistribution: the pipeline form, and what is wrong with a bad one', () => {
  assert.equal(readDistribution({ loguniform: [1e-6, 1e-4] }), { kind: 'loguniform', low: 1e-6, high: 1e-4 });
  assert.equal(readDistribution({ choice: [60, 100] }), { kind: 'choice', values: [60, 100] });
  assert.is(readDistribution({ loguniform: [0, 1] }), 'loguniform: expected bounds > 0, got [0, 1]');
  assert.is(readDistribution({ uniform: [2, 1] }), 'uniform: expected low < high, got [2, 1]');
  assert.is(readDistribution({ int: [1.5, 3] }), 'int: expected whole-number bounds, got [1.5, 3]');
  assert.is(readDistribution({ normal: [0, 1] }), "unknown distribution 'normal' (expected choice, uniform, loguniform, int)");
  assert.match(String(readDistribution({ uniform: [0, 1], int: [0, 1] })), /^expected exactly one of/);
  assert.is(makeDistribution('choice', []), 'choice: expected at least one value');
});

test('parseDistributionArg: the -S forms; a plain list is not a distribution', () => {
  assert.equal(parseDistributionArg('loguniform(1e-6, 1e-4)'), { kind: 'loguniform', args: ['1e-6', '1e-4'] });
  assert.equal(parseDistributionArg('choice(60,100,130)'), { kind: 'choice', args: ['60', '100', '130'] });
  assert.is(parseDistributionArg('60,100,130'), undefined);
  assert.is(parseDistributionArg('gauss(0,1)'), "unknown distribution 'gauss(…)' (expected choice(…), uniform(…), loguniform(…), int(…))");
  assert.is(parseDistributionArg('int()'), 'int(): expected values, e.g. int(5,15)');
});

test.run();
