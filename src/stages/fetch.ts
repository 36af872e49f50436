// fetch: a folder of class sub-folders of images (a URL of a zip, a local zip or a local directory)
// into image sets, decoded and resized exactly as Keras `image_dataset_from_directory` does.
//
// Layout (after descending into a lone top folder such as `cats_and_dogs_filtered/`):
//   <root>/train/<class>/…, <root>/validation/<class>/… (and <root>/test/<class>/…)
//       → image sets `train`, `validation` (, `test`)
//   <root>/<class>/…
//       → image set `all`
// Classes are the sorted sub-folder names (Keras's class indices); every subset must have the same
// classes. Images are found recursively in each class folder (.bmp .gif .jpeg .jpg .png, any case).
// Undecodable files are skipped, named in the log and counted (summary `skipped_images`).
//
// Artifacts: `<set>.json` + `<set>.u8` per image set (src/ml/dataset.ts), `fetch.json` (what was
// read: source, checksum, layout, counts per class, skipped files) and `plots/samples.png` (a 3×3
// grid of training images with their class names, the recipe's first picture).
//
// With `--queue … --shards N` the decoding runs as N shard jobs, each over a contiguous range of the
// image list (every shard lists the same files in the same order), merged into the same artifact,
// byte for byte (see "Sharded" below).

import { promises as fs } from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { download, readDownloadRecord, sha256File } from '../util/download.ts';
import { ImageSetWriter, pixelFileName, readImageSetMeta, withImageSet, writeStoredImageSetMeta, type ImageSetMeta } from '../ml/dataset.ts';
import { comparePaths, decodeImages, listImageFiles, IMAGE_EXTENSIONS } from '../ml/images.ts';
import { createRng, shuffle } from '../ml/augment.ts';
import { imageGrid } from '../ml/plots.ts';
import { loadTf } from '../ml/tf.ts';
import { checkPartsTile, shardRange, type ParamsOf, type PartRange, type ParamsSchema, type Shard, type StageContext, type StageKind } from '../core/stage-kind.ts';
import { extractZip } from '../util/zip.ts';
import { concatenateFiles, entryKind } from '../util/files.ts';
import { InputError, messageOf, UnavailableError } from '../core/errors.ts';

export const DEFAULT_SOURCE = 'https://storage.googleapis.com/mledu-datasets/cats_and_dogs_filtered.zip';

/** Subset folder names recognised at the data root, in output order. */
export const SUBSET_NAMES = ['train', 'validation', 'test'] as const;
export type SubsetName = (typeof SUBSET_NAMES)[number];

/** What `fetch.json` records. */
export interface FetchRecord {
  source: string;
  /** sha256 of the zip that was read (absent for a directory). */
  sha256?: string;
  layout: 'subsets' | 'flat';
  /** The data root, relative to the source (e.g. `cats_and_dogs_filtered`), '' for the source itself. */
  root: string;
  imageSize: [number, number];
  classNames: string[];
  /** Image set name -> images per class (decoded ones). */
  sets: Record<string, Record<string, number>>;
  skipped: Array<{ file: string; reason: string }>;
}

const IGNORED_FOLDERS = new Set(['__MACOSX']);

/** Decoded images per write of a set's pixel file. */
const WRITE_BATCH = 32;

export function isUrl(source: string): boolean {
  return /^https?:\/\//i.test(source);
}

const paramsSchema = {
  type: 'object',
  properties: {
    source: {
      type: 'string',
      minLength: 1,
      default: DEFAULT_SOURCE,
      description: 'http(s) URL of a zip, a local zip file or a local directory of class folders',
    },
    sha256: { type: 'string', pattern: '^[0-9a-fA-F]{64}$', description: 'expected sha256 of the zip' },
    image_size: {
      type: 'array',
      items: { type: 'integer', minimum: 1, maximum: 4096 },
      minItems: 2,
      maxItems: 2,
      default: [160, 160],
      description: '[height, width] of the stored images',
    },
    subsets: {
      type: 'array',
      items: { type: 'string', enum: [...SUBSET_NAMES] },
      minItems: 1,
      uniqueItems: true,
      description: 'subset folders to read (default: whichever of train, validation, test exist)',
    },
  },
  additionalProperties: false,
} as const satisfies ParamsSchema;

export type FetchParams = ParamsOf<typeof paramsSchema>;

