import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import * as path from 'node:path';
import {
  dequantizeRows,
  FeatureReader,
  FeatureWriter,
  featureFileName,
  float16ToFloat32,
  float32ToFloat16,
  quantizeRows,
  readFeatures,
  rowBytesOf,
  toFloat16Bits,
  type FeaturesMeta,
} from '../../src/ml/features.ts';
import { createRng } from '../../src/ml/augment.ts';
import { loadTf } from '../../src/ml/tf.ts';

// float32ToFloat16 is the array form of toFloat16Bits, written as one loop over the bits: it must give
// the same half for every float32. toFloat16Bits itself is checked against known halves in
// test/stages/extract-features.test.ts.

/** Float32 values with these bit patterns. */
function fromBits(patterns: ArrayLike<number>): Float32Array {
  return new Float32Array(Uint32Array.from(patterns).buffer);
}

/** The first pattern where the array encoder and the scalar one differ, if any. */
function firstDifference(values: Float32Array, offset = 0): string | undefined {
  // An offset view: the encoder must read the values' own bytes, not the start of their buffer.
  const padded = new Float32Array(values.length + offset);
  padded.set(values, offset);
  const view = padded.subarray(offset);
  const encoded = float32ToFloat16(view);
  const bits = new Uint32Array(view.buffer, view.byteOffset, view.length);
  for (let i = 0; i < view.length; i++) {
    const expected = toFloat16Bits(view[i]!);
    if (encoded[i] !== expected) {
      return `0x${bits[i]!.toString(16).padStart(8, '0')} (${view[i]}): 0x${encoded[i]!.toString(16)}, expected 0x${expected.toString(16)}`;
    }
  }
  return undefined;
}

/** Bit patterns around every edge of the conversion: each exponent with mantissas at the rounding ties. */
function edgePatterns(): number[] {
  const mantissas = [0, 1, 2, 0xfff, 0x1000, 0x1001, 0x1fff, 0x2000, 0x3000, 0x5000, 0x7fe000, 0x7fefff, 0x7ff000, 0x7ff001, 0x7fffff, 0x400000, 0x400001];
  // a subnormal half drops 14..24 bits: its ties are at every power of two in the mantissa
  for (let bit = 0; bit < 23; bit++) mantissas.push(1 << bit, (1 << bit) - 1, (1 << bit) + 1, (3 << bit) & 0x7fffff);
  const patterns: number[] = [];
  for (let exponent = 0; exponent < 256; exponent++) {
    for (const mantissa of mantissas) {
      for (const sign of [0, 0x80000000]) patterns.push((sign | (exponent << 23) | (mantissa & 0x7fffff)) >>> 0);
    }
  }
  // the branch boundaries, one ulp either side: 2^-25, 2^-14, 2^16 (overflow), Infinity
  for (const edge of [0x33000000, 0x38800000, 0x47800000, 0x477ff000, 0x7f800000]) patterns.push(edge - 1, edge, edge + 1);
  return patterns;
}

test('float32ToFloat16 equals toFloat16Bits on zeros, subnormals, Infinity, NaNs and every rounding edge', () => {
  const specials = fromBits([
    0x00000000, 0x80000000, // ±0
    0x00000001, 0x807fffff, // float32 subnormals
    0x7f800000, 0xff800000, // ±Infinity
    0x7fc00000, 0xffc00000, 0x7f800001, 0xff800001, 0x7fffffff, 0xffffffff, 0x7fa00000, // quiet and signalling NaNs, both signs
    0x477fe000, 0x477fefff, 0x477ff000, 0x477fffff, 0x47800000, 0x7f7fffff, // 65504, up to the overflow to Infinity
  ]);
  assert.is(firstDifference(specials), undefined);
  // the NaNs stay NaNs, with their signs
  const nans = float32ToFloat16(fromBits([0x7fc00000, 0xffc00000, 0x7f800001]));
  assert.equal([...nans], [0x7e00, 0xfe00, 0x7e00]);
  assert.ok([...float16ToFloat32(nans)].every(Number.isNaN));
  const edges = edgePatterns();
  assert.ok(edges.length > 20_000);
  assert.is(firstDifference(fromBits(edges)), undefined);
  assert.is(firstDifference(fromBits(edges), 3), undefined, 'at an offset in its buffer');
});

test('float32ToFloat16 equals toFloat16Bits on millions of random bit patterns', () => {
  const rng = createRng(2026, 16);
  const word = () => Math.floor(rng() * 2 ** 32);
  // Uniform patterns (every exponent, NaNs included) and patterns whose exponent is in the half's range.
  const uniform = Array.from({ length: 2_000_000 }, word);
  const nearHalf = Array.from({ length: 2_000_000 }, () => {
    const exponent = 98 + Math.floor(rng() * 48); // 2^-29 .. 2^18: underflow, subnormal, normal, overflow
    return ((word() & 0x807fffff) | (exponent << 23)) >>> 0;
  });
  assert.is(firstDifference(fromBits(uniform)), undefined);
  assert.is(firstDifference(fromBits(nearHalf)), undefined);
});

test('float32ToFloat16 writes into a given array and leaves the rest of it', () => {
  const out = new Uint16Array(5).fill(0xabcd);
  const result = float32ToFloat16(Float32Array.of(1, -2, 0.1), out.subarray(1, 4));
  assert.equal([...result], [0x3c00, 0xc000, 0x2e66]);
  assert.equal([...out], [0xabcd, 0x3c00, 0xc000, 0x2e66, 0xabcd]);
});

