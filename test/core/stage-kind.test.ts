// The cut of a sharded pass (src/core/stage-kind.ts): each shard computes its own range of the
// pass's batches from the same list, so the ranges must cover every batch once, in order, whoever
// asks; weighted by cost, a heavier stretch of the list is cut into more, shorter ranges.
import fc from 'fast-check';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { checkPartsTile, shardRange, weightedShardRange } from '../../src/core/stage-kind.ts';

type Range = { start: number; end: number };

/** Every shard's range, as each shard computes it on its own. */
const rangesOf = (costs: number[], count: number): Range[] => Array.from({ length: count }, (_, index) => weightedShardRange(costs, { index, count }));
const equalRanges = (total: number, count: number): Range[] => Array.from({ length: count }, (_, index) => shardRange(total, { index, count }));
const costOf = (costs: number[], r: Range) => costs.slice(r.start, r.end).reduce((a, b) => a + b, 0);

/** The ranges are contiguous, in order, from 0 to n: every item once. */
function assertCovers(ranges: Range[], n: number): void {
  assert.is(ranges[0]!.start, 0);
  assert.is(ranges.at(-1)!.end, n);
  ranges.forEach((r, i) => {
    assert.ok(r.start <= r.end, `shard ${i}: ${r.start}–${r.end}`);
    if (i > 0) assert.is(r.start, ranges[i - 1]!.end, `shard ${i} starts where shard ${i - 1} ends`);
  });
}

test("equal costs: shardRange's sizes (its very ranges when the count divides the items), whatever the cost, fractional included", () => {
  const sizes = (ranges: Range[]) => ranges.map((r) => r.end - r.start).sort((a, b) => a - b);
  for (let n = 0; n <= 40; n++) {
    for (let count = 1; count <= 9; count++) {
      const unit = rangesOf(Array(n).fill(1), count);
      assert.equal(sizes(unit), sizes(equalRanges(n, count)), `${n} items, ${count} shards`);
      if (n % count === 0) assert.equal(unit, equalRanges(n, count), `${n} items, ${count} shards`);
      // The cut nearest each mark, of two as near the earlier: n·i/count rounded half down.
      const cuts = Array.from({ length: count - 1 }, (_, k) => Math.floor((2 * n * (k + 1) + count - 1) / (2 * count)));
      if (n >= count) assert.equal(unit.slice(1).map((r) => r.start), cuts, `${n} items, ${count} shards`);
      // Running sums of fractional costs drift in their last bits; the cut does not.
      for (const cost of [32, 38.4, 0.1, 1 / 3]) assert.equal(rangesOf(Array(n).fill(cost), count), unit, `${n} items of cost ${cost}, ${count} shards`);
    }
  }
});

test('a heavier first half is cut earlier; a heavier second half later', () => {
  assert.equal(rangesOf([2, 2, 2, 2, 1, 1, 1, 1], 2), [{ start: 0, end: 3 }, { start: 3, end: 8 }]);
  assert.equal(rangesOf([1, 1, 1, 1, 2, 2, 2, 2], 2), [{ start: 0, end: 5 }, { start: 5, end: 8 }]);
  assert.equal(equalRanges(8, 2), [{ start: 0, end: 4 }, { start: 4, end: 8 }]);
  // Three shards: the heavy item alone, the rest shared.
  assert.equal(rangesOf([1, 1, 6, 1, 1, 1, 1], 3), [{ start: 0, end: 2 }, { start: 2, end: 3 }, { start: 3, end: 7 }]);
  // The boundary nearest the mark, not the last before it: marks 9.07 and 18.13 of 27.2.
  assert.equal(rangesOf([4.8, 4.8, 4.8, 4.8, 4, 4], 3), [{ start: 0, end: 2 }, { start: 2, end: 4 }, { start: 4, end: 6 }]);
  // test/queue/shards.test.ts's pass in batches of 3 (16 made views, 4 + 4 read rows), cut unlike equal counts (3, 6).
  assert.equal(rangesOf([3.6, 3.6, 3.6, 3.6, 3.6, 1.2, 3, 1, 3, 1], 3), [{ start: 0, end: 3 }, { start: 3, end: 5 }, { start: 5, end: 10 }]);
});

test("the 48,000-image pass in two shards: made views weigh 1.2, the cut sits in the views, the costs within a batch's", () => {
  // 33,600 made views (1,050 batches of 32, 38.4 each), then validation and test, 7,200 read rows each.
  const costs = [...Array(1050).fill(32 * 1.2), ...Array(450).fill(32)];
  const [a, b] = rangesOf(costs, 2);
  assert.equal([a, b], [{ start: 0, end: 712 }, { start: 712, end: 1500 }]);
  const total = costOf(costs, { start: 0, end: 1500 });
  assert.ok(Math.abs(costOf(costs, a!) - costOf(costs, b!)) <= 2 * 38.4, `${costOf(costs, a!)} against ${costOf(costs, b!)}`);
  // Equal counts (the old cut) put 750 batches of made views, 28,800 of the cost units, in the first.
  assert.ok(costOf(costs, equalRanges(1500, 2)[0]!) / total > 0.52);
});

