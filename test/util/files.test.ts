import { promises as fs } from 'node:fs';
import * as path from 'node:path';
import { test } from 'uvu';
import * as assert from 'uvu/assert';
import { concatenateFiles } from '../../src/util/files.ts';
import { tempDir } from '../helpers/run-kind.ts';

test('concatenateFiles: the files end to end, the sources unchanged (the first is copied, not linked)', async () => {
  const dir = tempDir();
  const parts = [Buffer.alloc(3 << 20, 1), Buffer.from('two'), Buffer.alloc(0), Buffer.alloc((1 << 20) + 7, 9)];
  const files = await Promise.all(parts.map(async (bytes, i) => {
    const file = path.join(dir, `part-${i}`);
    await fs.writeFile(file, bytes);
    return file;
  }));
  await concatenateFiles(files, path.join(dir, 'all'));
  assert.ok((await fs.readFile(path.join(dir, 'all'))).equals(Buffer.concat(parts)));
  for (const [i, file] of files.entries()) assert.ok((await fs.readFile(file)).equals(parts[i]!), `part ${i} unchanged`);
  assert.is((await fs.stat(files[0]!)).nlink, 1);

  await concatenateFiles(files.slice(1, 2), path.join(dir, 'one'));
  assert.is(await fs.readFile(path.join(dir, 'one'), 'utf8'), 'two');
  await concatenateFiles([], path.join(dir, 'none'));
  assert.is((await fs.stat(path.join(dir, 'none'))).size, 0);
});

test.run();
