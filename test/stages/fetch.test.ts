import { existsSync, mkdirSync, readdirSync, readFileSync, symlinkSync, writeFileSync } from 'node:fs';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { imageAt, readImageSet } from '../helpers/image-sets.ts';
import { decodeAndResize } from '../../src/ml/images.ts';
import { loadTf } from '../../src/ml/tf.ts';
import fetchKind, { DEFAULT_SOURCE, type FetchParams, type FetchRecord } from '../../src/stages/fetch.ts';
import { writeImageFolder } from '../helpers/images.ts';
import { runKind, tempDir, withDefaults } from '../helpers/run-kind.ts';
import { zipBytes, type ZipEntrySpec } from '../helpers/zip.ts';
import { listFiles } from '../../src/util/hash.ts';

const tf = loadTf();

async function failure(params: Partial<FetchParams>, options: { downloadCacheDir?: string } = {}): Promise<string> {
  try {
    await runKind(fetchKind, params, {}, options);
  } catch (error) {
    return (error as Error).message;
  }
  throw new Error('the stage should have failed');
}

/** The files under `dir` as zip entries below `prefix`. */
function entriesOf(dir: string, prefix: string): ZipEntrySpec[] {
  const entries: ZipEntrySpec[] = [];
  const walk = (rel: string) => {
    for (const entry of readdirSync(path.join(dir, rel), { withFileTypes: true })) {
      const childRel = rel ? `${rel}/${entry.name}` : entry.name;
      if (entry.isDirectory()) {
        entries.push({ name: `${prefix}${childRel}/` });
        walk(childRel);
      } else {
        entries.push({ name: `${prefix}${childRel}`, data: readFileSync(path.join(dir, childRel)) });
      }
    }
  };
  walk('');
  return entries;
}

test('a directory with train/ and validation/ becomes two image sets, as Keras decodes them', async () => {
  const source = tempDir();
  await writeImageFolder(path.join(source, 'train'), { classes: { dogs: 3, cats: 4 } });
  await writeImageFolder(path.join(source, 'validation'), { classes: { dogs: 2, cats: 2 } });
  writeFileSync(path.join(source, 'train/cats/notes.txt'), 'not an image');

  assert.equal(fetchKind.inputPaths?.(withDefaults(fetchKind, { source })), [source]);
  const run = await runKind(fetchKind, { source, image_size: [24, 32] });

  const train = await readImageSet(run.outDir, 'train');
  assert.equal(train.classNames, ['cats', 'dogs']);
  assert.is(train.count, 7);
  assert.equal([train.height, train.width, train.channels, train.views], [24, 32, 3, 1]);
  assert.equal(train.labels, [0, 0, 0, 0, 1, 1, 1]);
  assert.equal(train.files.slice(0, 2), ['train/cats/cats.0.jpg', 'train/cats/cats.1.jpg']);
  const expected = decodeAndResize(tf, readFileSync(path.join(source, 'train/dogs/dogs.2.jpg')), [24, 32]);
  assert.equal(imageAt(train, 6), expected);

  const validation = await readImageSet(run.outDir, 'validation');
  assert.is(validation.count, 4);
  assert.equal(validation.files[3], 'validation/dogs/dogs.1.jpg');

  const record = JSON.parse(readFileSync(path.join(run.outDir, 'fetch.json'), 'utf8')) as FetchRecord;
  assert.equal(record.sets, { train: { cats: 4, dogs: 3 }, validation: { cats: 2, dogs: 2 } });
  assert.is(record.layout, 'subsets');
  assert.is(record.sha256, undefined);

  assert.equal(run.artifacts, ['plots/samples.png']);
  assert.ok(readFileSync(path.join(run.outDir, 'plots/samples.png')).subarray(1, 4).toString() === 'PNG');
  assert.equal(run.summary, { classes: 'cats, dogs', skipped_images: 0, train_images: 7, validation_images: 4 });
  assert.ok(run.progress.some((p) => p.label === 'decode' && p.done === 11 && p.total === 11));
});

