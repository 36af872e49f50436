// How pipe's records are named in MLflow, so that a run page reads like a Keras autolog run.
//
// MLflow's run page draws a chart per metric, grouped into sections by the prefix before a `/`
// (prefixed sections come before the unprefixed "Model metrics" one), and shows keys under
// `system/` on its own System metrics tab. So:
//   - the learning metrics are the only metrics on the Model metrics tab, under the names the stages
//     (and Keras's History) give them: loss, accuracy, val_loss, val_accuracy per epoch;
//     initial_val_*; test_loss, test_accuracy once (linked to the logged model). The head and
//     fine-tune phases share those names with one continuous step — the epoch index, as Keras
//     numbers it when fine-tuning continues with `initial_epoch` — so each learning curve is one
//     chart, end to end, as the recipe plots it; the `learning_rate` curve (Keras 3's name for it in
//     the epoch logs) shows where one phase ends and the next begins;
//   - pipe's per-stage bookkeeping is tags (and the description's stage table), not charts:
//     `pipe.stage.<stage>.status` (ran, cached, failed, skipped), `pipe.stage.<stage>.duration_s`,
//     and a stage's throughput (`pipe.stage.<stage>.extract_images_per_second`);
//   - the optimizer's settings are params named as Keras autolog names them (`opt_name`,
//     `opt_learning_rate`, `opt_beta_1`, ...), prefixed by the stage (`head.opt_name`): the two
//     phases use two optimizers.

import type { PlannedStageInfo } from '../core/events.ts';
import type { MetricPoint } from '../core/stage-kind.ts';

/** The prefix of pipe's per-stage bookkeeping tags. */
export const BOOKKEEPING_PREFIX = 'pipe.stage.';

/** Stage kinds that train with an optimizer and report Keras's per-epoch logs. */
const TRAINING_KINDS = new Set(['train-head', 'fine-tune']);

/** The tag of a stage's bookkeeping figure, e.g. `pipe.stage.head.duration_s`. */
export function bookkeepingKey(stage: string, figure: string): string {
  return `${BOOKKEEPING_PREFIX}${stage}.${figure}`;
}

/**
 * The MLflow points of one point a stage reported: the point, and for a training stage's per-epoch
 * `loss` also the epoch's `learning_rate` (pipe's optimizers keep it constant within a stage: the
 * stage's `learning_rate` param). A bookkeeping point (isBookkeeping) is a tag instead: none.
 */
export function mlflowPoints(stage: PlannedStageInfo | undefined, point: MetricPoint): MetricPoint[] {
  if (isBookkeeping(point.key)) return [];
  const out: MetricPoint[] = [point];
  const lr = stage !== undefined && TRAINING_KINDS.has(stage.kind) ? stage.params['learning_rate'] : undefined;
  if (point.key === 'loss' && typeof lr === 'number') out.push({ ...point, key: 'learning_rate', value: lr });
  return out;
}

/** A stage's throughput figure (`extract_images_per_second`): bookkeeping, kept as a tag. */
export function isBookkeeping(key: string): boolean {
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