const fetchKind: StageKind<FetchParams> = {
  name: 'fetch',
  version: 1,
  description:
    'Reads an image-classification folder (zip URL, local zip or directory) into image sets, decoded and resized as Keras image_dataset_from_directory does.',
  params: paramsSchema,
  inputs: {},
  inputPaths: (params) => (isUrl(params.source) ? [] : [params.source]),
  usesTensorflow: true,
  resources: { cpu: 1 },
  run: runFetch,
  shard: { run: runFetchShard, merge: mergeFetchParts },
};

export default fetchKind;

/** What fetch reads, found before any image is decoded: the same in every shard of a sharded fetch. */
interface FetchPlan {
  /** The data root (a local directory: the source's, or the zip extracted). */
  root: string;
  /** fetch.json with `sets` and `skipped` still empty. */
  record: FetchRecord;
  /** Image set → its files (relative to the root) and their labels, in output order. */
  listings: Array<{ set: string; files: string[]; labels: number[] }>;
  /** Image set → how each class's folder is named in messages (by label). */
  classFolders: Record<string, string[]>;
}

/** One image set of a decoded range: the set's images in the range that could be decoded. */
type DecodedSets = Record<string, ImageSetMeta>;

async function runFetch(ctx: StageContext<FetchParams>): Promise<void> {
  const plan = await planFetch(ctx);
  const total = plan.listings.reduce((n, l) => n + l.files.length, 0);
  const { sets, skipped } = await decodeRange(ctx, plan, ctx.outDir, 0, total);
  await finishFetch(ctx, plan, sets, skipped);
}

/**
 * Finds the data root, its layout and classes, and lists every image (so that progress has a
 * total, and shards cut one list).
 */
async function planFetch(ctx: StageContext<FetchParams>): Promise<FetchPlan> {
  const params = ctx.params;
  const { dir: sourceDir, sha256, isDirectory } = await materialise(ctx, params);

  const { root, layout, sets } = await detectLayout(sourceDir, params.subsets, params.source);
  const rootLabel = path.relative(sourceDir, root).split(path.sep).join('/');
  // How a folder is named in messages: a real path for a directory source, else inside the zip.
  const folderLabel = (rel: string) =>
    isDirectory ? path.join(sourceDir, rootLabel, rel) : `${joinLabel(rootLabel, rel) || '.'} in ${params.source}`;
  const classNames = await checkClasses(root, layout, sets, folderLabel);
  ctx.log(
    `${layout === 'flat' ? 'class folders' : `subsets ${sets.join(', ')}`} in ${displayRoot(params.source, rootLabel)}; ` +
      `classes: ${classNames.join(', ')}`,
  );

  const listings: FetchPlan['listings'] = [];
  const classFolders: FetchPlan['classFolders'] = {};
  for (const set of sets) {
    const files: string[] = [];
    const labels: number[] = [];
    const name = layout === 'flat' ? 'all' : set;
    classFolders[name] = [];
    for (const [label, className] of classNames.entries()) {
      const classRel = layout === 'flat' ? className : `${set}/${className}`;
      classFolders[name].push(folderLabel(classRel));
      const found = await listImageFiles(path.join(root, classRel));
      if (found.length === 0) {
        throw new InputError(`class folder ${folderLabel(classRel)} has no images (${IMAGE_EXTENSIONS.join(' ')})`);
      }
      for (const file of found) {
        files.push(`${classRel}/${file}`);
        labels.push(label);
      }
    }
    listings.push({ set: name, files, labels });
  }
  const record: FetchRecord = {
    source: params.source,
    ...(sha256 ? { sha256 } : {}),
    layout,
    root: rootLabel,
    imageSize: params.image_size,
    classNames,
    sets: {},
    skipped: [],
  };
  return { root, record, listings, classFolders };
}

/**
 * Decodes the images [start, end) of the plan's listings (counted across the sets, in order) into
 * image sets in `dir`, one per listing (empty where the range has none of its images), image by
 * image, a batch per write: memory stays flat in the count.
 */
