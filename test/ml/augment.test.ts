import { test } from 'uvu';
import * as assert from 'uvu/assert';
import {
  augmented,
  createRng,
  reflectCoordinate,
  rotationMatrix,
  sampleTransform,
  shuffle,
  viewTransforms,
  type ViewTransform,
} from '../../src/ml/augment.ts';
import { loadTf } from '../../src/ml/tf.ts';

const tf = loadTf();

/** A one-channel image from rows (values 0..255). */
function gray(rows: number[][]): { data: Uint8Array; h: number; w: number } {
  return { data: Uint8Array.from(rows.flat()), h: rows.length, w: rows[0]!.length };
}

function rows(data: Uint8Array, h: number, w: number): number[][] {
  return Array.from({ length: h }, (_, y) => Array.from(data.subarray(y * w, y * w + w)));
}

function apply(rowsIn: number[][], transform: ViewTransform): number[][] {
  const image = gray(rowsIn);
  return rows(augmented(image.data, image.h, image.w, 1, transform), image.h, image.w);
}

const quarter = Math.PI / 2;
const square = [
  [10, 20, 30],
  [40, 50, 60],
  [70, 80, 90],
];

test('a quarter turn is exact and counter-clockwise; a flip mirrors first', () => {
  assert.equal(apply(square, { flip: false, angle: 0 }), square);
  assert.equal(apply(square, { flip: true, angle: 0 }), [
    [30, 20, 10],
    [60, 50, 40],
    [90, 80, 70],
  ]);
  assert.equal(apply(square, { flip: false, angle: quarter }), [
    [30, 60, 90],
    [20, 50, 80],
    [10, 40, 70],
  ]);
  assert.equal(apply(square, { flip: false, angle: -quarter }), [
    [70, 40, 10],
    [80, 50, 20],
    [90, 60, 30],
  ]);
  // flip, then rotate the flipped picture
  assert.equal(apply(square, { flip: true, angle: quarter }), [
    [10, 40, 70],
    [20, 50, 80],
    [30, 60, 90],
  ]);
  assert.equal(apply(square, { flip: false, angle: Math.PI }), [
    [90, 80, 70],
    [60, 50, 40],
    [30, 20, 10],
  ]);
});

test('reflect fill: "d c b a | a b c d | d c b a", then clamped', () => {
  // len 4: −1 ↦ 0, −4 ↦ 3, −5 ↦ 3 (next period), 4 ↦ 3, 7 ↦ 0, 8 ↦ 0 (next period); (−1, 0) clamps to 0
  assert.equal(
    [-1, -2, -4, -5, -8, 4, 5, 7, 8, 9, -0.5, 3.5, 1.25].map((c) => reflectCoordinate(c, 4)),
    [0, 1, 3, 3, 0, 3, 2, 0, 0, 1, 0, 3, 1.25],
  );
  assert.is(reflectCoordinate(-3, 1), 0);

  // A quarter turn of a 2×4 picture about its centre (1.5, 0.5) reads rows −1 and 2 for the outer
  // columns: x' = 2 − y, y' = x − 1; row −1 reflects to row 0 and row 2 to row 1.
  assert.equal(
    apply(
      [
        [1, 2, 3, 4],
        [5, 6, 7, 8],
      ],
      { flip: false, angle: quarter },
    ),
    [
      [3, 3, 7, 7],
      [2, 2, 6, 6],
    ],
  );
});

test('corners of a 45° turn of a 5×5 picture land where the hand computation says', () => {
  // About the centre (2, 2): output (0, 0) reads input x' = 2, y' = 2 − 2√2 ≈ −0.83, which reflects
  // to −0.17 and clamps to row 0; output (0, 4) reads x' = 2 + 2√2 ≈ 4.83 (clamped to 4), y' = 2.
  const picture = Array.from({ length: 5 }, (_, y) => Array.from({ length: 5 }, (_, x) => 10 * y + x));
  const out = apply(picture, { flip: false, angle: Math.PI / 4 });
  assert.is(out[0]![0], picture[0]![2]);
  assert.is(out[0]![4], picture[2]![4]);
  assert.is(out[4]![4], picture[4]![2]);
  assert.is(out[4]![0], picture[2]![0]);
  assert.is(out[2]![2], picture[2]![2]);
});

/** TensorFlow's own ImageProjectiveTransformV3 (BILINEAR, REFLECT) through the tfjs-node binding. */
function tensorflowTransform(image: Float32Array, h: number, w: number, c: number, matrix: number[]): Float32Array {
  // eslint-disable-next-line @typescript-eslint/no-explicit-any
  const backend = tf.backend() as any;
  return tf.tidy(() => {
    const images = tf.tensor4d(image, [1, h, w, c], 'float32');
    const transforms = tf.tensor2d([[...matrix, 0, 0]], [1, 8], 'float32');
    const outputShape = tf.tensor1d([h, w], 'int32');
    const fill = tf.scalar(0, 'float32');
    const attrs = [
      { name: 'dtype', type: backend.binding.TF_ATTR_TYPE, value: backend.binding.TF_FLOAT },
      { name: 'interpolation', type: backend.binding.TF_ATTR_STRING, value: 'BILINEAR' },
      { name: 'fill_mode', type: backend.binding.TF_ATTR_STRING, value: 'REFLECT' },
    ];
    const out = backend.executeSingleOutput('ImageProjectiveTransformV3', attrs, [images, transforms, outputShape, fill]);
    return out.dataSync() as Float32Array;
  });
}

