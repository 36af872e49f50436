// The registry of stage kinds: one line per kind. A kind's module is loaded only when a pipeline
// uses it, and its module must not load TensorFlow at import time (stages call loadTf in `run`).

import type { StageKind, StageKinds } from '../core/stage-kind.ts';

const registry: Record<string, () => Promise<{ default: StageKind<any> }>> = {
  fetch: () => import('./fetch.ts'),
  split: () => import('./split.ts'),
  augment: () => import('./augment.ts'),
  'extract-features': () => import('./extract-features.ts'),
  'derive-activations': () => import('./derive-activations.ts'),
  'train-head': () => import('./train-head.ts'),
  'fine-tune': () => import('./fine-tune.ts'),
  evaluate: () => import('./evaluate.ts'),
};

export const kindNames: readonly string[] = Object.keys(registry);

/** The kind named `name`, or undefined when no such kind exists. */
export async function loadKind(name: string): Promise<StageKind | undefined> {
  const load = registry[name];
  if (!load) return undefined;
  const module = await load();
  return module.default as StageKind;
}

/** The registry as the use cases hand it to analysis. */
export const stageKinds: StageKinds = { names: kindNames, load: loadKind };
