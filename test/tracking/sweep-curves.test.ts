// The sweep parent run's picture of early stopping: every trial's curve over the watched stage's
// epochs, a cross where a trial was stopped, a dashed line at each ASHA rung.
import { createCanvas, loadImage } from '@napi-rs/canvas';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { schedulerCurvesChart, type TrialRow } from '../../src/tracking/sweep-parent.ts';

const row = (id: string, curve: number[], pruned?: number): TrialRow => ({
  id, label: id, values: {}, status: pruned ? 'pruned' : 'succeeded', metrics: {}, curve,
  ...(pruned ? { pruned: { stage: 'fine-tune', epoch: pruned, of: 3 } } : {}),
});

const scheduler = { type: 'asha', metric: 'val_accuracy', mode: 'max', stage: 'fine-tune', grace_period: 1, reduction_factor: 2 };

test('curves with the stopped trial crossed out at its last epoch and the rungs dashed', async () => {
  const png = await schedulerCurvesChart([row('t1', [0.5, 0.6, 0.7]), row('t2', [0.3], 1)], scheduler);
  assert.ok(png);
  const image = await loadImage(png);
  const canvas = createCanvas(image.width, image.height);
  const ctx = canvas.getContext('2d');
  ctx.drawImage(image, 0, 0);
  const pixel = (x: number, y: number) => Array.from(ctx.getImageData(x, y, 1, 1).data.subarray(0, 3));
  // The plot spans x 80..620 for epochs 1..3 and y 50..420 for 0.26..0.74 (the values ± 10 %).
  const px = (epoch: number) => 80 + ((epoch - 1) / 2) * 540;
  const py = (v: number) => 420 - ((v - 0.26) / 0.48) * 370;
  // t2 (the second colour, orange) stopped at epoch 1 with 0.3: a cross, whose arms reach 6 px off the point.
  assert.equal(pixel(Math.round(px(1) + 6), Math.round(py(0.3) + 6)), [255, 127, 14]);
  assert.equal(pixel(Math.round(px(1) + 6), Math.round(py(0.3) - 6)), [255, 127, 14]);
  // t1 (blue) is not crossed: 6 px off its last point is background.
  assert.equal(pixel(Math.round(px(3) - 6), Math.round(py(0.7) + 6)), [255, 255, 255]);
  // Rungs at epochs 1 and 2 (grace 1, factor 2, max_t = 3 epochs): a dashed grey line at epoch 2.
  let grey = 0;
  for (let y = 60; y < 410; y++) {
    const [r, g, b] = pixel(Math.round(px(2)), y);
    if (r === g && g === b && r! < 235) grey++;
  }
  assert.ok(grey > 100 && grey < 340, `dashed: ${grey} grey pixels of 350`);
});

test('a diverging loss beside sane ones: the curves on a log scale', async () => {
  const png = await schedulerCurvesChart([row('t1', [0.7, 0.6, 0.5]), row('t2', [3e6], 1)], { ...scheduler, metric: 'val_loss', mode: 'min' });
  const image = await loadImage(png!);
  const canvas = createCanvas(image.width, image.height);
  const ctx = canvas.getContext('2d');
  ctx.drawImage(image, 0, 0);
  // log10: t1 spans -0.15..-0.30 and t2 sits at 6.5; the y range -0.98..7.18 (± 10 %). t1's last point
  // (epoch 3, log10 0.5 = -0.301) is a blue dot, not squashed onto the axis.
  const py = (v: number) => 420 - ((v - (-0.301 - 0.6801)) / (6.477 + 0.6801 + 0.301 + 0.6801)) * 370;
  assert.equal(Array.from(ctx.getImageData(620 - 2, Math.round(py(-0.301)), 1, 1).data.subarray(0, 3)), [31, 119, 180]);
});

test('no curves, no picture', async () => {
  assert.is(await schedulerCurvesChart([row('t1', [])], scheduler), undefined);
});

test.run();
