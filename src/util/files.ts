// Small file-system and process facts shared across modules.

import { constants as fsConstants, createReadStream, createWriteStream, promises as fs } from 'node:fs';
import { pipeline } from 'node:stream/promises';

export async function exists(file: string): Promise<boolean> {
  try {
    await fs.access(file);
    return true;
  } catch {
    return false;
  }
}

/** Whether a process with this pid runs on this machine (EPERM: it runs, as another user). */
export function processAlive(pid: number): boolean {
  if (!Number.isInteger(pid) || pid <= 0) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * What a directory entry is, a symbolic link counted as what it points to (data folders are often
 * links into a dataset store, as DVC makes them); a dangling link is 'other'.
 */
export async function entryKind(dir: string, entry: import('node:fs').Dirent): Promise<'file' | 'dir' | 'other'> {
  if (entry.isFile()) return 'file';
  if (entry.isDirectory()) return 'dir';
  if (!entry.isSymbolicLink()) return 'other';
  const stat = await fs.stat(`${dir}/${entry.name}`).catch(() => undefined);
  return stat?.isFile() ? 'file' : stat?.isDirectory() ? 'dir' : 'other';
}

/**
 * A hard link of `from` at `to` (no bytes copied, and it outlives the entry it came from: cache
 * entries are immutable), or a copy where the file system cannot link.
 */
export async function linkOrCopy(from: string, to: string): Promise<void> {
  try {
    await fs.link(from, to);
  } catch {
    await fs.copyFile(from, to);
  }
}

/** The directory tree `from` at `to`, each file through linkOrCopy. */
export async function linkTree(from: string, to: string): Promise<void> {
  await fs.mkdir(to, { recursive: true });
  for (const entry of await fs.readdir(from, { withFileTypes: true })) {
    const source = `${from}/${entry.name}`;
    const target = `${to}/${entry.name}`;
    if (entry.isDirectory()) await linkTree(source, target);
    else await linkOrCopy(source, target);
  }
}

/**
 * `files` end to end at `target`, never a whole file in memory: the first copied by the kernel
 * (a reflink where the file system can), the others streamed onto its end. One file is linked.
 */
export async function concatenateFiles(files: readonly string[], target: string): Promise<void> {
  const [first, ...rest] = files;
  if (first === undefined) {
    await fs.writeFile(target, new Uint8Array());
    return;
  }
  if (rest.length === 0) return linkOrCopy(first, target);
  await fs.copyFile(first, target, fsConstants.COPYFILE_FICLONE);
  for (const file of rest) await pipeline(createReadStream(file, { highWaterMark: 1 << 20 }), createWriteStream(target, { flags: 'a' }));
}
