// The data a run used, as MLflow dataset inputs (`runs/log-inputs`): what a fetch stage read and
// the train / validation / test sets a split stage made, each with its source, a digest of its
// content, its schema (a uint8 image tensor and a class label) and its profile (images per class).
//
// The digest is the first 16 hex digits of the sha256 of the image set's metadata (files, labels,
// sizes) and pixels, in the set's order (an indexed set's through its rows): equal digests mean the same images in the same order.
// The context tag (`mlflow.data.context`) says what a set was for: `fetched`, `training`,
// `validation` or `testing`.

import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { basename, join } from 'node:path';
import type { PlannedStageInfo } from '../core/events.ts';
import { withImageSet } from '../ml/dataset.ts';
import type { DatasetInput } from './mlflow-client.ts';

export const DATASET_CONTEXT_TAG = 'mlflow.data.context';

const SPLIT_CONTEXTS = { train: 'training', validation: 'validation', test: 'testing' } as const;

interface SetMeta {
  count: number;
  height: number;
  width: number;
  channels: number;
  views: number;
  classNames: string[];
  labels: number[];
}

/**
 * The dataset inputs of a finished fetch or split stage (read from its artifact directory), or []
 * for other stage kinds. `stages` finds the fetch stage upstream of a split, which names the data.
 */
export async function stageDatasets(
  stage: PlannedStageInfo,
  outDir: string,
  stages: ReadonlyMap<string, PlannedStageInfo>,
): Promise<DatasetInput[]> {
  if (stage.kind === 'fetch') {
    const record = JSON.parse(await readFile(join(outDir, 'fetch.json'), 'utf8')) as { source: string; sets: Record<string, unknown> };
    const names = Object.keys(record.sets);
    const metas = await Promise.all(names.map((n) => readMeta(outDir, n)));
    const digest = await digestOf(outDir, names);
    const perSet = Object.fromEntries(names.map((n, i) => [n, profileOf(metas[i]!)]));
    const rows = metas.reduce((sum, m) => sum + m.count, 0);
    return [dataset(sourceName(record.source), record.source, digest, metas[0]!, { num_rows: rows, sets: perSet }, 'fetched')];
  }
  if (stage.kind === 'split') {
    const fetch = stage.needs.map((n) => stages.get(n)).find((s) => s?.kind === 'fetch');
    const source = typeof fetch?.params['source'] === 'string' ? fetch.params['source'] : stage.name;
    const out: DatasetInput[] = [];
    for (const [set, context] of Object.entries(SPLIT_CONTEXTS)) {
      const meta = await readMeta(outDir, set);
      out.push(dataset(`${sourceName(source)}/${set}`, source, await digestOf(outDir, [set]), meta, profileOf(meta), context));
    }
    return out;
  }
  return [];
}

function dataset(name: string, source: string, digest: string, meta: SetMeta, profile: unknown, context: string): DatasetInput {
  const isUrl = /^https?:\/\//i.test(source);
  return {
    tags: [{ key: DATASET_CONTEXT_TAG, value: context }],
    dataset: {
      name,
      digest,
      source_type: isUrl ? 'http' : 'local',
      source: JSON.stringify(isUrl ? { url: source } : { uri: source }),
      schema: JSON.stringify(schemaOf(meta)),
      profile: JSON.stringify(profile),
    },
  };
}

/** MLflow's tensor-spec schema: images [-1, h, w, c] uint8 in, a class index out. */
function schemaOf(meta: SetMeta): unknown {
  const spec = (name: string, dtype: string, shape: number[]) => ({ type: 'tensor', name, 'tensor-spec': { dtype, shape } });
  return {
    mlflow_tensorspec: {
      features: JSON.stringify([spec('image', 'uint8', [-1, meta.height, meta.width, meta.channels])]),
      targets: JSON.stringify([spec(`class (${meta.classNames.join(', ')})`, 'int32', [-1])]),
    },
  };
}

function profileOf(meta: SetMeta): { num_rows: number; classes: Record<string, number> } {
  const classes: Record<string, number> = Object.fromEntries(meta.classNames.map((c) => [c, 0]));
  for (const label of meta.labels) {
    const name = meta.classNames[label];
    if (name !== undefined) classes[name] = (classes[name] ?? 0) + 1;
  }
  return { num_rows: meta.count, classes };
}

/** `https://host/x/cats_and_dogs_filtered.zip` → `cats_and_dogs_filtered`; `./images` → `images`. */
export function sourceName(source: string): string {
  const last = basename(source.replace(/[?#].*$/, '').replace(/\/+$/, ''));
  return last.replace(/\.zip$/i, '') || 'data';
}

async function readMeta(dir: string, set: string): Promise<SetMeta> {
  return JSON.parse(await readFile(join(dir, `${set}.json`), 'utf8')) as SetMeta;
}

/** Rows hashed per read: a few MB whatever the size of the set. */
const DIGEST_ROWS = 64;

async function digestOf(dir: string, sets: string[]): Promise<string> {
  const hash = createHash('sha256');
  for (const set of sets) {
    hash.update(await readFile(join(dir, `${set}.json`)));
    // The pixels in the set's order (an indexed set's through its rows), a batch at a time.
    await withImageSet(dir, set, async (reader) => {
      const buffer = new Uint8Array(DIGEST_ROWS * reader.rowBytes);
      for (let start = 0; start < reader.rows; start += DIGEST_ROWS) {
        hash.update(await reader.read(start, Math.min(DIGEST_ROWS, reader.rows - start), buffer));
      }
    });
  }
  return hash.digest('hex').slice(0, 16);
}
