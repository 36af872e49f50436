// The recipe's pictures as PNG files, drawn with @napi-rs/canvas in the spirit of the tutorial's
// matplotlib figures (DejaVu Sans, matplotlib's default colours, white background).
//
//   imageGrid(images, titles, {cols})   tiles with a title above each (samples, augmentations,
//                                       predictions)
//   learningCurves(history)             accuracy and loss, training vs validation, with an optional
//                                       'Start Fine Tuning' marker
//   confusionMatrix(matrix, classNames) counts per (true, predicted) class
//
// Each returns the PNG bytes (a Buffer); write them with fs.writeFile and declare the file with
// ctx.artifact(). Nothing here needs TensorFlow.

import { createCanvas, ImageData, type SKRSContext2D } from '@napi-rs/canvas';

const FONT = '"DejaVu Sans", "Liberation Sans", sans-serif';
const TRAIN_COLOUR = '#1f77b4'; // matplotlib C0
const VALIDATION_COLOUR = '#ff7f0e'; // C1
const MARKER_COLOUR = '#2ca02c'; // C2
const TEXT_COLOUR = '#222222';

/** An image to draw: `height × width × channels` bytes (channels 1, 3 or 4; default 3), row-major. */
export interface GridImage {
  data: Uint8Array;
  height: number;
  width: number;
  channels?: number;
}

export interface ImageGridOptions {
  /** Tiles per row (default 3). */
  cols?: number;
  /** Longer side of a tile in pixels (default 224; images are scaled to fit). */
  tileSize?: number;
  /** A title over the whole grid. */
  title?: string;
  /** CSS colour per tile title (e.g. red for a wrong prediction); default dark grey. */
  titleColours?: Array<string | undefined>;
}

/** A grid of images with a title above each tile (titles may be shorter than images). */
export async function imageGrid(
  images: readonly GridImage[],
  titles: readonly string[] = [],
  options: ImageGridOptions = {},
): Promise<Buffer> {
  if (images.length === 0) throw new Error('bug: imageGrid: no images');
  const cols = Math.max(1, Math.min(options.cols ?? 3, images.length));
  const rows = Math.ceil(images.length / cols);
  const tile = options.tileSize ?? 224;
  const titleHeight = titles.length > 0 ? 30 : 0;
  const gap = 16;
  const headerHeight = options.title ? 44 : 0;
  const width = cols * tile + (cols + 1) * gap;
  const height = headerHeight + rows * (tile + titleHeight) + (rows + 1) * gap;
  const canvas = createCanvas(width, height);
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#ffffff';
  ctx.fillRect(0, 0, width, height);
  if (options.title) {
    ctx.fillStyle = TEXT_COLOUR;
    ctx.font = `20px ${FONT}`;
    ctx.textAlign = 'center';
    ctx.textBaseline = 'middle';
    ctx.fillText(options.title, width / 2, headerHeight / 2 + 6);
  }
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = 'high';
  for (const [index, image] of images.entries()) {
    const col = index % cols;
    const row = Math.floor(index / cols);
    const x0 = gap + col * (tile + gap);
    const y0 = headerHeight + gap + row * (tile + titleHeight + gap);
    const title = titles[index];
    if (title !== undefined) {
      ctx.fillStyle = options.titleColours?.[index] ?? TEXT_COLOUR;
      ctx.font = `16px ${FONT}`;
      ctx.textAlign = 'center';
      ctx.textBaseline = 'middle';
      ctx.fillText(fitText(ctx, title, tile), x0 + tile / 2, y0 + titleHeight / 2);
    }
    const scale = tile / Math.max(image.width, image.height);
    const drawW = Math.round(image.width * scale);
    const drawH = Math.round(image.height * scale);
    const source = imageCanvas(image);
    ctx.drawImage(source, x0 + (tile - drawW) / 2, y0 + titleHeight + (tile - drawH) / 2, drawW, drawH);
  }
  return canvas.encode('png');
}

