// The on-disk image-set format shared by the data stages (fetch, split, augment) and the model
// stages (extract-features, train-head, fine-tune, evaluate).
//
// An image set `<name>` in a stage's artifact directory is a JSON file and a pixel file:
//   <name>.json    {count, height, width, channels, views, classNames, labels, files[, indexed]}
//   <name>.u8      count × views × height × width × channels bytes, NHWC, RGB, values 0..255
// Pixels are the Keras `image_dataset_from_directory` values (bilinear resize, no antialias),
// rounded to uint8: a 160×160 view is 77 KB instead of 307 KB as float32.
// For augmented views, `<name>.u8` holds `views` consecutive blocks of `count` images (view-major):
// view v of image i starts at ((v * count) + i) * height * width * channels.
//
// An indexed set (what split writes) has `indexed: {file, rows, fileRows}` instead of its own
// `<name>.u8`: image i is row `rows[i]` of `file`, a pixel file of `fileRows` images in the same
// directory (split hard-links the fetched set's pixel file there, so the directory is complete on
// its own and no pixel is stored twice). Indexed sets have one view.
//
// Sets are read and written in batches through ImageSetReader and ImageSetWriter (positioned
// reads and writes on one open file), never as one buffer: memory does not grow with the number of
// images, and pixel files may be larger than the 2 GiB one read can return.

import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { InputError } from '../core/errors.ts';

export interface ImageShape {
  height: number;
  width: number;
  channels: number;
}

/** Where an indexed set's pixels are: rows of another pixel file in the same directory. */
export interface IndexedPixels {
  /** The pixel file (a name in the set's directory). */
  file: string;
  /** Row of `file` for each image of the set (length `count`). */
  rows: number[];
  /** Images in `file`. */
  fileRows: number;
}

export interface ImageSetMeta extends ImageShape {
  count: number;
  /** Number of views per image (1 for plain images; one per epoch for augmented training views). */
  views: number;
  classNames: string[];
  /** Class index per image (length `count`). */
  labels: number[];
  /** Source file per image, relative to the data root (length `count`). */
  files: string[];
  /** Present for an indexed set; absent when the pixels are `<name>.u8`. */
  indexed?: IndexedPixels;
}

export function imageBytes(meta: ImageShape): number {
  return meta.height * meta.width * meta.channels;
}

/** Byte offset of row `row` in a pixel file of `rowBytes`-byte rows (exact up to 2^53 bytes). */
export function rowOffset(row: number, rowBytes: number): number {
  const offset = row * rowBytes;
  if (!Number.isSafeInteger(offset) || row < 0) throw new Error(`bug: row ${row} of ${rowBytes} bytes has no exact offset`);
  return offset;
}

export function pixelFileName(name: string): string {
  return `${name}.u8`;
}

export async function readImageSetMeta(dir: string, name: string): Promise<ImageSetMeta> {
  const file = path.join(dir, `${name}.json`);
  let text: string;
  try {
    text = await fs.readFile(file, 'utf8');
  } catch (cause) {
    throw new InputError(`missing image set ${name} in ${dir}`, { cause });
  }
  return JSON.parse(text) as ImageSetMeta;
}

export async function writeImageSetMeta(dir: string, name: string, meta: ImageSetMeta): Promise<void> {
  if (meta.labels.length !== meta.count || meta.files.length !== meta.count) {
    throw new Error(`bug: image set ${name}: labels/files do not match count ${meta.count}`);
  }
  if (meta.indexed && (meta.indexed.rows.length !== meta.count || meta.views !== 1)) {
    throw new Error(`bug: indexed image set ${name}: ${meta.indexed.rows.length} rows for ${meta.count} images, ${meta.views} views`);
  }
  await fs.writeFile(path.join(dir, `${name}.json`), JSON.stringify(meta));
}

/**
 * Reads rows of an image set (row = view · count + image, as stored) in batches, through one open
 * file. Indexed sets are read through their row list: consecutive rows are read in one call.
 */
export class ImageSetReader {
  readonly rowBytes: number;

  private constructor(
    readonly dir: string,
    readonly name: string,
    readonly meta: ImageSetMeta,
    private readonly handle: fs.FileHandle,
  ) {
    this.rowBytes = imageBytes(meta);
  }

  /** Opens a set and checks its pixel file's size (and an indexed set's rows) against its metadata. */
  static async open(dir: string, name: string): Promise<ImageSetReader> {
    const meta = await readImageSetMeta(dir, name);
    const file = path.join(dir, meta.indexed?.file ?? pixelFileName(name));
    let handle: fs.FileHandle;
    try {
      handle = await fs.open(file, 'r');
    } catch (cause) {
      throw new InputError(`image set ${name} in ${dir}: cannot open its pixels ${path.basename(file)}`, { cause });
    }
    try {
      const { size } = await handle.stat();
      const fileRows = meta.indexed ? meta.indexed.fileRows : meta.count * meta.views;
      const expected = fileRows * imageBytes(meta);
      if (size !== expected) throw new InputError(`image set ${name} in ${dir}: ${size} bytes of pixels, expected ${expected}`);
      if (meta.indexed) {
        const bad = meta.indexed.rows.findIndex((row) => !Number.isInteger(row) || row < 0 || row >= fileRows);
        if (bad >= 0) throw new InputError(`image set ${name} in ${dir}: image ${bad} is row ${meta.indexed.rows[bad]} of a file of ${fileRows}`);
      }
    } catch (error) {
      await handle.close();
      throw error;
    }
    return new ImageSetReader(dir, name, meta, handle);
  }