test('matches TensorFlow ImageProjectiveTransformV3 (reflect, bilinear) to the rounded value', () => {
  const rng = createRng(99);
  for (const [h, w] of [
    [13, 17],
    [24, 24],
    [9, 31],
  ] as const) {
    const src = new Uint8Array(h * w * 3);
    for (let i = 0; i < src.length; i++) src[i] = Math.floor(rng() * 256);
    for (let k = 0; k < 12; k++) {
      const transform = sampleTransform(rng, { flip: 'horizontal', rotation: k < 8 ? 0.2 : 0.5 });
      const ours = augmented(src, h, w, 3, transform);
      // Keras flips first (a reversed copy), then transforms
      const flipped = new Float32Array(src.length);
      for (let y = 0; y < h; y++) {
        for (let x = 0; x < w; x++) {
          for (let c = 0; c < 3; c++) {
            flipped[(y * w + x) * 3 + c] = src[(y * w + (transform.flip ? w - 1 - x : x)) * 3 + c]!;
          }
        }
      }
      const reference = tensorflowTransform(flipped, h, w, 3, rotationMatrix(transform.angle, h, w));
      for (let i = 0; i < ours.length; i++) {
        if (ours[i] !== Math.round(reference[i]!)) {
          assert.unreachable(
            `${h}×${w} angle ${transform.angle} flip ${transform.flip}: pixel ${i} is ${ours[i]}, TensorFlow ${reference[i]}`,
          );
        }
      }
    }
  }
});

test('Keras rotation matrix about ((w−1)/2, (h−1)/2)', () => {
  const [a0, a1, a2, b0, b1, b2] = rotationMatrix(Math.PI / 6, 160, 100);
  const cos = Math.cos(Math.PI / 6);
  const sin = Math.sin(Math.PI / 6);
  const near = (a: number | undefined, b: number) => assert.ok(Math.abs(a! - b) < 1e-4, `${a} vs ${b}`);
  near(a0, cos);
  near(a1, -sin);
  near(b0, sin);
  near(b1, cos);
  // the centre maps to itself
  near(a0! * 49.5 + a1! * 79.5 + a2!, 49.5);
  near(b0! * 49.5 + b1! * 79.5 + b2!, 79.5);
});

test('transforms are seeded: same seed and view give the same draws; views are independent', () => {
  const settings = { flip: 'horizontal', rotation: 0.2 } as const;
  assert.equal(viewTransforms(5, 3, 50, settings), viewTransforms(5, 3, 50, settings));
  assert.not.equal(viewTransforms(5, 3, 50, settings), viewTransforms(6, 3, 50, settings));
  assert.not.equal(viewTransforms(5, 3, 50, settings), viewTransforms(5, 4, 50, settings));
  // a longer list extends a shorter one (more images do not reshuffle the first ones)
  assert.equal(viewTransforms(5, 3, 80, settings).slice(0, 50), viewTransforms(5, 3, 50, settings));
  // settings do not shift the random streams: the angles stay when the flip is turned off
  assert.equal(
    viewTransforms(5, 3, 20, { flip: 'none', rotation: 0.2 }).map((t) => t.angle),
    viewTransforms(5, 3, 20, settings).map((t) => t.angle),
  );
});

test('distribution: flips half the time, angles uniform within ±factor·2π', () => {
  const n = 20_000;
  const transforms = viewTransforms(1, 0, n, { flip: 'horizontal', rotation: 0.2 });
  const bound = 0.2 * 2 * Math.PI;
  const angles = transforms.map((t) => t.angle);
  const flips = transforms.filter((t) => t.flip).length / n;
  assert.ok(Math.abs(flips - 0.5) < 0.02, `flip rate ${flips}`);
  assert.ok(angles.every((a) => a >= -bound - 1e-6 && a <= bound + 1e-6));
  assert.ok(Math.min(...angles) < -bound * 0.99 && Math.max(...angles) > bound * 0.99);
  const mean = angles.reduce((s, a) => s + a, 0) / n;
  assert.ok(Math.abs(mean) < 0.03, `mean ${mean}`);
  // uniform: each fifth of the range holds about a fifth of the angles
  for (let bin = 0; bin < 5; bin++) {
    const lo = -bound + (bin * 2 * bound) / 5;
    const share = angles.filter((a) => a >= lo && a < lo + (2 * bound) / 5).length / n;
    assert.ok(Math.abs(share - 0.2) < 0.02, `bin ${bin}: ${share}`);
  }
  const none = viewTransforms(1, 0, 500, { flip: 'none', rotation: 0 });
  assert.ok(none.every((t) => !t.flip && t.angle === 0));
});

test('createRng gives uniform floats in [0, 1); shuffle is a seeded permutation', () => {
  const rng = createRng(123, 4);
  const draws = Array.from({ length: 10_000 }, rng);
  assert.ok(draws.every((d) => d >= 0 && d < 1));
  const mean = draws.reduce((s, d) => s + d, 0) / draws.length;
  assert.ok(Math.abs(mean - 0.5) < 0.02);
  const a = shuffle([...Array(20).keys()], createRng(7));
  const b = shuffle([...Array(20).keys()], createRng(7));
  assert.equal(a, b);
  assert.equal([...a].sort((x, y) => x - y), [...Array(20).keys()]);
  assert.not.equal(a, [...Array(20).keys()]);
});

test.run();
