// Safe zip extraction with yauzl.
//
// Every entry is checked before anything is written: an entry whose name is absolute (`/x`, `C:x`),
// climbs out of the target (`../x`, `a/../../x`) or is a symbolic link rejects the whole archive with
// an error naming the entry. Files are extracted into a temporary sibling of the target directory,
// which is renamed into place at the end, so the target either holds the whole archive or does not
// exist.

import { randomUUID } from 'node:crypto';
import { createWriteStream, promises as fs } from 'node:fs';
import * as path from 'node:path';
import { pipeline } from 'node:stream/promises';
import yauzl from 'yauzl';
import { InputError } from '../core/errors.ts';

export interface ExtractOptions {
  /** Called after each extracted entry: entries done and in total. */
  onProgress?: (done: number, total: number) => void;
}

export interface ExtractResult {
  /** Number of files written (directories not counted). */
  files: number;
  bytes: number;
}

const S_IFMT = 0o170000;
const S_IFLNK = 0o120000;

/**
 * Extracts `zipPath` into `destDir`, which must not exist yet (its parent is created). Throws on an
 * unsafe entry or a corrupt archive; nothing is left behind then.
 */
export async function extractZip(
  zipPath: string,
  destDir: string,
  options: ExtractOptions = {},
): Promise<ExtractResult> {
  const target = path.resolve(destDir);
  if (await pathExists(target)) {
    throw new InputError(`cannot extract ${zipPath}: ${target} already exists`);
  }
  await fs.mkdir(path.dirname(target), { recursive: true });
  const staging = `${target}.extracting-${randomUUID().slice(0, 8)}`;

  let zip: yauzl.ZipFile;
  try {
    // decodeStrings: false so that yauzl hands us raw names and we report unsafe ones ourselves.
    zip = await yauzl.openPromise(zipPath, { lazyEntries: true, autoClose: false, decodeStrings: false });
  } catch (cause) {
    throw new InputError(`cannot open zip ${zipPath}: ${(cause as Error).message}`, { cause });
  }
  try {
    const entries: Array<{ entry: yauzl.Entry; name: string }> = [];
    for await (const entry of zip.eachEntry()) {
      const name = entryName(entry);
      const problem = unsafeReason(entry, name);
      if (problem) throw new InputError(`unsafe zip entry "${name}" in ${zipPath}: ${problem}`);
      entries.push({ entry, name });
    }

    await fs.mkdir(staging);
    let files = 0;
    let bytes = 0;
    for (const [index, { entry, name }] of entries.entries()) {
      const out = path.join(staging, ...name.split('/'));
      if (name.endsWith('/')) {
        await fs.mkdir(out, { recursive: true });
      } else {
        await fs.mkdir(path.dirname(out), { recursive: true });
        const stream = await zip.openReadStreamPromise(entry);
        await pipeline(stream, createWriteStream(out, { flags: 'wx' }));
        files++;
        bytes += entry.uncompressedSize;
      }
      options.onProgress?.(index + 1, entries.length);
    }
    await fs.rename(staging, target);
    return { files, bytes };
  } catch (error) {
    await fs.rm(staging, { recursive: true, force: true });
    if (error instanceof Error && error.message.startsWith('unsafe zip entry')) throw error;
    throw new InputError(`cannot extract ${zipPath}: ${(error as Error).message}`, { cause: error });
  } finally {
    zip.close();
  }
}

function entryName(entry: yauzl.Entry): string {
  const raw = entry.fileName as unknown as Buffer | string;
  if (typeof raw === 'string') return raw.replace(/\\/g, '/');
  // strictFileNames = false: backslashes become slashes, as archivers on Windows mean them.
  return yauzl.getFileNameLowLevel(entry.generalPurposeBitFlag, raw, entry.extraFields, false);
}

/** Why an entry must not be extracted, or undefined when it is safe. */
function unsafeReason(entry: yauzl.Entry, name: string): string | undefined {
  if (name === '' || name.includes('\0')) return 'empty or invalid name';
  if (name.startsWith('/') || /^[a-zA-Z]:/.test(name)) return 'absolute paths are not allowed';
  if (name.split('/').includes('..')) return 'it would be written outside the target directory';
  // Unix mode bits live in the high half of the external attributes.
  if (((entry.externalFileAttributes >>> 16) & S_IFMT) === S_IFLNK) {
    return 'symbolic links are not allowed';
  }
  return undefined;
}

async function pathExists(file: string): Promise<boolean> {
  try {
    await fs.lstat(file);
    return true;
  } catch {
    return false;
  }
}
