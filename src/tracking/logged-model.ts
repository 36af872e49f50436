// The final model of a run as an MLflow 3 LoggedModel: what an evaluate stage saved (model/ — the
// tfjs layers model whose model.json carries the class names and the preprocessing) becomes the
// model's artifacts, with an `MLmodel` file saying how to use it; the run's params become its
// params; the test metrics are logged with its model_id (its "Model metrics"); it is finalized READY
// and recorded as the run's output. `pipe register` then versions it in the Model Registry.

import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import type { PlannedStageInfo, RunStartEvent } from '../core/events.ts';
import type { JournalOp } from './journal.ts';
import type { KeyValue, Metric } from './mlflow-client.ts';

/** The stage kinds whose output is a model to log. */
export const MODEL_STAGE_KINDS = new Set(['evaluate']);

/** The evaluate stage's metrics that measure the model (logged once, with its model_id). */
export function isModelMetric(stage: PlannedStageInfo | undefined, key: string): boolean {
  return stage !== undefined && MODEL_STAGE_KINDS.has(stage.kind) && key.startsWith('test_');
}

export interface ModelOpsInput {
  start: RunStartEvent;
  stage: PlannedStageInfo;
  /** The stage's artifact directory (holds model/). */
  outDir: string;
  /** The run's params (the model's too). */
  params: KeyValue[];
  /** Its test metrics, to be linked to the model. */
  metrics: Metric[];
  /** `--register NAME [--alias A]`: a Model Registry version too. */
  register?: { name: string; aliases: string[] };
}

/** The journal ops that log the stage's model, or [] when the stage saved none. */
export function loggedModelOps(input: ModelOpsInput): JournalOp[] {
  const modelDir = join(input.outDir, 'model');
  let files: string[];
  let metadata: Record<string, unknown>;
  try {
    files = readdirSync(modelDir).sort();
    metadata = (JSON.parse(readFileSync(join(modelDir, 'model.json'), 'utf8')) as { userDefinedMetadata?: Record<string, unknown> }).userDefinedMetadata ?? {};
  } catch {
    return [];
  }
  const ref = input.stage.name;
  const classes = Array.isArray(metadata['classNames']) ? (metadata['classNames'] as unknown[]).map(String) : [];
  const tags: KeyValue[] = [
    { key: 'pipe.run_id', value: input.start.runId },
    { key: 'pipe.pipeline', value: input.start.pipelineName },
    { key: 'pipe.stage', value: input.stage.name },
    { key: 'pipe.classes', value: classes.join(', ') },
    { key: 'pipe.preprocessing', value: String(metadata['preprocessing'] ?? '') },
  ];
  const ops: JournalOp[] = [
    { kind: 'create-logged-model', ref, name: modelName(input.start, input.stage), modelType: 'tfjs-layers', params: input.params, tags },
    ...files.map((f): JournalOp => ({ kind: 'upload-artifact', path: f, file: join(modelDir, f), modelRef: ref })),
    { kind: 'upload-artifact', path: 'MLmodel', text: mlmodelFile(input, metadata, files), modelRef: ref },
    { kind: 'log-batch', metrics: input.metrics, modelRef: ref },
    { kind: 'finalize-logged-model', ref, status: 'LOGGED_MODEL_READY' },
    { kind: 'log-outputs', ref, step: 0 },
  ];
  if (input.register !== undefined) ops.push({ kind: 'register-model', ref, ...input.register });
  return ops;
}

function modelName(start: RunStartEvent, stage: PlannedStageInfo): string {
  return stage.name === 'evaluate' ? start.pipelineName : `${start.pipelineName}-${stage.name}`;
}

/** MLflow's tensor signature: raw pixels in, one logit (binary) or one per class out. */
function signature(metadata: Record<string, unknown>): string[] {
  const shape = metadata['inputShape'];
  const classes = metadata['classNames'];
  if (!Array.isArray(shape) || !Array.isArray(classes)) return [];
  const units = (metadata['task'] as { kind?: string } | undefined)?.kind === 'binary' ? 1 : classes.length;
  const spec = (name: string, dtype: string, dims: unknown[]) => JSON.stringify([{ type: 'tensor', name, 'tensor-spec': { dtype, shape: [-1, ...dims] } }]);
  return ['signature:', `  inputs: '${spec('image', 'float32', shape)}'`, `  outputs: '${spec('logits', 'float32', [units])}'`];
}

/** MLflow's model descriptor (YAML), with a `tfjs_layers` flavour: what the files are and how to use them. */
function mlmodelFile(input: ModelOpsInput, metadata: Record<string, unknown>, files: string[]): string {
  const json = (v: unknown) => JSON.stringify(v ?? null);
  return [
    `artifact_path: model`,
    `created_by: pipe (${input.start.pipelineName}, run ${input.start.runId}, stage ${input.stage.name})`,
    ...signature(metadata),
    `flavors:`,
    `  tfjs_layers:`,
    `    model_file: model.json`,
    `    weights: ${json(files.filter((f) => f.endsWith('.bin')))}`,
    `    input: ${json(metadata['inputShape'])}  # raw RGB pixels 0..255, height × width × channels`,
    `    preprocessing: ${json(metadata['preprocessing'])}  # applied inside the model by its first layer`,
    `    output: ${json(metadata['output'])}`,
    `    task: ${json(metadata['task'])}`,
    `    class_names: ${json(metadata['classNames'])}`,
    `    load: tf.loadLayersModel('file://.../model.json'), or pipe predict models:/NAME/VERSION IMAGE...`,
    '',
  ].join('\n');
}
