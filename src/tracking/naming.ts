// How pipe's records are named in MLflow, so that a run page reads like a Keras autolog run.
//
// MLflow's run page groups metric charts into sections by the prefix before a `/`, and shows keys
// under `system/` on its own System metrics tab. So:
//   - learning metrics keep the names the stages (and Keras's History) give them, at the top level:
//     loss, accuracy, val_loss, val_accuracy per epoch; initial_val_*; test_loss, test_accuracy once.
//     The head and fine-tune phases share those names with one continuous step — the epoch index, as
//     Keras numbers it when fine-tuning continues with `initial_epoch` — so each learning curve is one
//     chart, end to end, as the recipe plots it; the `learning_rate` curve (Keras 3's name for it in
//     the epoch logs) shows where one phase ends and the next begins;
//   - pipe's bookkeeping goes under `pipe/`: `pipe/<stage>.duration_s`, `pipe/<stage>.cached`, and a
//     stage's throughput (`pipe/<stage>.extract_images_per_second`);
//   - the optimizer's settings are params named as Keras autolog names them (`opt_name`,
//     `opt_learning_rate`, `opt_beta_1`, ...), prefixed by the stage (`head.opt_name`): the two
//     phases use two optimizers.

import type { PlannedStageInfo } from '../core/events.ts';
import type { MetricPoint } from '../core/stage-kind.ts';

/** The section of pipe's own per-stage figures on the run page. */
export const BOOKKEEPING_PREFIX = 'pipe/';

/** Stage kinds that train with an optimizer and report Keras's per-epoch logs. */
const TRAINING_KINDS = new Set(['train-head', 'fine-tune']);

/** The MLflow key of a stage's bookkeeping figure, e.g. `pipe/head.duration_s`. */
export function bookkeepingKey(stage: string, figure: string): string {
  return `${BOOKKEEPING_PREFIX}${stage}.${figure}`;
}

/**
 * The MLflow points of one point a stage reported: the point under its MLflow name, and for a
 * training stage's per-epoch `loss` also the epoch's `learning_rate` (pipe's optimizers keep it
 * constant within a stage: the stage's `learning_rate` param).
 */
export function mlflowPoints(stage: PlannedStageInfo | undefined, point: MetricPoint): MetricPoint[] {
  const name = stage?.name ?? '';
  const key = stage !== undefined && isThroughput(point.key) ? bookkeepingKey(name, point.key) : point.key;
  const out: MetricPoint[] = [{ ...point, key }];
  const lr = stage !== undefined && TRAINING_KINDS.has(stage.kind) ? stage.params['learning_rate'] : undefined;
  if (point.key === 'loss' && typeof lr === 'number') out.push({ ...point, key: 'learning_rate', value: lr });
  return out;
}

function isThroughput(key: string): boolean {
  return key.endsWith('_per_second');
}

/**
 * Keras's `optimizer.get_config()` as mlflow.tensorflow.autolog logs it (`opt_<key>`), for the
 * optimizers pipe implements (src/ml/train.ts: Keras's defaults), as `<stage>.opt_<key>` params.
 */
export function optimizerParams(stage: PlannedStageInfo): Array<[string, string]> {
  if (!TRAINING_KINDS.has(stage.kind)) return [];
  const name = stage.params['optimizer'];
  const lr = stage.params['learning_rate'];
  if (typeof name !== 'string' || typeof lr !== 'number') return [];
  const config = OPTIMIZER_CONFIGS[name];
  if (config === undefined) return [];
  return Object.entries({ ...config, learning_rate: lr }).map(([k, v]) => [`${stage.name}.opt_${k}`, String(v)]);
}

const OPTIMIZER_CONFIGS: Record<string, Record<string, string | number | boolean>> = {
  adam: { name: 'adam', beta_1: 0.9, beta_2: 0.999, epsilon: 1e-7, amsgrad: false },
  rmsprop: { name: 'rmsprop', rho: 0.9, momentum: 0, epsilon: 1e-7, centered: false },
  sgd: { name: 'SGD', momentum: 0, nesterov: false },
};
