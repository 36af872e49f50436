// A small line chart (PNG): one line per series over a numeric x axis. Used for a sweep's
// objective against a swept param (e.g. test accuracy against fine_tune_at, one line per
// learning rate).

import { createCanvas, type SKRSContext2D } from '@napi-rs/canvas';
import { niceTicks } from './plots.ts';

export interface Series {
  name: string;
  points: Array<{ x: number; y: number }>;
  /** Marks the last point with a cross: the series was cut there (a trial stopped early). */
  stoppedAt?: boolean;
}

export interface ChartOptions {
  /** Dashed vertical lines, e.g. the rungs of a scheduler. */
  verticals?: Array<{ x: number; label: string }>;
}

const COLOURS = ['#1f77b4', '#ff7f0e', '#2ca02c', '#d62728', '#9467bd', '#8c564b', '#e377c2', '#7f7f7f'];
const FONT = '"DejaVu Sans", "Liberation Sans", sans-serif';

/** The plot area and the maps from data to pixels. */
interface ChartFrame {
  width: number;
  height: number;
  margin: { left: number; right: number; top: number; bottom: number };
  plotW: number;
  plotH: number;
  x0: number;
  x1: number;
  y0: number;
  y1: number;
  px: (x: number) => number;
  py: (y: number) => number;
}

export async function lineChart(series: Series[], labels: { title: string; x: string; y: string }, options: ChartOptions = {}): Promise<Buffer> {
  const frame = chartFrame(series);
  const { width, height } = frame;
  const canvas = createCanvas(width, height);
  const ctx = canvas.getContext('2d');
  ctx.fillStyle = '#ffffff';
  ctx.fillRect(0, 0, width, height);
  drawAxes(ctx, frame);
  drawLabels(ctx, frame, labels);
  for (const v of options.verticals ?? []) drawVertical(ctx, frame, v);
  series.forEach((s, i) => drawLine(ctx, frame, s, i));
  return canvas.encode('png');
}

function drawVertical(ctx: SKRSContext2D, frame: ChartFrame, v: { x: number; label: string }): void {
  const { margin, plotH, px, x0, x1 } = frame;
  if (v.x < x0 || v.x > x1) return;
  ctx.save();
  ctx.strokeStyle = '#999999';
  ctx.setLineDash([5, 4]);
  ctx.lineWidth = 1;
  ctx.beginPath();
  ctx.moveTo(px(v.x), margin.top);
  ctx.lineTo(px(v.x), margin.top + plotH);
  ctx.stroke();
  ctx.setLineDash([]);
  ctx.fillStyle = '#666666';
  ctx.font = `12px ${FONT}`;
  ctx.textAlign = 'center';
  ctx.fillText(v.label, px(v.x), margin.top - 6);
  ctx.restore();
}

function chartFrame(series: Series[]): ChartFrame {
  // The legend sits right of the plot: make room for its longest name.
  const measure = createCanvas(10, 10).getContext('2d');
  measure.font = `13px ${FONT}`;
  const legendWidth = Math.max(60, ...series.map((s) => measure.measureText(s.name).width));
  const plotWidth = 540;
  const height = 480;
  const margin = { left: 80, right: Math.ceil(legendWidth) + 60, top: 50, bottom: 60 };
  const width = margin.left + plotWidth + margin.right;
  const { x0, x1, y0, y1 } = dataRange(series);
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;
  const px = (x: number) => margin.left + ((x - x0) / (x1 - x0)) * plotW;
  const py = (y: number) => margin.top + plotH - ((y - y0) / (y1 - y0)) * plotH;
  return { width, height, margin, plotW, plotH, x0, x1, y0, y1, px, py };
}