function imageCanvas(image: GridImage) {
  const channels = image.channels ?? 3;
  const count = image.width * image.height;
  if (image.data.length < count * channels) {
    throw new Error(`bug: imageGrid: ${image.data.length} bytes for a ${image.height}×${image.width}×${channels} image`);
  }
  const rgba = new Uint8ClampedArray(count * 4);
  for (let i = 0; i < count; i++) {
    const s = i * channels;
    const r = image.data[s]!;
    rgba[i * 4] = r;
    rgba[i * 4 + 1] = channels >= 3 ? image.data[s + 1]! : r;
    rgba[i * 4 + 2] = channels >= 3 ? image.data[s + 2]! : r;
    rgba[i * 4 + 3] = channels === 4 ? image.data[s + 3]! : 255;
  }
  const canvas = createCanvas(image.width, image.height);
  canvas.getContext('2d').putImageData(new ImageData(rgba, image.width, image.height), 0, 0);
  return canvas;
}

function fitText(ctx: SKRSContext2D, text: string, maxWidth: number): string {
  if (ctx.measureText(text).width <= maxWidth) return text;
  let cut = text;
  while (cut.length > 1 && ctx.measureText(`${cut}…`).width > maxWidth) cut = cut.slice(0, -1);
  return `${cut}…`;
}

/** Per-epoch history, as Keras's `history.history` (index i = epoch i + 1). */
export interface LearningCurvesInput {
  accuracy: readonly number[];
  val_accuracy?: readonly number[];
  loss: readonly number[];
  val_loss?: readonly number[];
  /**
   * Where to draw the 'Start Fine Tuning' line, in epochs on the 1-based axis: the recipe passes its
   * number of phase-1 epochs (10), so the line falls on the last frozen epoch exactly as the
   * tutorial's `plt.plot([initial_epochs-1, initial_epochs-1], …)` on its 0-based axis.
   */
  fineTuneStartEpoch?: number;
}

/**
 * The recipe's figure: 'Training and Validation Accuracy' above 'Training and Validation Loss',
 * one line per series, epochs 1..n on the x axis.
 */
export async function learningCurves(history: LearningCurvesInput): Promise<Buffer> {
  const width = 800;
  const height = 800;
  const canvas = createCanvas(width, height);
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#ffffff';
  ctx.fillRect(0, 0, width, height);
  const epochs = Math.max(
    history.accuracy.length,
    history.val_accuracy?.length ?? 0,
    history.loss.length,
    history.val_loss?.length ?? 0,
    history.fineTuneStartEpoch ?? 0,
    1,
  );
  const marker = history.fineTuneStartEpoch;
  const accuracyValues = [...history.accuracy, ...(history.val_accuracy ?? [])].filter(Number.isFinite);
  const lossValues = [...history.loss, ...(history.val_loss ?? [])].filter(Number.isFinite);
  const accuracyLow = accuracyValues.length ? Math.min(...accuracyValues) : 0;
  const lossHigh = lossValues.length ? Math.max(...lossValues) : 1;

  drawPanel(ctx, { x: 0, y: 0, width, height: height / 2 }, {
    title: 'Training and Validation Accuracy',
    yLabel: 'Accuracy',
    xLabel: undefined,
    epochs,
    yRange: [Math.max(0, Math.min(0.9, Math.floor(accuracyLow * 10) / 10)), 1],
    series: [
      { label: 'Training Accuracy', values: history.accuracy, colour: TRAIN_COLOUR },
      ...(history.val_accuracy ? [{ label: 'Validation Accuracy', values: history.val_accuracy, colour: VALIDATION_COLOUR }] : []),
    ],
    marker,
    legend: 'lower right',
  });
  drawPanel(ctx, { x: 0, y: height / 2, width, height: height / 2 }, {
    title: 'Training and Validation Loss',
    yLabel: 'Cross Entropy',
    xLabel: 'epoch',
    epochs,
    yRange: [0, Math.max(0.1, niceCeil(lossHigh))],
    series: [
      { label: 'Training Loss', values: history.loss, colour: TRAIN_COLOUR },
      ...(history.val_loss ? [{ label: 'Validation Loss', values: history.val_loss, colour: VALIDATION_COLOUR }] : []),
    ],
    marker,
    legend: 'upper right',
  });
  return canvas.encode('png');
}

interface Box {
  x: number;
  y: number;
  width: number;
  height: number;
}

interface Series {
  label: string;
  values: readonly number[];
  colour: string;
}

