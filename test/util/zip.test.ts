import { existsSync, readdirSync, readFileSync } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { extractZip } from '../../src/util/zip.ts';
import { tempDir } from '../helpers/run-kind.ts';
import { writeZip, type ZipEntrySpec } from '../helpers/zip.ts';

async function failure(entries: ZipEntrySpec[]): Promise<{ message: string; dir: string; zip: string }> {
  const dir = tempDir();
  const zip = path.join(dir, 'bad.zip');
  writeZip(zip, entries);
  try {
    await extractZip(zip, path.join(dir, 'out'));
  } catch (error) {
    return { message: (error as Error).message, dir, zip };
  }
  throw new Error('extraction should have failed');
}

test('extracts files and folders, stored and deflated', async () => {
  const dir = tempDir();
  const zip = path.join(dir, 'ok.zip');
  const big = 'cat '.repeat(10_000);
  writeZip(zip, [
    { name: 'top/' },
    { name: 'top/train/cats/a.txt', data: 'meow' },
    { name: 'top/train/dogs/b.txt', data: big, deflate: true },
    { name: 'top/readme', data: '' },
  ]);
  const progress: number[] = [];
  const result = await extractZip(zip, path.join(dir, 'out', 'data'), {
    onProgress: (done) => progress.push(done),
  });
  assert.equal(result, { files: 3, bytes: 4 + big.length });
  assert.is(readFileSync(path.join(dir, 'out/data/top/train/cats/a.txt'), 'utf8'), 'meow');
  assert.is(readFileSync(path.join(dir, 'out/data/top/train/dogs/b.txt'), 'utf8'), big);
  assert.equal(progress, [1, 2, 3, 4]);
  assert.equal(readdirSync(path.join(dir, 'out')), ['data']);
});

test('rejects an entry that climbs out of the target, writing nothing', async () => {
  const { message, dir, zip } = await failure([
    { name: 'fine.txt', data: 'ok' },
    { name: '../evil.txt', data: 'pwned' },
  ]);
  assert.is(message, `unsafe zip entry "../evil.txt" in ${zip}: it would be written outside the target directory`);
  assert.not.ok(existsSync(path.join(dir, 'evil.txt')));
  assert.equal(readdirSync(dir), ['bad.zip']);
});

test('rejects a nested climb, an absolute path, a drive path, a backslash climb', async () => {
  const cases: Array<[string, string]> = [
    ['a/b/../../../x.txt', 'it would be written outside the target directory'],
    ['/etc/passwd', 'absolute paths are not allowed'],
    ['C:/Windows/x.txt', 'absolute paths are not allowed'],
    ['..\\evil.txt', 'it would be written outside the target directory'],
  ];
  for (const [name, reason] of cases) {
    const { message, zip } = await failure([{ name, data: 'x' }]);
    const shown = name.replace(/\\/g, '/');
    assert.is(message, `unsafe zip entry "${shown}" in ${zip}: ${reason}`);
  }
});

test('rejects symbolic links', async () => {
  const { message, zip, dir } = await failure([
    { name: 'data/', data: '' },
    { name: 'data/link', data: '/etc/passwd', symlink: true },
  ]);
  assert.is(message, `unsafe zip entry "data/link" in ${zip}: symbolic links are not allowed`);
  assert.equal(readdirSync(dir), ['bad.zip']);
});

test('refuses an existing target and reports a corrupt archive clearly', async () => {
  const dir = tempDir();
  const zip = path.join(dir, 'ok.zip');
  writeZip(zip, [{ name: 'a.txt', data: 'a' }]);
  await extractZip(zip, path.join(dir, 'out'));
  try {
    await extractZip(zip, path.join(dir, 'out'));
    assert.unreachable();
  } catch (error) {
    assert.is((error as Error).message, `cannot extract ${zip}: ${path.join(dir, 'out')} already exists`);
  }

  const junk = path.join(dir, 'junk.zip');
  writeZip(junk, []);
  const bytes = readFileSync(junk);
  const { writeFileSync } = await import('node:fs');
  writeFileSync(junk, Buffer.concat([Buffer.from('not a zip at all'), bytes.subarray(0, 10)]));
  try {
    await extractZip(junk, path.join(dir, 'out2'));
    assert.unreachable();
  } catch (error) {
    assert.match((error as Error).message, `cannot open zip ${junk}: `);
  }
  assert.not.ok(existsSync(path.join(dir, 'out2')));
});

test.run();