test('a zip URL with a lone top folder: downloads once, skips a broken image and names it', async () => {
  const staging = tempDir();
  await writeImageFolder(path.join(staging, 'train'), { classes: { cats: 2, dogs: 2 } });
  await writeImageFolder(path.join(staging, 'validation'), { classes: { cats: 1, dogs: 1 } });
  writeFileSync(path.join(staging, 'train/dogs/broken.jpg'), 'garbage');
  const zip = zipBytes([{ name: 'cats_and_dogs_filtered/' }, ...entriesOf(staging, 'cats_and_dogs_filtered/')]);

  let hits = 0;
  const server = http.createServer((_req, res) => {
    hits++;
    res.writeHead(200, { 'content-length': zip.length });
    res.end(zip);
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/cats_and_dogs_filtered.zip`;
  const downloadCacheDir = tempDir();
  try {
    assert.equal(fetchKind.inputPaths?.(withDefaults(fetchKind, { source: url })), []);
    const run = await runKind(fetchKind, { source: url, image_size: [16, 16] }, {}, { downloadCacheDir });
    const train = await readImageSet(run.outDir, 'train');
    assert.is(train.count, 4);
    assert.equal(train.files, [
      'train/cats/cats.0.jpg',
      'train/cats/cats.1.jpg',
      'train/dogs/dogs.0.jpg',
      'train/dogs/dogs.1.jpg',
    ]);
    assert.is(run.summary['skipped_images'], 1);
    assert.ok(
      run.logs.some((line) => line.startsWith('skipped cats_and_dogs_filtered/train/dogs/broken.jpg: ')),
      run.logs.join('\n'),
    );
    const record = JSON.parse(readFileSync(path.join(run.outDir, 'fetch.json'), 'utf8')) as FetchRecord;
    assert.is(record.root, 'cats_and_dogs_filtered');
    assert.is(record.skipped.length, 1);
    assert.match(record.sha256 ?? '', /^[0-9a-f]{64}$/);
    assert.ok(run.progress.some((p) => p.label === 'download'));

    const again = await runKind(fetchKind, { source: url, image_size: [16, 16] }, {}, { downloadCacheDir });
    assert.is(hits, 1);
    assert.equal(readFileSync(path.join(again.outDir, 'train.u8')), readFileSync(path.join(run.outDir, 'train.u8')));
  } finally {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
});

test('class folders at the root of a local zip become the image set `all`', async () => {
  const staging = tempDir();
  await writeImageFolder(staging, { classes: { a: 2, b: 1, c: 2 }, format: 'png' });
  const dir = tempDir();
  const zipFile = path.join(dir, 'shapes.zip');
  writeFileSync(zipFile, zipBytes(entriesOf(staging, '')));
  const run = await runKind(fetchKind, { source: zipFile, image_size: [8, 8] });
  const all = await readImageSet(run.outDir, 'all');
  assert.equal(all.classNames, ['a', 'b', 'c']);
  assert.equal(all.labels, [0, 0, 1, 2, 2]);
  assert.equal(all.files[2], 'b/b.0.png');
  assert.not.ok(existsSync(path.join(run.outDir, 'train.json')));
  assert.equal(fetchKind.inputPaths?.(withDefaults(fetchKind, { source: zipFile })), [zipFile]);
});

test('symbolic links count as what they point to: linked photos, a linked class folder; a loop is walked once', async () => {
  const store = tempDir();
  await writeImageFolder(store, { classes: { a: 2, b: 2 }, format: 'png' });
  const source = tempDir();
  mkdirSync(path.join(source, 'a'));
  for (const name of readdirSync(path.join(store, 'a'))) symlinkSync(path.join(store, 'a', name), path.join(source, 'a', name));
  symlinkSync(path.join(store, 'b'), path.join(source, 'b'));
  symlinkSync(path.join(source, 'a'), path.join(source, 'a', 'loop')); // a cycle
  const linked = await readImageSet((await runKind(fetchKind, { source, image_size: [8, 8] })).outDir, 'all');
  const direct = await readImageSet((await runKind(fetchKind, { source: store, image_size: [8, 8] })).outDir, 'all');
  assert.equal(linked.files, direct.files);
  assert.equal(linked.labels, direct.labels);
  assert.ok(Buffer.from(linked.pixels).equals(Buffer.from(direct.pixels)));
});

test('`subsets` picks subset folders', async () => {
  const source = tempDir();
  await writeImageFolder(path.join(source, 'train'), { classes: { a: 1, b: 1 } });
  await writeImageFolder(path.join(source, 'validation'), { classes: { a: 1, b: 1 } });
  const run = await runKind(fetchKind, { source, image_size: [8, 8], subsets: ['train'] });
  assert.ok(existsSync(path.join(run.outDir, 'train.json')));
  assert.not.ok(existsSync(path.join(run.outDir, 'validation.json')));
  assert.is(
    await failure({ source, subsets: ['train', 'test'] }),
    `subset folder test not found in ${source}`,
  );
});

test('clear errors: one class, an empty class, different classes, a missing source, an unsafe zip', async () => {
  const one = tempDir();
  await writeImageFolder(path.join(one, 'train'), { classes: { cats: 2 } });
  assert.is(
    await failure({ source: one }),
    `only one class folder (cats) in ${path.join(one, 'train')}: a classifier needs at least two`,
  );

  const empty = tempDir();
  await writeImageFolder(empty, { classes: { cats: 2 } });
  mkdirSync(path.join(empty, 'dogs'));
  writeFileSync(path.join(empty, 'dogs', 'readme.txt'), '');
  assert.is(
    await failure({ source: empty }),
    `class folder ${path.join(empty, 'dogs')} has no images (.bmp .gif .jpeg .jpg .png)`,
  );

  const broken = tempDir();
  await writeImageFolder(broken, { classes: { cats: 1 } });
  mkdirSync(path.join(broken, 'dogs'));
  writeFileSync(path.join(broken, 'dogs', 'x.jpg'), 'garbage');
  assert.is(await failure({ source: broken }), `class folder ${path.join(broken, 'dogs')} has no decodable images`);

  const mismatched = tempDir();
  await writeImageFolder(path.join(mismatched, 'train'), { classes: { cats: 1, dogs: 1 } });
  await writeImageFolder(path.join(mismatched, 'validation'), { classes: { cats: 1, dog: 1 } });
  assert.is(
    await failure({ source: mismatched }),
    'subset validation has classes cats, dog but train has cats, dogs: every subset needs the same class folders',
  );

  const missing = path.join(tempDir(), 'nowhere');
  assert.is(await failure({ source: missing }), `source ${missing} does not exist`);

  const evil = path.join(tempDir(), 'evil.zip');
  writeFileSync(evil, zipBytes([{ name: 'ok/' }, { name: '../evil.txt', data: 'x' }]));
  assert.is(
    await failure({ source: evil }),
    `unsafe zip entry "../evil.txt" in ${evil}: it would be written outside the target directory`,
  );
  const wrongSum = '1'.repeat(64);
  const goodZip = path.join(tempDir(), 'good.zip');
  writeFileSync(goodZip, zipBytes([{ name: 'a.txt', data: 'a' }]));
  assert.match(await failure({ source: goodZip, sha256: wrongSum }), `checksum mismatch for ${goodZip}: expected sha256 ${wrongSum}, got `);
});

test('fetch in shards: each decodes a contiguous range of the images; merged, the same artifact as one job, byte for byte', async () => {
  const source = tempDir();
  await writeImageFolder(path.join(source, 'train'), { classes: { cats: 3, dogs: 3 }, height: 30, width: 40 });
  await writeImageFolder(path.join(source, 'validation'), { classes: { cats: 2, dogs: 2 }, height: 30, width: 40 });
  writeFileSync(path.join(source, 'train/dogs/broken.jpg'), 'garbage');
  const params = { source, image_size: [16, 16] as [number, number] };
  const one = await runKind(fetchKind, params);
  const files = await listFiles(one.outDir);
  assert.equal(files, ['fetch.json', 'plots/samples.png', 'train.json', 'train.u8', 'validation.json', 'validation.u8']);
  // 11 images: train's 7 (the broken one among them), then validation's 4.
  const ranges: Record<number, string[]> = {
    2: ['images 0–4 of 11', 'images 5–10 of 11'],
    3: ['images 0–2 of 11', 'images 3–6 of 11', 'images 7–10 of 11'],
    12: ['none of the 11 images', ...Array.from({ length: 11 }, (_, i) => `images ${i}–${i} of 11`)],
  };
  for (const [count, expected] of Object.entries(ranges)) {
    const n = Number(count);
    const parts = await Promise.all(Array.from({ length: n }, (_, index) => runKind(fetchKind, params, {}, { shard: { index, count: n } })));
    parts.forEach((part, i) => assert.ok(part.logs.includes(`shard ${i + 1} of ${n}: ${expected[i]}`), part.logs.join('\n')));
    const merged = await runKind(fetchKind, params, {}, { parts: parts.map((p) => p.outDir) });
    assert.equal(await listFiles(merged.outDir), files);
    for (const file of files) assert.ok(readFileSync(path.join(one.outDir, file)).equals(readFileSync(path.join(merged.outDir, file))), `${n} shards: ${file} differs`);
    assert.equal(merged.summary, one.summary);
    assert.ok(merged.logs.includes('train: 6 images (cats 3, dogs 3)'), merged.logs.join('\n'));
    // The broken file is named by the shard that met it.
    assert.is(parts.filter((p) => p.logs.some((l) => l.startsWith('skipped train/dogs/broken.jpg: '))).length, 1);
  }

  // Parts of another fetch, or that leave a gap, make no artifact.
  const parts = await Promise.all([0, 1].map((index) => runKind(fetchKind, params, {}, { shard: { index, count: 2 } })));
  const info = path.join(parts[1]!.outDir, 'part.json');
  const part = JSON.parse(readFileSync(info, 'utf8'));
  for (const [changed, message] of [
    [{ range: { ...part.range, start: 6 } }, /^bug: part 1 of 2 holds images 6–11 of 11, not from 5: the parts were cut differently/],
    [{ record: { ...part.record, classNames: ['cats', 'wolves'] } }, /^bug: part 1 of 2 is of another fetch/],
  ] as const) {
    writeFileSync(info, JSON.stringify({ ...part, ...changed }));
    try {
      await runKind(fetchKind, params, {}, { parts: parts.map((p) => p.outDir) });
      assert.unreachable();
    } catch (error) {
      assert.match((error as Error).message, message);
    }
  }
});

test('defaults: the official URL and 160×160', () => {
  assert.is(fetchKind.params.properties['source']?.['default'], DEFAULT_SOURCE);
  assert.equal(fetchKind.params.properties['image_size']?.['default'], [160, 160]);
  assert.equal(fetchKind.inputPaths?.(withDefaults(fetchKind, {})), []);
});

test.run();