interface PanelSpec {
  title: string;
  yLabel: string;
  xLabel: string | undefined;
  epochs: number;
  yRange: [number, number];
  series: Series[];
  marker: number | undefined;
  legend: 'lower right' | 'upper right';
}

/** Where a panel's plot area is, and the maps from epochs and values to pixels in it. */
interface PanelFrame {
  plot: Box;
  xMin: number;
  xMax: number;
  yMin: number;
  yMax: number;
  toX: (epoch: number) => number;
  toY: (value: number) => number;
}

function panelFrame(box: Box, spec: PanelSpec): PanelFrame {
  const plot = { x: box.x + 80, y: box.y + 46, width: box.width - 110, height: box.height - 106 };
  const [yMin, yMax] = spec.yRange;
  const xMin = spec.epochs > 1 ? 1 : 0.5;
  const xMax = spec.epochs > 1 ? spec.epochs : 1.5;
  const padX = (xMax - xMin) * 0.03;
  const toX = (epoch: number) => plot.x + ((epoch - (xMin - padX)) / (xMax - xMin + 2 * padX)) * plot.width;
  const toY = (value: number) => plot.y + plot.height - ((value - yMin) / (yMax - yMin)) * plot.height;
  return { plot, xMin, xMax, yMin, yMax, toX, toY };
}

function drawPanel(ctx: SKRSContext2D, box: Box, spec: PanelSpec): void {
  const frame = panelFrame(box, spec);
  const { plot } = frame;
  ctx.fillStyle = TEXT_COLOUR;
  ctx.font = `18px ${FONT}`;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.fillText(spec.title, plot.x + plot.width / 2, box.y + 24);
  drawGrid(ctx, frame);
  drawAxisLabels(ctx, box, plot, spec);
  drawData(ctx, frame, spec);
  ctx.strokeStyle = TEXT_COLOUR;
  ctx.lineWidth = 1;
  ctx.strokeRect(Math.round(plot.x) + 0.5, Math.round(plot.y) + 0.5, Math.round(plot.width), Math.round(plot.height));
  drawLegend(ctx, plot, spec);
}

/** Grid lines with their tick labels: values on the left, whole epochs below. */
function drawGrid(ctx: SKRSContext2D, frame: PanelFrame): void {
  const { plot, xMin, xMax, yMin, yMax, toX, toY } = frame;
  ctx.font = `13px ${FONT}`;
  ctx.lineWidth = 1;
  const yTicks = niceTicks(yMin, yMax, 6);
  const decimals = yTicks.length > 1 ? Math.max(0, -Math.floor(Math.log10(yTicks[1]! - yTicks[0]!) + 1e-9)) : 2;
  for (const tick of yTicks) {
    const y = Math.round(toY(tick)) + 0.5;
    ctx.strokeStyle = '#e6e6e6';
    line(ctx, plot.x, y, plot.x + plot.width, y);
    ctx.strokeStyle = TEXT_COLOUR;
    line(ctx, plot.x - 5, y, plot.x, y);
    ctx.textAlign = 'right';
    ctx.fillText(tick.toFixed(decimals), plot.x - 8, y);
  }
  for (const tick of niceTicks(xMin, xMax, 10).filter((t) => Number.isInteger(t) && t >= xMin && t <= xMax)) {
    const x = Math.round(toX(tick)) + 0.5;
    ctx.strokeStyle = '#e6e6e6';
    line(ctx, x, plot.y, x, plot.y + plot.height);
    ctx.strokeStyle = TEXT_COLOUR;
    line(ctx, x, plot.y + plot.height, x, plot.y + plot.height + 5);
    ctx.textAlign = 'center';
    ctx.fillText(String(tick), x, plot.y + plot.height + 16);
  }
}

