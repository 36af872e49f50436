// Small generated images for tests: a coloured shape per class (class 0 a red disc, class 1 a blue
// square, class 2 a green triangle, …) at a position that varies with the image index, encoded as
// JPEG or PNG with tfjs-node, or as BMP/GIF with hand-written encoders.

import { mkdirSync, writeFileSync } from 'node:fs';
import * as path from 'node:path';
import { loadTf } from '../../src/ml/tf.ts';

export interface RawImage {
  height: number;
  width: number;
  channels: number;
  data: Uint8Array;
}

const COLOURS: Array<[number, number, number]> = [
  [220, 30, 30],
  [30, 60, 220],
  [30, 170, 60],
  [200, 160, 20],
];

/** An RGB picture of class `classIndex`; `variant` moves and resizes the shape. */
export function shapeImage(classIndex: number, variant: number, height = 48, width = 48): RawImage {
  const data = new Uint8Array(height * width * 3);
  const colour = COLOURS[classIndex % COLOURS.length]!;
  const size = Math.min(height, width) * (0.35 + 0.1 * (variant % 3));
  const cy = height * (0.35 + 0.1 * ((variant >> 1) % 4));
  const cx = width * (0.3 + 0.12 * (variant % 4));
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const dy = (y - cy) / size;
      const dx = (x - cx) / size;
      let inside: boolean;
      switch (classIndex % 3) {
        case 0:
          inside = dx * dx + dy * dy < 0.25;
          break;
        case 1:
          inside = Math.abs(dx) < 0.45 && Math.abs(dy) < 0.45;
          break;
        default:
          inside = dy > -0.5 && dy < 0.5 && Math.abs(dx) < (dy + 0.5) * 0.5;
      }
      const o = (y * width + x) * 3;
      const background = 235 - ((x + y + variant * 5) % 40);
      data[o] = inside ? colour[0] : background;
      data[o + 1] = inside ? colour[1] : background;
      data[o + 2] = inside ? colour[2] : background - 20;
    }
  }
  return { height, width, channels: 3, data };
}

/** A horizontal-and-vertical gradient that is easy to reason about: value(y, x, c) = f(y, x) + c. */
export function gradientImage(height: number, width: number, f: (y: number, x: number) => number): RawImage {
  const data = new Uint8Array(height * width * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) data[(y * width + x) * 3 + c] = f(y, x) + c;
    }
  }
  return { height, width, channels: 3, data };
}

export async function encodeJpeg(image: RawImage, quality = 95): Promise<Uint8Array> {
  const tf = loadTf();
  const tensor = tf.tensor3d(image.data, [image.height, image.width, image.channels], 'int32');
  try {
    return await tf.node.encodeJpeg(tensor, image.channels === 1 ? 'grayscale' : 'rgb', quality);
  } finally {
    tensor.dispose();
  }
}

/** PNG with 1 (gray), 3 (RGB) or 4 (RGBA) channels. */
export async function encodePng(image: RawImage): Promise<Uint8Array> {
  const tf = loadTf();
  const tensor = tf.tensor3d(image.data, [image.height, image.width, image.channels], 'int32');
  try {
    return await tf.node.encodePng(tensor, 1);
  } finally {
    tensor.dispose();
  }
}

/** A 24-bit uncompressed BMP (bottom-up rows, BGR, rows padded to 4 bytes). */
export function encodeBmp(image: RawImage): Buffer {
  const { height, width, data } = image;
  const rowBytes = Math.ceil((width * 3) / 4) * 4;
  const buffer = Buffer.alloc(54 + rowBytes * height);
  buffer.write('BM', 0, 'ascii');
  buffer.writeUInt32LE(buffer.length, 2);
  buffer.writeUInt32LE(54, 10);
  buffer.writeUInt32LE(40, 14);
  buffer.writeInt32LE(width, 18);
  buffer.writeInt32LE(height, 22);
  buffer.writeUInt16LE(1, 26);
  buffer.writeUInt16LE(24, 28);
  buffer.writeUInt32LE(rowBytes * height, 34);
  for (let y = 0; y < height; y++) {
    const row = 54 + (height - 1 - y) * rowBytes;
    for (let x = 0; x < width; x++) {
      const i = (y * width + x) * image.channels;
      buffer[row + x * 3] = data[i + 2]!;
      buffer[row + x * 3 + 1] = data[i + 1]!;
      buffer[row + x * 3 + 2] = data[i]!;
    }
  }
  return buffer;
}

/** A 1×1 GIF whose only pixel is white. */
export const WHITE_PIXEL_GIF = Buffer.from('R0lGODlhAQABAIAAAP///wAAACwAAAAAAQABAAACAkQBADs=', 'base64');

export interface FolderSpec {
  /** Class folder name -> number of images. */
  classes: Record<string, number>;
  height?: number;
  width?: number;
  format?: 'jpeg' | 'png';
}

/**
 * Writes `<root>/<class>/<class>.<i>.jpg` (or .png) images of class shapes; class indexes follow the
 * sorted class names. Returns the written paths relative to root.
 */
export async function writeImageFolder(root: string, spec: FolderSpec): Promise<string[]> {
  const written: string[] = [];
  const names = Object.keys(spec.classes).sort();
  for (const [classIndex, name] of names.entries()) {
    mkdirSync(path.join(root, name), { recursive: true });
    for (let i = 0; i < spec.classes[name]!; i++) {
      const image = shapeImage(classIndex, i, spec.height ?? 48, spec.width ?? 48);
      const ext = spec.format === 'png' ? 'png' : 'jpg';
      const bytes = spec.format === 'png' ? await encodePng(image) : await encodeJpeg(image);
      const rel = `${name}/${name}.${i}.${ext}`;
      writeFileSync(path.join(root, rel), bytes);
      written.push(rel);
    }
  }
  return written;
}
