import { createCanvas, loadImage } from '@napi-rs/canvas';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { confusionMatrix, imageGrid, learningCurves, niceTicks } from '../../src/ml/plots.ts';

const PNG_SIGNATURE = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);

async function decode(png: Buffer) {
  assert.equal(png.subarray(0, 8), PNG_SIGNATURE);
  const image = await loadImage(png);
  const canvas = createCanvas(image.width, image.height);
  const ctx = canvas.getContext('2d');
  ctx.drawImage(image, 0, 0);
  return {
    width: image.width,
    height: image.height,
    pixel: (x: number, y: number) => Array.from(ctx.getImageData(x, y, 1, 1).data.subarray(0, 3)),
  };
}

function solid(rgb: [number, number, number], size = 8): { data: Uint8Array; height: number; width: number } {
  const data = new Uint8Array(size * size * 3);
  for (let i = 0; i < size * size; i++) data.set(rgb, i * 3);
  return { data, height: size, width: size };
}

test('imageGrid lays tiles out in rows with the image colours at the tile centres', async () => {
  const colours: Array<[number, number, number]> = [
    [255, 0, 0],
    [0, 255, 0],
    [0, 0, 255],
    [200, 200, 0],
  ];
  const png = await imageGrid(
    colours.map((c) => solid(c)),
    ['a', 'b', 'c', 'd'],
    { cols: 3, tileSize: 100 },
  );
  const image = await decode(png);
  // 3 columns of 100 px tiles with 16 px gaps; 2 rows with a 30 px title band each
  assert.is(image.width, 3 * 100 + 4 * 16);
  assert.is(image.height, 2 * (100 + 30) + 3 * 16);
  const centre = (col: number, row: number) => image.pixel(16 + col * 116 + 50, 16 + row * 146 + 30 + 50);
  assert.equal(centre(0, 0), [255, 0, 0]);
  assert.equal(centre(1, 0), [0, 255, 0]);
  assert.equal(centre(2, 0), [0, 0, 255]);
  assert.equal(centre(0, 1), [200, 200, 0]);
  assert.equal(centre(1, 1), [255, 255, 255]); // no fifth image
});

test('imageGrid accepts gray and RGBA images, and rejects short pixel buffers', async () => {
  const grayImage = { data: new Uint8Array(16).fill(128), height: 4, width: 4, channels: 1 };
  const image = await decode(await imageGrid([grayImage], [], { tileSize: 40 }));
  assert.equal(image.pixel(16 + 20, 16 + 20), [128, 128, 128]);
  try {
    await imageGrid([{ data: new Uint8Array(5), height: 4, width: 4 }], ['x']);
    assert.unreachable();
  } catch (error) {
    assert.is((error as Error).message, 'bug: imageGrid: 5 bytes for a 4×4×3 image');
  }
});

test('learningCurves draws both panels, both series and the fine-tuning marker', async () => {
  const accuracy = [0.6, 0.8, 0.9, 0.95];
  const png = await learningCurves({
    accuracy,
    val_accuracy: [0.7, 0.85, 0.92, 0.96],
    loss: [0.7, 0.4, 0.2, 0.1],
    val_loss: [0.6, 0.35, 0.2, 0.12],
    fineTuneStartEpoch: 2,
  });
  const image = await decode(png);
  assert.is(image.width, 800);
  assert.is(image.height, 800);
  // the marker is a vertical green line at epoch 2 in both panels: find a green pixel in each half
  const greenIn = (y0: number, y1: number) => {
    for (let y = y0; y < y1; y += 7) {
      for (let x = 80; x < 770; x++) {
        const [r, g, b] = image.pixel(x, y);
        if (g! > 140 && r! < 80 && b! < 80) return true;
      }
    }
    return false;
  };
  assert.ok(greenIn(60, 330), 'marker in the accuracy panel');
  assert.ok(greenIn(460, 730), 'marker in the loss panel');
});

test('learningCurves copes with one epoch, missing validation series and NaN', async () => {
  const png = await learningCurves({ accuracy: [0.5], loss: [Number.NaN] });
  const image = await decode(png);
  assert.is(image.width, 800);
});

test('confusionMatrix draws an n×n chart and checks its input', async () => {
  const png = await confusionMatrix(
    [
      [90, 10],
      [5, 95],
    ],
    ['cats', 'dogs'],
  );
  const image = await decode(png);
  assert.ok(image.width > 300 && image.height > 300);
  try {
    await confusionMatrix([[1, 2]], ['a', 'b']);
    assert.unreachable();
  } catch (error) {
    assert.is((error as Error).message, 'bug: confusionMatrix: expected a 2×2 matrix for classes a, b');
  }
});

test('niceTicks picks 1-2-5 steps', () => {
  assert.equal(niceTicks(0, 1, 5), [0, 0.2, 0.4, 0.6, 0.8, 1]);
  assert.equal(niceTicks(0.5, 1, 6), [0.5, 0.6, 0.7, 0.8, 0.9, 1]);
  assert.equal(niceTicks(1, 21, 10), [2, 4, 6, 8, 10, 12, 14, 16, 18, 20]);
});

test.run();