async function decodeRange(
  ctx: StageContext<FetchParams>,
  plan: FetchPlan,
  dir: string,
  start: number,
  end: number,
): Promise<{ sets: DecodedSets; skipped: FetchRecord['skipped'] }> {
  const tf = loadTf(ctx.flavour);
  const { record } = plan;
  const size = record.imageSize;
  const sets: DecodedSets = {};
  const skipped: FetchRecord['skipped'] = [];
  let offset = 0;
  let done = 0;
  for (const listing of plan.listings) {
    const from = Math.max(start, offset) - offset;
    const to = Math.max(from, Math.min(end, offset + listing.files.length) - offset);
    offset += listing.files.length;
    const files = listing.files.slice(from, to);
    const writer = await ImageSetWriter.create(dir, listing.set, { height: size[0], width: size[1], channels: 3 });
    const batch = new Uint8Array(WRITE_BATCH * writer.rowBytes);
    let batched = 0;
    const flush = async () => {
      await writer.append(batch.subarray(0, batched * writer.rowBytes));
      batched = 0;
    };
    let decoded;
    try {
      decoded = await decodeImages(
        tf,
        plan.root,
        files,
        size,
        async (pixels) => {
          batch.set(pixels, batched * writer.rowBytes);
          if (++batched === WRITE_BATCH) await flush();
        },
        (n) => ctx.progress(done + n, end - start, 'decode'),
      );
      await flush();
    } catch (error) {
      await writer.abort();
      throw error;
    }
    done += files.length;
    for (const skip of decoded.skipped) {
      ctx.log(`skipped ${joinLabel(record.root, skip.file)}: ${skip.reason}`);
      skipped.push({ file: joinLabel(record.root, skip.file), reason: skip.reason });
    }
    sets[listing.set] = await writer.finish({
      count: decoded.kept.length,
      views: 1,
      classNames: record.classNames,
      labels: decoded.kept.map((i) => listing.labels[from + i]!),
      files: decoded.kept.map((i) => files[i]!),
    });
  }
  return { sets, skipped };
}

/**
 * The artifact's end, whole or merged from shards: every class of every set must have kept an
 * image; then fetch.json, the samples picture and the summary.
 */
async function finishFetch(
  ctx: StageContext<FetchParams>,
  plan: Pick<FetchPlan, 'record' | 'classFolders'>,
  sets: DecodedSets,
  skipped: FetchRecord['skipped'],
): Promise<void> {
  const record: FetchRecord = { ...plan.record, sets: {}, skipped };
  const { classNames } = record;
  for (const [name, set] of Object.entries(sets)) {
    const perClass: Record<string, number> = {};
    for (const [label, className] of classNames.entries()) {
      const count = set.labels.filter((l) => l === label).length;
      if (count === 0) throw new InputError(`class folder ${plan.classFolders[name]![label]} has no decodable images`);
      perClass[className] = count;
    }
    record.sets[name] = perClass;
    ctx.log(`${name}: ${set.count} images (${classNames.map((c) => `${c} ${perClass[c]}`).join(', ')})`);
  }
  await fs.writeFile(path.join(ctx.outDir, 'fetch.json'), JSON.stringify(record, null, 2) + '\n');

  const shown = sets['train'] ? 'train' : sets['all'] ? 'all' : Object.keys(sets)[0]!;
  await writeSamples(ctx, shown);

  const facts: Record<string, number | string> = { classes: classNames.join(', '), skipped_images: record.skipped.length };
  for (const [name, set] of Object.entries(sets)) facts[`${name}_images`] = set.count;
  ctx.summary(facts);
}

// ---------------------------------------------------------------------------------------------
// Sharded: with `--queue … --shards N`, N jobs each decode a contiguous range of the images (every
// shard lists the same files in the same order), and a merge puts the ranges end to end: the
// same image sets, fetch.json and samples, byte for byte, as one job.

/** A shard's part: its range's image sets (`<set>.json` + `<set>.u8`) and `part.json`. */
const PART_FILE = 'part.json';

interface FetchPart {
  shard: Shard;
  /** The range [start, end) of the `of` images this shard decoded. */
  range: PartRange;
  record: FetchRecord;
  classFolders: FetchPlan['classFolders'];
  sets: string[];
  skipped: FetchRecord['skipped'];
}

async function runFetchShard(ctx: StageContext<FetchParams>, shard: Shard): Promise<void> {
  const plan = await planFetch(ctx);
  const of = plan.listings.reduce((n, l) => n + l.files.length, 0);
  const { start, end } = shardRange(of, shard);
  ctx.log(`shard ${shard.index + 1} of ${shard.count}: ${end > start ? `images ${start}–${end - 1} of ${of}` : `none of the ${of} images`}`);
  const { skipped } = await decodeRange(ctx, plan, ctx.outDir, start, end);
  const part: FetchPart = {
    shard,
    range: { start, end, of },
    record: plan.record,
    classFolders: plan.classFolders,
    sets: plan.listings.map((l) => l.set),
    skipped,
  };
  await fs.writeFile(path.join(ctx.outDir, PART_FILE), JSON.stringify(part));
}