test('FeatureReader.readRowsSync and tensorOfRows: any rows in any order, as the whole-file read gives them, float32, float16 and uint8', async () => {
  const dir = mkdtempSync(path.join(tmpdir(), 'pipe-rows-'));
  const rows = 23;
  const values = Float32Array.from({ length: rows * 6 }, (_, i) => Math.sin(i) * 7);
  for (const dtype of ['float32', 'float16', 'uint8'] as const) {
    const file = featureFileName('boundary', 'views', dtype);
    const writer = await FeatureWriter.create(path.join(dir, file), [1, 2, 3], dtype);
    await writer.append(values);
    await writer.close();
    const meta = {
      boundary: { shape: [1, 2, 3], dtype },
      pooled: null,
      sets: { views: { count: rows, views: 1, boundary: file }, validation: { count: 1, views: 1 }, test: { count: 1, views: 1 } },
    } as unknown as FeaturesMeta;
    const all = await readFeatures(dir, meta, 'views', 'boundary');
    const reader = await FeatureReader.open(dir, meta, 'views', 'boundary');
    try {
      for (const pick of [[0], [22], [5, 6, 7, 8], [22, 0, 3, 3, 4, 21, 22], Array.from({ length: 23 }, (_, i) => (i * 7) % 23)]) {
        const got = reader.readRowsSync(pick);
        const want = new Float32Array(pick.length * 6);
        pick.forEach((row, k) => want.set(all.data.subarray(row * 6, row * 6 + 6), k * 6));
        assert.equal(Array.from(got), Array.from(want), `${dtype}: rows ${pick.join(',')}`);
      }
      // Every stored value is the written one, up to the dtype's rounding.
      const tolerance = { float32: 0, float16: 7 * 2 ** -11, uint8: 14 / 510 }[dtype];
      const worst = values.reduce((max, v, i) => Math.max(max, Math.abs(v - all.data[i]!)), 0);
      assert.ok(worst <= tolerance, `${dtype}: off by ${worst} > ${tolerance}`);
      assert.throws(() => reader.readRowsSync([23]), /row 23 out of range/);
      // A training batch as a tensor: the same rows, shaped [rows, ...row shape].
      const batch = reader.tensorOfRows(loadTf('cpu'), [4, 2, 2]);
      assert.equal(batch.shape, [3, 1, 2, 3]);
      assert.equal(Array.from(batch.dataSync()), Array.from(reader.readRowsSync([4, 2, 2])), `${dtype}: tensorOfRows`);
      batch.dispose();
    } finally {
      await reader.close();
    }
  }
});


test('8-bit rows: each value within half a step of its channel in its row, the extremes kept, rows independent', () => {
  const channels = 5;
  const positions = 40;
  const rowSize = channels * positions;
  const rows = 7;
  // Channels of very different scales and offsets, one constant channel, one with an outlier.
  const values = new Float32Array(rows * rowSize);
  for (let r = 0; r < rows; r++) {
    for (let p = 0; p < positions; p++) {
      for (let c = 0; c < channels; c++) {
        const scale = [1e-7, 1, 30, 0, 2][c]!; // 1e-7: below half precision's smallest normal
        const offset = [0, -3, 100, 1.7, 0][c]!;
        let v = offset + scale * Math.sin(r * 31 + p * 7 + c * 3);
        if (c === 4 && p === 11) v = 50 + r; // one outlier stretches its channel's range
        values[r * rowSize + p * channels + c] = v;
      }
    }
  }
  const bytes = quantizeRows(values, rowSize, channels);
  assert.is(bytes.length, rows * rowBytesOf([positions, 1, channels], 'uint8'));
  assert.is(rowBytesOf([10, 10, 96], 'uint8'), 9600 + 8 * 96);
  const back = dequantizeRows(bytes, rowSize, channels);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < channels; c++) {
      let lo = Infinity;
      let hi = -Infinity;
      for (let p = 0; p < positions; p++) {
        const v = values[r * rowSize + p * channels + c]!;
        lo = Math.min(lo, v);
        hi = Math.max(hi, v);
      }
      // Half a step (range / 510), plus float32 rounding.
      const bound = ((hi - lo) / 510) * (1 + 1e-5) + (Math.abs(lo) + Math.abs(hi)) * 2 ** -22;
      for (let p = 0; p < positions; p++) {
        const i = r * rowSize + p * channels + c;
        assert.ok(Math.abs(back[i]! - values[i]!) <= bound, `row ${r} channel ${c} position ${p}: ${back[i]} for ${values[i]} (bound ${bound})`);
      }
    }
  }
  // A row's bytes depend on that row alone: shards quantize their rows to the same bytes.
  const one = quantizeRows(values.subarray(3 * rowSize, 4 * rowSize), rowSize, channels);
  assert.equal(one, bytes.subarray(3 * one.length, 4 * one.length));
  // Values half precision cannot hold, or not numbers, are refused, not stored wrong.
  assert.throws(() => quantizeRows(Float32Array.of(1, Infinity), 2, 1), /not finite numbers \(channel 0 of row 0: 1 … Infinity\)/);
  assert.throws(() => quantizeRows(Float32Array.of(NaN, NaN), 2, 1), /not finite numbers/);
  assert.throws(() => quantizeRows(Float32Array.of(1, NaN, 2, 3), 4, 1), /channel 0 of row 0: 1 … NaN/);
});

test.run();
