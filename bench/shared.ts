// Where the real inputs live: the MobileNetV2 ImageNet weights and the 2000 cat/dog photos are in
// `../shared` beside the repository, wherever it is cloned. The benchmark, scripts/bench-frozen.ts
// and the tests that need the real files take the paths from here; src/ knows nothing of this
// folder (a pipeline gets these paths as params).

import { existsSync } from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

export const repoRoot = path.resolve(fileURLToPath(new URL('..', import.meta.url)));
export const sharedDir = path.resolve(repoRoot, '..', 'shared');
export const sharedPhotos = path.join(sharedDir, 'data', 'cats_and_dogs', 'train');
export const sharedWeights = path.join(sharedDir, 'weights', 'mobilenet_v2_1.0_no_top_imagenet_coral.h5');

/** A path as the repository's docs write it: relative to the repository root when it is beside it. */
export function fromRepo(file: string): string {
  const relative = path.relative(repoRoot, path.resolve(file));
  return relative.startsWith(`..${path.sep}..`) ? path.resolve(file) : relative || '.';
}

/**
 * Why tests needing the real files cannot run here (for the skip message), or undefined when
 * every one of `files` is there.
 */
export function missingShared(...files: string[]): string | undefined {
  const missing = files.filter((file) => !existsSync(file));
  if (missing.length === 0) return undefined;
  return `${missing.map(fromRepo).join(', ')} not found: put the shared weights and photos in ../shared beside the repository`;
}