function drawAxisLabels(ctx: SKRSContext2D, box: Box, plot: Box, spec: PanelSpec): void {
  if (spec.xLabel) {
    ctx.font = `14px ${FONT}`;
    ctx.textAlign = 'center';
    ctx.fillText(spec.xLabel, plot.x + plot.width / 2, plot.y + plot.height + 38);
  }
  ctx.save();
  ctx.translate(box.x + 22, plot.y + plot.height / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.font = `14px ${FONT}`;
  ctx.textAlign = 'center';
  ctx.fillText(spec.yLabel, 0, 0);
  ctx.restore();
}

/** The marker and each series as a line through dots, clipped to the plot area (with room for a point on the border, e.g. accuracy 1.0). */
function drawData(ctx: SKRSContext2D, frame: PanelFrame, spec: PanelSpec): void {
  const { plot, toX, toY } = frame;
  ctx.save();
  ctx.beginPath();
  ctx.rect(plot.x, plot.y - 4, plot.width, plot.height + 8);
  ctx.clip();
  if (spec.marker !== undefined) {
    ctx.strokeStyle = MARKER_COLOUR;
    ctx.lineWidth = 2;
    line(ctx, toX(spec.marker), plot.y, toX(spec.marker), plot.y + plot.height);
  }
  for (const series of spec.series) drawSeries(ctx, series, toX, toY);
  ctx.restore();
}

/** A line through the finite values (broken at the others), and a dot on each. */
function drawSeries(ctx: SKRSContext2D, series: Series, toX: (epoch: number) => number, toY: (value: number) => number): void {
  ctx.strokeStyle = series.colour;
  ctx.fillStyle = series.colour;
  ctx.lineWidth = 2;
  ctx.beginPath();
  let drawing = false;
  series.values.forEach((value, i) => {
    if (!Number.isFinite(value)) {
      drawing = false;
      return;
    }
    const x = toX(i + 1);
    const y = toY(value);
    if (drawing) ctx.lineTo(x, y);
    else ctx.moveTo(x, y);
    drawing = true;
  });
  ctx.stroke();
  series.values.forEach((value, i) => {
    if (!Number.isFinite(value)) return;
    ctx.beginPath();
    ctx.arc(toX(i + 1), toY(value), 3, 0, 2 * Math.PI);
    ctx.fill();
  });
}

function drawLegend(ctx: SKRSContext2D, plot: Box, spec: PanelSpec): void {
  const entries: Array<{ label: string; colour: string }> = spec.series.map((s) => ({ label: s.label, colour: s.colour }));
  if (spec.marker !== undefined) entries.push({ label: 'Start Fine Tuning', colour: MARKER_COLOUR });
  ctx.font = `13px ${FONT}`;
  const legendWidth = Math.max(...entries.map((e) => ctx.measureText(e.label).width)) + 50;
  const legendHeight = entries.length * 20 + 10;
  const lx = plot.x + plot.width - legendWidth - 10;
  const ly = spec.legend === 'upper right' ? plot.y + 10 : plot.y + plot.height - legendHeight - 10;
  ctx.fillStyle = 'rgba(255,255,255,0.85)';
  ctx.fillRect(lx, ly, legendWidth, legendHeight);
  ctx.strokeStyle = '#cccccc';
  ctx.strokeRect(lx + 0.5, ly + 0.5, legendWidth, legendHeight);
  entries.forEach((entry, i) => {
    const y = ly + 15 + i * 20;
    ctx.strokeStyle = entry.colour;
    ctx.lineWidth = 2;
    line(ctx, lx + 8, y, lx + 34, y);
    ctx.fillStyle = TEXT_COLOUR;
    ctx.textAlign = 'left';
    ctx.fillText(entry.label, lx + 40, y);
  });
}

function line(ctx: SKRSContext2D, x1: number, y1: number, x2: number, y2: number): void {
  ctx.beginPath();
  ctx.moveTo(x1, y1);
  ctx.lineTo(x2, y2);
  ctx.stroke();
}

/** Round numbers (1, 2, 5 × 10^k steps) covering [min, max], about `count` of them. */
export function niceTicks(min: number, max: number, count: number): number[] {
  if (!(max > min)) return [min];
  const raw = (max - min) / Math.max(1, count);
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const step = ([1, 2, 5, 10].find((m) => m * magnitude >= raw) ?? 10) * magnitude;
  const ticks: number[] = [];
  for (let t = Math.ceil(min / step - 1e-9) * step; t <= max + step * 1e-9; t += step) {
    ticks.push(Number(t.toFixed(10)));
  }
  return ticks;
}

function niceCeil(value: number): number {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  const step = magnitude / 2;
  return Math.ceil(value / step - 1e-9) * step;
}

export interface ConfusionMatrixOptions {
  title?: string;
}

/**
 * A heat map of `matrix[true][predicted]` counts with the count (and the share of the true class) in
 * each cell; rows are true classes, columns predictions, both in `classNames` order.
 */
export async function confusionMatrix(
  matrix: readonly (readonly number[])[],
  classNames: readonly string[],
  options: ConfusionMatrixOptions = {},
): Promise<Buffer> {
  const n = classNames.length;
  if (n === 0 || matrix.length !== n || matrix.some((row) => row.length !== n)) {
    throw new Error(`bug: confusionMatrix: expected a ${n}×${n} matrix for classes ${classNames.join(', ')}`);
  }
  const cell = Math.max(60, Math.min(140, Math.floor(560 / n)));
  const measure = createCanvas(10, 10).getContext('2d');
  measure.font = `14px ${FONT}`;
  const labelWidth = Math.max(...classNames.map((name) => measure.measureText(name).width));
  const left = 60 + labelWidth + 14;
  const top = 64;
  const width = left + n * cell + 40;
  const height = top + n * cell + 66;
  const canvas = createCanvas(Math.ceil(width), Math.ceil(height));
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#ffffff';
  ctx.fillRect(0, 0, canvas.width, canvas.height);

  ctx.fillStyle = TEXT_COLOUR;
  ctx.font = `18px ${FONT}`;
  ctx.textAlign = 'center';
  ctx.textBaseline = 'middle';
  ctx.fillText(options.title ?? 'Confusion matrix', left + (n * cell) / 2, 28);

  const max = Math.max(1, ...matrix.flat());
  for (let t = 0; t < n; t++) {
    const rowTotal = matrix[t]!.reduce((s, v) => s + v, 0);
    for (let p = 0; p < n; p++) {
      const value = matrix[t]![p]!;
      const share = value / max;
      const x = left + p * cell;
      const y = top + t * cell;
      ctx.fillStyle = blues(share);
      ctx.fillRect(x, y, cell, cell);
      ctx.fillStyle = share > 0.5 ? '#ffffff' : TEXT_COLOUR;
      ctx.font = `${Math.round(cell / 4.5)}px ${FONT}`;
      ctx.textAlign = 'center';
      ctx.fillText(String(value), x + cell / 2, y + cell / 2 - (rowTotal > 0 ? cell / 10 : 0));
      if (rowTotal > 0) {
        ctx.font = `${Math.round(cell / 8)}px ${FONT}`;
        ctx.fillText(`${((100 * value) / rowTotal).toFixed(1)}%`, x + cell / 2, y + cell / 2 + cell / 5);
      }
    }
  }
  ctx.strokeStyle = TEXT_COLOUR;
  ctx.lineWidth = 1;
  ctx.strokeRect(left + 0.5, top + 0.5, n * cell, n * cell);

  ctx.fillStyle = TEXT_COLOUR;
  ctx.font = `14px ${FONT}`;
  for (let i = 0; i < n; i++) {
    const name = classNames[i]!;
    ctx.textAlign = 'right';
    ctx.fillText(name, left - 8, top + i * cell + cell / 2);
    ctx.textAlign = 'center';
    ctx.fillText(fitText(ctx, name, cell - 4), left + i * cell + cell / 2, top + n * cell + 16);
  }
  ctx.font = `15px ${FONT}`;
  ctx.fillText('Predicted label', left + (n * cell) / 2, top + n * cell + 42);
  ctx.save();
  ctx.translate(22, top + (n * cell) / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.textAlign = 'center';
  ctx.fillText('True label', 0, 0);
  ctx.restore();
  return canvas.encode('png');
}

/** matplotlib's 'Blues' colour map, approximately: white (0) to dark blue (1). */
function blues(t: number): string {
  const stops: Array<[number, number, number]> = [
    [247, 251, 255],
    [198, 219, 239],
    [107, 174, 214],
    [33, 113, 181],
    [8, 48, 107],
  ];
  const clamped = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(clamped));
  const f = clamped - i;
  const [a, b] = [stops[i]!, stops[i + 1]!];
  const mixChannel = (k: 0 | 1 | 2) => Math.round(a[k] + (b[k] - a[k]) * f);
  return `rgb(${mixChannel(0)}, ${mixChannel(1)}, ${mixChannel(2)})`;
}