async function mergeFetchParts(ctx: StageContext<FetchParams>, parts: string[]): Promise<void> {
  const infos = await Promise.all(parts.map(async (dir) => JSON.parse(await fs.readFile(path.join(dir, PART_FILE), 'utf8')) as FetchPart));
  const first = infos[0]!;
  const what = (info: FetchPart) => JSON.stringify([info.record, info.classFolders, info.sets]);
  infos.forEach((info, i) => {
    if (what(info) !== what(first)) throw new Error(`bug: part ${i} of ${parts.length} is of another fetch`);
  });
  checkPartsTile(infos, 'images');
  const sets: DecodedSets = {};
  for (const name of first.sets) {
    const metas = await Promise.all(parts.map((dir) => readImageSetMeta(dir, name)));
    await concatenateFiles(parts.map((dir) => path.join(dir, pixelFileName(name))), path.join(ctx.outDir, pixelFileName(name)));
    sets[name] = await writeStoredImageSetMeta(ctx.outDir, name, metas[0]!, {
      count: metas.reduce((n, m) => n + m.count, 0),
      views: 1,
      classNames: first.record.classNames,
      labels: metas.flatMap((m) => m.labels),
      files: metas.flatMap((m) => m.files),
    });
  }
  ctx.log(`merged ${parts.length} parts: ${first.range.of} images`);
  await finishFetch(ctx, first, sets, infos.flatMap((info) => info.skipped));
}

const LOCAL_DATA_HINT = 'for local data, give a directory of class folders or a zip instead of the URL, e.g. -p data=DIR';

/** The source as a local directory: downloads and/or extracts a zip when needed. */
async function materialise(
  ctx: StageContext<FetchParams>,
  params: FetchParams,
): Promise<{ dir: string; sha256?: string; isDirectory: boolean }> {
  const { source } = params;
  let zipPath: string;
  if (isUrl(source)) {
    zipPath = await download({
      url: source,
      sha256: params.sha256,
      cacheDir: ctx.downloadCacheDir,
      onProgress: (received, total) => ctx.progress(received, total, 'download'),
      log: ctx.log,
    }).catch((error: unknown) => {
      // Expected offline or behind a firewall: say so and how to go on, without a stack.
      throw new UnavailableError(messageOf(error), { cause: error, hint: LOCAL_DATA_HINT });
    });
    const record = await readDownloadRecord(zipPath);
    if (!params.sha256 && record) {
      ctx.log(`downloaded ${source} (sha256 ${record.sha256}; pin it with \`sha256:\` to verify later downloads)`);
    }
  } else {
    // Relative paths are relative to the pipeline file's directory, the stage process's cwd.
    const local = source === '~' || source.startsWith('~/') ? path.join(os.homedir(), source.slice(1)) : path.resolve(source);
    let stat;
    try {
      stat = await fs.stat(local);
    } catch {
      throw new InputError(`source ${source} does not exist`);
    }
    if (stat.isDirectory()) {
      if (params.sha256) throw new InputError(`sha256 applies to a zip, but source ${source} is a directory`);
      return { dir: local, isDirectory: true };
    }
    if (!(await isZipFile(local))) {
      throw new InputError(`source ${source} is neither a directory nor a zip file`);
    }
    zipPath = local;
    if (params.sha256) {
      const actual = await sha256File(local);
      if (actual !== params.sha256.toLowerCase()) {
        throw new InputError(`checksum mismatch for ${source}: expected sha256 ${params.sha256.toLowerCase()}, got ${actual}`);
      }
    }
  }
  const dir = path.join(ctx.tmpDir, 'extracted');
  ctx.log(`extracting ${path.basename(zipPath)}`);
  await extractZip(zipPath, dir, { onProgress: (done, total) => ctx.progress(done, total, 'extract') });
  const sha256 = params.sha256?.toLowerCase() ?? (await readDownloadRecord(zipPath))?.sha256 ?? (await sha256File(zipPath));
  return { dir, sha256, isDirectory: false };
}