/** The points' extent, widened where it is empty or a single value, with 10% room above and below. */
function dataRange(series: Series[]): { x0: number; x1: number; y0: number; y1: number } {
  const all = series.flatMap((s) => s.points);
  const xs = all.map((p) => p.x);
  const ys = all.map((p) => p.y).filter(Number.isFinite);
  let [x0, x1] = [Math.min(...xs), Math.max(...xs)];
  let [y0, y1] = [Math.min(...ys), Math.max(...ys)];
  if (!Number.isFinite(x0) || x0 === x1) [x0, x1] = [(x0 || 0) - 1, (x1 || 0) + 1];
  if (!Number.isFinite(y0) || y0 === y1) [y0, y1] = [(y0 || 0) - 0.01, (y1 || 0) + 0.01];
  const pad = (y1 - y0) * 0.1;
  return { x0, x1, y0: y0 - pad, y1: y1 + pad };
}

/** The frame, tick labels on both axes, and horizontal grid lines. */
function drawAxes(ctx: SKRSContext2D, frame: ChartFrame): void {
  const { margin, plotW, plotH, x0, x1, y0, y1, px, py } = frame;
  ctx.strokeStyle = '#222222';
  ctx.lineWidth = 1;
  ctx.strokeRect(margin.left, margin.top, plotW, plotH);
  ctx.fillStyle = '#222222';
  ctx.font = `13px ${FONT}`;
  ctx.textAlign = 'center';
  for (const t of niceTicks(x0, x1, 6)) {
    if (t < x0 || t > x1) continue;
    ctx.fillText(String(Number(t.toPrecision(6))), px(t), margin.top + plotH + 18);
  }
  ctx.textAlign = 'right';
  for (const t of niceTicks(y0, y1, 6)) {
    if (t < y0 || t > y1) continue;
    ctx.fillText(String(Number(t.toPrecision(6))), margin.left - 6, py(t) + 4);
    ctx.strokeStyle = '#eeeeee';
    ctx.beginPath();
    ctx.moveTo(margin.left, py(t));
    ctx.lineTo(margin.left + plotW, py(t));
    ctx.stroke();
  }
}

function drawLabels(ctx: SKRSContext2D, frame: ChartFrame, labels: { title: string; x: string; y: string }): void {
  const { margin, plotW, plotH, height } = frame;
  ctx.textAlign = 'center';
  ctx.font = `bold 15px ${FONT}`;
  ctx.fillText(labels.title, margin.left + plotW / 2, 30);
  ctx.font = `14px ${FONT}`;
  ctx.fillText(labels.x, margin.left + plotW / 2, height - 18);
  ctx.save();
  ctx.translate(20, margin.top + plotH / 2);
  ctx.rotate(-Math.PI / 2);
  ctx.fillText(labels.y, 0, 0);
  ctx.restore();
}

/** Series `i`: a line through its points by x, a dot on each, and its legend entry. */
function drawLine(ctx: SKRSContext2D, frame: ChartFrame, s: Series, i: number): void {
  const { width, margin, px, py } = frame;
  const colour = COLOURS[i % COLOURS.length] ?? '#000000';
  const points = [...s.points].filter((p) => Number.isFinite(p.y)).sort((a, b) => a.x - b.x);
  ctx.strokeStyle = colour;
  ctx.fillStyle = colour;
  ctx.lineWidth = 2;
  ctx.beginPath();
  points.forEach((p, j) => (j === 0 ? ctx.moveTo(px(p.x), py(p.y)) : ctx.lineTo(px(p.x), py(p.y))));
  ctx.stroke();
  for (const p of points) {
    ctx.beginPath();
    ctx.arc(px(p.x), py(p.y), 4, 0, Math.PI * 2);
    ctx.fill();
  }
  const last = points.at(-1);
  if (s.stoppedAt && last) {
    // A cross where the series stops.
    const [cx, cy, r] = [px(last.x), py(last.y), 8];
    ctx.lineWidth = 3;
    ctx.beginPath();
    ctx.moveTo(cx - r, cy - r);
    ctx.lineTo(cx + r, cy + r);
    ctx.moveTo(cx - r, cy + r);
    ctx.lineTo(cx + r, cy - r);
    ctx.stroke();
  }
  ctx.font = `13px ${FONT}`;
  ctx.textAlign = 'left';
  ctx.fillRect(width - margin.right + 15, margin.top + 10 + i * 22, 14, 3);
  ctx.fillText(s.name, width - margin.right + 35, margin.top + 15 + i * 22);
}