  /** Rows in the set: count × views. */
  get rows(): number {
    return this.meta.count * this.meta.views;
  }

  /**
   * Rows [start, start + count) into `out` (or a new buffer), `count` × rowBytes bytes; returns
   * the filled part of `out`.
   */
  async read(start: number, count: number, out?: Uint8Array): Promise<Uint8Array> {
    if (!Number.isInteger(start) || !Number.isInteger(count) || start < 0 || count < 0 || start + count > this.rows) {
      throw new Error(`bug: image set ${this.name}: rows ${start}…${start + count - 1} out of range (0…${this.rows - 1})`);
    }
    const bytes = count * this.rowBytes;
    const buffer = out ? out.subarray(0, bytes) : new Uint8Array(bytes);
    if (buffer.length < bytes) throw new Error(`bug: image set ${this.name}: a buffer of ${out!.length} bytes for ${count} rows`);
    const indexed = this.meta.indexed?.rows;
    if (!indexed) {
      await this.readAt(buffer, 0, bytes, rowOffset(start, this.rowBytes));
      return buffer;
    }
    // Runs of consecutive file rows are read in one call each.
    let i = 0;
    while (i < count) {
      const first = indexed[start + i]!;
      let run = 1;
      while (i + run < count && indexed[start + i + run] === first + run) run++;
      await this.readAt(buffer, i * this.rowBytes, run * this.rowBytes, rowOffset(first, this.rowBytes));
      i += run;
    }
    return buffer;
  }

  /** The pixels of image `index` in view `view` (a new buffer). */
  async image(index: number, view = 0): Promise<Uint8Array> {
    return this.read(view * this.meta.count + index, 1);
  }

  async close(): Promise<void> {
    await this.handle.close();
  }

  private async readAt(buffer: Uint8Array, offset: number, length: number, position: number): Promise<void> {
    let done = 0;
    while (done < length) {
      const { bytesRead } = await this.handle.read(buffer, offset + done, length - done, position + done);
      if (bytesRead === 0) throw new InputError(`image set ${this.name} in ${this.dir}: unexpected end of its pixels`);
      done += bytesRead;
    }
  }
}

/** Opens an image set, runs `use` on its reader and closes it. */
export async function withImageSet<T>(dir: string, name: string, use: (reader: ImageSetReader) => Promise<T>): Promise<T> {
  const reader = await ImageSetReader.open(dir, name);
  try {
    return await use(reader);
  } finally {
    await reader.close();
  }
}

/**
 * Writes the metadata of the stored image set `name` (its pixels in `<name>.u8`), its fields in one
 * order: what ImageSetWriter.finish writes, and what a merge of image sets written in parts writes
 * after putting their pixel files end to end, so that both give the same bytes.
 */
export async function writeStoredImageSetMeta(
  dir: string,
  name: string,
  shape: ImageShape,
  meta: Omit<ImageSetMeta, keyof ImageShape | 'indexed'>,
): Promise<ImageSetMeta> {
  const ordered: ImageSetMeta = {
    count: meta.count,
    height: shape.height,
    width: shape.width,
    channels: shape.channels,
    views: meta.views,
    classNames: meta.classNames,
    labels: meta.labels,
    files: meta.files,
  };
  await writeImageSetMeta(dir, name, ordered);
  return ordered;
}

/**
 * Writes an image set image by image or batch by batch: `append` writes whole images at the end
 * of `<name>.u8` (positioned writes), `finish` writes `<name>.json` with the count appended.
 */
export class ImageSetWriter {
  private written = 0;
  readonly rowBytes: number;

  private constructor(
    readonly dir: string,
    readonly name: string,
    readonly shape: ImageShape,
    private readonly handle: fs.FileHandle,
  ) {
    this.rowBytes = imageBytes(shape);
  }

  static async create(dir: string, name: string, shape: ImageShape): Promise<ImageSetWriter> {
    await fs.mkdir(dir, { recursive: true });
    return new ImageSetWriter(dir, name, shape, await fs.open(path.join(dir, pixelFileName(name)), 'w'));
  }

  /** Rows written so far. */
  get rows(): number {
    return this.written;
  }

  /** Appends `pixels.length / rowBytes` whole rows. */
  async append(pixels: Uint8Array): Promise<void> {
    if (pixels.length % this.rowBytes !== 0) {
      throw new Error(`bug: image set ${this.name}: ${pixels.length} bytes are not whole images of ${this.rowBytes}`);
    }
    const position = rowOffset(this.written, this.rowBytes);
    let done = 0;
    while (done < pixels.length) {
      const { bytesWritten } = await this.handle.write(pixels, done, pixels.length - done, position + done);
      done += bytesWritten;
    }
    this.written += pixels.length / this.rowBytes;
  }

  /**
   * Closes the pixel file and writes the metadata; `meta` must account for every row written
   * (count × views = rows).
   */
  async finish(meta: Omit<ImageSetMeta, keyof ImageShape | 'indexed'>): Promise<ImageSetMeta> {
    await this.handle.close();
    if (meta.count * meta.views !== this.written) {
      throw new Error(`bug: image set ${this.name}: ${this.written} images written, metadata says ${meta.count} × ${meta.views} views`);
    }
    return writeStoredImageSetMeta(this.dir, this.name, this.shape, meta);
  }

  /** Closes the file after a failure (the stage's directory is discarded with it). */
  async abort(): Promise<void> {
    await this.handle.close().catch(() => undefined);
  }
}
