import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { augmented, createRng, viewTransforms, type ViewTransform } from '../../src/ml/augment.ts';
import { AugmentPool } from '../../src/ml/augment-pool.ts';

const shape = { height: 19, width: 23, channels: 3 };
const size = shape.height * shape.width * shape.channels;

/** `count` images of random bytes, back to back. */
function randomImages(count: number, seed: number): Uint8Array {
  const rng = createRng(seed);
  const pixels = new Uint8Array(count * size);
  for (let i = 0; i < pixels.length; i++) pixels[i] = Math.floor(rng() * 256);
  return pixels;
}

/** The batch as one thread computes it, image by image. */
function reference(pixels: Uint8Array, transforms: ViewTransform[]): Uint8Array {
  const out = new Uint8Array(transforms.length * size);
  transforms.forEach((t, i) => out.set(augmented(pixels.subarray(i * size, (i + 1) * size), shape.height, shape.width, shape.channels, t), i * size));
  return out;
}

test('three threads write the bytes one thread writes, for full, partial and tiny batches', async () => {
  const pool = AugmentPool.create(3, shape, 11);
  try {
    assert.is(pool.threadCount, 3);
    assert.is(pool.liveThreads, 3);
    // 11 and 7 images do not divide by 3; 2 images leave a thread without work; 1 image, one thread's
    for (const [batch, count] of [[0, 11], [1, 7], [2, 2], [3, 1], [4, 11]] as const) {
      const pixels = randomImages(count, 100 + batch);
      const transforms = viewTransforms(7, batch, count, { flip: 'horizontal', rotation: 0.3 });
      // alternate output slots; the other one keeps the previous batch
      const slot = batch % 2 === 0 ? 0 : 1;
      const other = new Uint8Array(pool.outputs[1 - slot]!);
      pool.outputs[slot].fill(0xee);
      pool.inputs[slot].set(pixels);
      pool.inputs[1 - slot]!.fill(0); // must not be read
      await pool.augment(count, transforms, slot);
      const output = pool.outputs[slot];
      assert.equal(output.subarray(0, count * size), reference(pixels, transforms), `batch ${batch} of ${count} images`);
      // images past the batch, and the other slot, are left alone
      assert.ok(output.subarray(count * size).every((v) => v === 0xee), `batch ${batch}: nothing written past the batch`);
      assert.equal(pool.outputs[1 - slot], other, `batch ${batch}: the other slot is left alone`);
    }
  } finally {
    await pool.close();
  }
  assert.is(pool.liveThreads, 0, 'close stops every thread');
});

test('one thread computes on the calling thread: no worker', async () => {
  const pool = AugmentPool.create(1, shape, 4);
  assert.is(pool.liveThreads, 0);
  const pixels = randomImages(4, 5);
  const transforms = viewTransforms(1, 0, 4, { flip: 'horizontal', rotation: 0.2 });
  pool.inputs[1].set(pixels);
  await pool.augment(4, transforms, 1);
  assert.equal(pool.outputs[1], reference(pixels, transforms));
  await pool.close();
});

test("a thread's error fails the batch, the pool takes no more batches, and close leaves no thread running", async () => {
  const pool = AugmentPool.create(2, shape, 4);
  try {
    const transforms = viewTransforms(1, 0, 4, { flip: 'horizontal', rotation: 0.2 });
    // the second thread's images 2 and 3: image 3 has no transform to read
    const broken = [...transforms.slice(0, 3), null as unknown as ViewTransform];
    let error: Error | undefined;
    await pool.augment(4, broken).catch((e: Error) => (error = e));
    assert.ok(error, 'the batch fails');
    assert.match(error!.message, /^augment thread 2: .*angle/);
    let again: Error | undefined;
    await pool.augment(4, transforms).catch((e: Error) => (again = e));
    assert.is(again, error, 'a broken pool refuses further batches with the first error');
  } finally {
    await pool.close();
  }
  assert.is(pool.liveThreads, 0);
  await pool.close(); // twice is fine
});

test('a batch larger than the pool, or without a transform per image, is a bug', async () => {
  const pool = AugmentPool.create(2, shape, 2);
  try {
    const transforms = viewTransforms(1, 0, 3, { flip: 'none', rotation: 0.2 });
    await pool.augment(3, transforms).then(
      () => assert.unreachable('a batch of 3 in a pool of 2'),
      (e: Error) => assert.match(e.message, /^bug: a batch of 3 images/),
    );
    await pool.augment(2, transforms).then(
      () => assert.unreachable('3 transforms for 2 images'),
      (e: Error) => assert.match(e.message, /^bug: a batch of 2 images \(3 transforms\)/),
    );
  } finally {
    await pool.close();
  }
});

test.run();
