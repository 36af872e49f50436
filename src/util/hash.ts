// Content hashes of input files and directories (sha256). A directory's hash covers every file's
// relative path and content, in sorted order, so renames and edits both change it.
// Hashes are memoised per (path, size, mtime, inode) in a small JSON index, as DVC does, so that a
// warm re-run does not re-read thousands of unchanged photos.

import { createHash } from 'node:crypto';
import { createReadStream, promises as fs, type Stats } from 'node:fs';
import * as path from 'node:path';

export interface HashIndex {
  entries: Record<string, { key: string; hash: string }>;
  dirty: boolean;
}

export async function loadHashIndex(file: string): Promise<HashIndex> {
  try {
    const entries = JSON.parse(await fs.readFile(file, 'utf8')) as HashIndex['entries'];
    return { entries, dirty: false };
  } catch {
    return { entries: {}, dirty: false };
  }
}

export async function saveHashIndex(file: string, index: HashIndex): Promise<void> {
  if (!index.dirty) return;
  await fs.mkdir(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  await fs.writeFile(tmp, JSON.stringify(index.entries));
  await fs.rename(tmp, file);
  index.dirty = false;
}

function statKey(stat: Stats): string {
  return `${stat.size}:${stat.mtimeMs}:${stat.ino}`;
}

export async function hashFile(file: string, index?: HashIndex): Promise<string> {
  const stat = await fs.stat(file);
  const key = statKey(stat);
  const known = index?.entries[file];
  if (known && known.key === key) return known.hash;
  const hash = createHash('sha256');
  await new Promise<void>((resolve, reject) => {
    createReadStream(file)
      .on('data', (chunk) => hash.update(chunk))
      .on('end', resolve)
      .on('error', reject);
  });
  const digest = hash.digest('hex');
  if (index) {
    index.entries[file] = { key, hash: digest };
    index.dirty = true;
  }
  return digest;
}

/** sha256 of a file, or of a directory tree (paths and contents); throws when the path is missing. */
export async function hashPath(target: string, index?: HashIndex): Promise<string> {
  const stat = await fs.stat(target);
  if (!stat.isDirectory()) return hashFile(target, index);
  const files = await listFiles(target);
  const hash = createHash('sha256');
  for (const rel of files) {
    hash.update(rel);
    hash.update('\0');
    hash.update(await hashFile(path.join(target, rel), index));
    hash.update('\n');
  }
  return `dir:${hash.digest('hex')}`;
}

/** Every regular file below `dir`, as sorted relative paths with '/' separators. */
export async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  const walk = async (rel: string) => {
    const entries = await fs.readdir(path.join(dir, rel), { withFileTypes: true });
    for (const entry of entries) {
      const child = rel ? `${rel}/${entry.name}` : entry.name;
      if (entry.isDirectory()) await walk(child);
      else if (entry.isFile() || entry.isSymbolicLink()) out.push(child);
    }
  };
  await walk('');
  return out.sort();
}

/** Total size in bytes of the files below `target`. */
export async function diskUsage(target: string): Promise<number> {
  try {
    const stat = await fs.stat(target);
    if (!stat.isDirectory()) return stat.size;
  } catch {
    return 0;
  }
  let total = 0;
  for (const rel of await listFiles(target)) {
    try {
      total += (await fs.stat(path.join(target, rel))).size;
    } catch {
      // removed meanwhile
    }
  }
  return total;
}
