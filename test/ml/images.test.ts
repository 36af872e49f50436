import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { decodeAndResize, decodeImages, isImageFile, listImageFiles, resizeKeras } from '../../src/ml/images.ts';
import { loadTf } from '../../src/ml/tf.ts';
import {
  encodeBmp,
  encodeJpeg,
  encodePng,
  gradientImage,
  WHITE_PIXEL_GIF,
  type RawImage,
} from '../helpers/images.ts';
import { tempDir } from '../helpers/run-kind.ts';

const tf = loadTf();

/** Channel 0 of an RGB result as rows. */
function plane(pixels: Uint8Array, height: number, width: number, channel = 0): number[][] {
  return Array.from({ length: height }, (_, y) =>
    Array.from({ length: width }, (_, x) => pixels[(y * width + x) * 3 + channel]!),
  );
}

// value(y, x) = 40·y + 10·x (+ channel): bilinear interpolation of a linear ramp is the ramp at the
// sampled coordinate, so expected values follow from the half-pixel mapping in = (out + ½)·scale − ½.
const ramp = gradientImage(4, 4, (y, x) => 40 * y + 10 * x);

test('4×4 → 2×2 samples at 0.5 and 2.5 (half-pixel centres, no antialias)', async () => {
  const out = decodeAndResize(tf, await encodePng(ramp), [2, 2]);
  assert.equal(plane(out, 2, 2), [
    [40 * 0.5 + 10 * 0.5, 40 * 0.5 + 10 * 2.5],
    [40 * 2.5 + 10 * 0.5, 40 * 2.5 + 10 * 2.5],
  ]);
  assert.equal(plane(out, 2, 2, 2), [
    [27, 47],
    [107, 127],
  ]);
});

test('4×4 → 3×3 samples at 1/6, 3/2, 17/6 (then rounds)', async () => {
  const coords = [1 / 6, 3 / 2, 17 / 6];
  const expected = coords.map((y) => coords.map((x) => Math.round(40 * y + 10 * x)));
  const out = decodeAndResize(tf, await encodePng(ramp), [3, 3]);
  assert.equal(plane(out, 3, 3), expected);
  // the float values before rounding, through the same kernel
  const floats = tf.tidy(() =>
    resizeKeras(tf, tf.tensor3d(ramp.data, [4, 4, 3], 'float32'), [3, 3]).arraySync(),
  );
  assert.ok(Math.abs(floats[0]![0]![0]! - (40 / 6 + 10 / 6)) < 1e-4);
  assert.ok(Math.abs(floats[1]![2]![0]! - (40 * 1.5 + 10 * (17 / 6))) < 1e-4);
});

test('2×2 → 4×4 upscaling clamps at the borders: [a, ¾a+¼b, ¼a+¾b, b]', async () => {
  const image = gradientImage(2, 2, (_y, x) => (x === 0 ? 0 : 200));
  const out = decodeAndResize(tf, await encodePng(image), [4, 4]);
  assert.equal(plane(out, 4, 4)[0], [0, 50, 150, 200]);
  assert.equal(plane(out, 4, 4)[3], [0, 50, 150, 200]);
});

test('non-square resize without aspect crop keeps the whole picture', async () => {
  const image = gradientImage(2, 8, (_y, x) => x * 20);
  const out = decodeAndResize(tf, await encodePng(image), [2, 2]);
  // width scale 4: x = 0.5·4 − 0.5 = 1.5 and 5.5
  assert.equal(plane(out, 2, 2)[0], [30, 110]);
});

test('grayscale becomes RGB; RGBA loses its alpha (values kept, not premultiplied)', async () => {
  const gray: RawImage = { height: 2, width: 2, channels: 1, data: new Uint8Array([0, 100, 200, 255]) };
  const out = decodeAndResize(tf, await encodePng(gray), [2, 2]);
  assert.equal(Array.from(out), [0, 0, 0, 100, 100, 100, 200, 200, 200, 255, 255, 255]);

  const rgba: RawImage = {
    height: 1,
    width: 2,
    channels: 4,
    data: new Uint8Array([10, 20, 30, 0, 40, 50, 60, 128]),
  };
  const out2 = decodeAndResize(tf, await encodePng(rgba), [1, 2]);
  assert.equal(Array.from(out2), [10, 20, 30, 40, 50, 60]);
});

test('decodes BMP, GIF (first frame) and JPEG', async () => {
  const image = gradientImage(4, 4, (y, x) => 40 * y + 10 * x);
  const bmp = decodeAndResize(tf, encodeBmp(image), [4, 4]);
  assert.equal(Array.from(bmp), Array.from(image.data));

  const gif = decodeAndResize(tf, WHITE_PIXEL_GIF, [2, 2]);
  assert.equal(Array.from(gif), new Array(12).fill(255));

  const flat = gradientImage(16, 16, () => 120);
  const jpeg = decodeAndResize(tf, await encodeJpeg(flat), [8, 8]);
  assert.ok(jpeg.every((v, i) => Math.abs(v - (120 + (i % 3))) <= 2));
});

test('undecodable files are skipped and reported; the rest load in order', async () => {
  const root = tempDir();
  mkdirSync(path.join(root, 'a'));
  writeFileSync(path.join(root, 'a/good1.png'), await encodePng(gradientImage(4, 4, () => 10)));
  writeFileSync(path.join(root, 'a/broken.jpg'), Buffer.from('this is not a jpeg'));
  writeFileSync(path.join(root, 'a/truncated.png'), (await encodePng(ramp)).subarray(0, 20));
  writeFileSync(path.join(root, 'a/good2.png'), await encodePng(gradientImage(4, 4, () => 90)));
  const files = ['a/good1.png', 'a/broken.jpg', 'a/missing.png', 'a/truncated.png', 'a/good2.png'];
  const progress: number[] = [];
  const images: Array<{ index: number; pixels: Uint8Array }> = [];
  const loaded = await decodeImages(tf, root, files, [2, 2], async (pixels, index) => {
    images.push({ index, pixels });
  }, (done) => progress.push(done));
  assert.equal(loaded.kept, [0, 4]);
  assert.equal(images.map((i) => i.index), [0, 4]);
  assert.ok(images.every((i) => i.pixels.length === 2 * 2 * 3));
  assert.is(images[0]!.pixels[0], 10);
  assert.is(images[1]!.pixels[0], 90);
  assert.equal(
    loaded.skipped.map((s) => s.file),
    ['a/broken.jpg', 'a/missing.png', 'a/truncated.png'],
  );
  assert.ok(loaded.skipped.every((s) => s.reason.length > 0 && !s.reason.includes('\n')));
  assert.equal(progress, [5]);
});

test('lists the extensions Keras accepts, case-insensitively, recursively and sorted', async () => {
  const root = tempDir();
  mkdirSync(path.join(root, 'sub/deeper'), { recursive: true });
  mkdirSync(path.join(root, '.hidden'));
  for (const name of ['b.JPG', 'a.png', 'c.jpeg', 'd.Gif', 'e.bmp', 'notes.txt', 'f.webp', 'sub/z.jpg', 'sub/deeper/y.PNG', '.hidden/x.jpg', '.dot.jpg']) {
    writeFileSync(path.join(root, name), '');
  }
  assert.equal(await listImageFiles(root), ['a.png', 'b.JPG', 'c.jpeg', 'd.Gif', 'e.bmp', 'sub/deeper/y.PNG', 'sub/z.jpg']);
  assert.ok(isImageFile('X.JPEG'));
  assert.not.ok(isImageFile('x.tiff'));
});

test.run();