async function isZipFile(file: string): Promise<boolean> {
  const handle = await fs.open(file, 'r');
  try {
    const { buffer, bytesRead } = await handle.read(Buffer.alloc(4), 0, 4, 0);
    return bytesRead === 4 && buffer.readUInt32LE(0) === 0x04034b50;
  } finally {
    await handle.close();
  }
}

async function subfolders(dir: string): Promise<string[]> {
  const entries = (await fs.readdir(dir, { withFileTypes: true })).filter((e) => !e.name.startsWith('.') && !IGNORED_FOLDERS.has(e.name));
  const kinds = await Promise.all(entries.map((e) => entryKind(dir, e)));
  return entries.filter((_, i) => kinds[i] === 'dir').map((e) => e.name).sort(comparePaths);
}

async function hasFiles(dir: string): Promise<boolean> {
  for (const entry of await fs.readdir(dir, { withFileTypes: true })) {
    if (!entry.name.startsWith('.') && (await entryKind(dir, entry)) === 'file') return true;
  }
  return false;
}

/** Finds the data root and its layout. */
export async function detectLayout(
  sourceDir: string,
  wanted: readonly SubsetName[] | undefined,
  sourceLabel: string = sourceDir,
): Promise<{ root: string; layout: 'subsets' | 'flat'; sets: string[] }> {
  let root = sourceDir;
  for (;;) {
    const folders = await subfolders(root);
    const present = SUBSET_NAMES.filter((name) => folders.includes(name));
    if (wanted) {
      const missing = wanted.filter((name) => !folders.includes(name));
      if (missing.length === 0) return { root, layout: 'subsets', sets: [...wanted] };
    } else if (present.includes('train')) {
      return { root, layout: 'subsets', sets: present };
    }
    // A lone top folder (the zip's `cats_and_dogs_filtered/`): look inside it.
    const only = folders[0];
    if (folders.length === 1 && only !== undefined && !(await hasFiles(root))) {
      const inner = path.join(root, only);
      if ((await subfolders(inner)).length > 0) {
        root = inner;
        continue;
      }
    }
    if (wanted) {
      const missing = wanted.filter((name) => !folders.includes(name));
      throw new InputError(`subset folder${missing.length > 1 ? 's' : ''} ${missing.join(', ')} not found in ${sourceLabel}`);
    }
    return { root, layout: 'flat', sets: ['all'] };
  }
}

/** Sorted class names, the same in every subset, at least two. */
async function checkClasses(
  root: string,
  layout: 'subsets' | 'flat',
  sets: string[],
  folderLabel: (rel: string) => string,
): Promise<string[]> {
  let reference: string[] | undefined;
  let referenceSet = '';
  for (const set of sets) {
    const rel = layout === 'flat' ? '' : set;
    const classes = await subfolders(path.join(root, rel));
    const where = folderLabel(rel);
    if (classes.length === 0) {
      throw new InputError(
        `no class folders in ${where}: expected one sub-folder of images per class` +
          (layout === 'flat' ? ' (or train/ and validation/ folders holding them)' : ''),
      );
    }
    if (classes.length === 1) {
      throw new InputError(`only one class folder (${classes[0]}) in ${where}: a classifier needs at least two`);
    }
    if (reference && classes.join('\n') !== reference.join('\n')) {
      throw new InputError(
        `subset ${set} has classes ${classes.join(', ')} but ${referenceSet} has ${reference.join(', ')}: ` +
          `every subset needs the same class folders`,
      );
    }
    reference ??= classes;
    referenceSet ||= set;
  }
  return reference ?? [];
}

async function writeSamples(ctx: StageContext<FetchParams>, name: string): Promise<void> {
  const png = await withImageSet(ctx.outDir, name, async (set) => {
    const { meta } = set;
    const picked = shuffle([...Array(meta.count).keys()], createRng(0)).slice(0, 9);
    const images = [];
    for (const i of picked) images.push({ data: await set.image(i), height: meta.height, width: meta.width });
    return imageGrid(images, picked.map((i) => meta.classNames[meta.labels[i]!] ?? String(meta.labels[i])), { cols: 3 });
  });
  await fs.mkdir(path.join(ctx.outDir, 'plots'), { recursive: true });
  await fs.writeFile(path.join(ctx.outDir, 'plots', 'samples.png'), png);
  ctx.artifact('plots/samples.png');
}

function joinLabel(root: string, rel: string): string {
  return root ? `${root}/${rel}` : rel;
}

function displayRoot(source: string, root: string): string {
  return root ? `${source} (${root}/)` : source;
}