test('edge cases: one shard takes everything; no items; fewer items than shards; zero costs', () => {
  assert.equal(rangesOf([3, 1, 2], 1), [{ start: 0, end: 3 }]);
  assert.equal(rangesOf([], 1), [{ start: 0, end: 0 }]);
  assert.equal(rangesOf([], 3), [{ start: 0, end: 0 }, { start: 0, end: 0 }, { start: 0, end: 0 }]);
  // Fewer items than shards: one item a shard at most (as shardRange), however the costs go.
  assert.equal(rangesOf([100, 1], 3), equalRanges(2, 3));
  assert.equal(rangesOf([1, 1, 100], 5), equalRanges(3, 5));
  assert.ok(rangesOf([1, 1, 100], 5).every((r) => r.end - r.start <= 1));
  // As many items as shards: one each, whatever the costs.
  assert.equal(rangesOf([100, 1, 1], 3), [{ start: 0, end: 1 }, { start: 1, end: 2 }, { start: 2, end: 3 }]);
  assert.equal(rangesOf([1, 1, 100], 3), [{ start: 0, end: 1 }, { start: 1, end: 2 }, { start: 2, end: 3 }]);
  // A heavy last item does not leave the shards before it empty.
  assert.equal(rangesOf([1, 1, 1, 100], 3), [{ start: 0, end: 2 }, { start: 2, end: 3 }, { start: 3, end: 4 }]);
  // No cost at all: equal counts.
  assert.equal(rangesOf([0, 0, 0, 0], 2), equalRanges(4, 2));
  assert.throws(() => rangesOf([1, -1], 2), /^bug: item 1 of a sharded pass costs -1/);
  assert.throws(() => rangesOf([1, Number.NaN], 2), /^bug: /);
});

test('any costs, any shard count: every item once, in order; a shard each when there are enough; each cut within half an item of its mark; whichever shard asks', () => {
  const costs = fc.array(fc.oneof(fc.integer({ min: 0, max: 100 }), fc.double({ min: 0, max: 100, noNaN: true })), { maxLength: 60 });
  fc.assert(
    fc.property(costs, fc.integer({ min: 1, max: 12 }), (cs, count) => {
      const ranges = rangesOf(cs, count);
      assertCovers(ranges, cs.length);
      if (cs.length >= count) assert.ok(ranges.every((r) => r.end > r.start), JSON.stringify(ranges));
      const total = cs.reduce((a, b) => a + b, 0);
      const max = Math.max(0, ...cs);
      for (const r of ranges) assert.ok(costOf(cs, r) <= total / count + max + 1e-9 * (total + 1), `${JSON.stringify(r)} of ${JSON.stringify(cs)}`);
      // Within half an item of each mark, unless a shard would be left empty.
      if (cs.length >= count) {
        ranges.slice(1).forEach((r, k) => {
          const at = costOf(cs, { start: 0, end: r.start });
          const mark = (total * (k + 1)) / count;
          const kept = r.start === ranges[k]!.start + 1 || r.start === cs.length - (count - k - 1);
          assert.ok(kept || Math.abs(at - mark) <= Math.max(cs[r.start - 1] ?? 0, cs[r.start] ?? 0) / 2 + 1e-9 * (total + 1), `cut ${k + 1} at ${r.start} of ${JSON.stringify(cs)}`);
        });
      }
      // The same list gives the same ranges, whichever shard asks first.
      assert.equal(Array.from({ length: count }, (_, i) => count - 1 - i).map((index) => weightedShardRange(cs, { index, count })).reverse(), ranges);
    }),
    { numRuns: 500 },
  );
});

test('checkPartsTile: shards 0…n−1 of n whose ranges follow each other to the end; anything else refused', () => {
  const part = (index: number, count: number, start: number, end: number, of = 10) => ({ shard: { index, count }, range: { start, end, of } });
  checkPartsTile([part(0, 3, 0, 4), part(1, 3, 4, 4), part(2, 3, 4, 10)], 'batches');
  checkPartsTile([part(0, 1, 0, 10)], 'batches');
  const refused: Array<[ReturnType<typeof part>[], RegExp]> = [
    [[part(0, 2, 0, 4), part(0, 2, 4, 10)], /^bug: part 1 of 2 is shard 0 of 2$/],
    [[part(0, 3, 0, 4), part(1, 3, 4, 10)], /^bug: part 0 of 2 is shard 0 of 3$/],
    [[part(0, 2, 0, 4), part(1, 2, 5, 10)], /^bug: part 1 of 2 holds images 5–10 of 10, not from 4: the parts were cut differently/],
    [[part(0, 2, 0, 4), part(1, 2, 4, 9)], /^bug: part 1 of 2 holds images 4–9 of 10, not from 4/],
    [[part(0, 2, 0, 4), part(1, 2, 4, 12, 12)], /^bug: part 1 of 2 holds images 4–12 of 12, not from 4/],
  ];
  for (const [parts, message] of refused) assert.throws(() => checkPartsTile(parts, 'images'), message);
  assert.throws(() => checkPartsTile([{ shard: { index: 0, count: 1 } }], 'batches'), /^bug: part 0 of 1 holds no range of batches, not from 0/);
});

test.run();
