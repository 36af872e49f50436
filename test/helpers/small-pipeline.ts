// The learning pipeline at test size: generated images, a small random MobileNetV2 (alpha 0.35 at
// 96 px), two views, a couple of epochs; the flagship's layout (one base pass, derived boundary). Shared by the end-to-end and the cluster tests.

export const smallPipeline = `name: small
experiment: small-e2e
backend: cpu
params:
  data: {type: path, default: ./images}
  fine_tune_at: 100
stages:
  fetch:
    kind: fetch
    with: {source: "\${params.data}", image_size: [96, 96]}
  split:
    kind: split
    needs: [fetch]
    with: {validation_fraction: 0.25, test_fraction: 0.25}
  augment:
    kind: augment
    needs: [split]
    with: {views: 2}
  features:
    kind: extract-features
    needs: [split, augment]
    with: {weights: none, alpha: 0.35, pooled: true, fine_tune_at: 54, batch_size: 8}
  activations:
    kind: derive-activations
    needs: [features]
    with: {fine_tune_at: "\${params.fine_tune_at}", batch_size: 8}
  head:
    kind: train-head
    needs: [features]
    with: {epochs: 2, learning_rate: 0.001}
  fine-tune:
    kind: fine-tune
    needs: [activations, head]
    with: {fine_tune_at: "\${params.fine_tune_at}", epochs: 1, learning_rate: 0.0001}
  evaluate:
    kind: evaluate
    needs: {model: fine-tune, data: split, features: activations, head: head}
`;

/**
 * The small pipeline as a sweep with early stopping: fine-tune for 3 epochs at two learning rates;
 * lr 30 makes RMSprop diverge at once, so ASHA (on val_loss, rungs at 1 and 2 epochs) stops that
 * trial after its first epoch, whatever the random weights.
 */
export const smallEarlyStoppingSweep = `${smallPipeline
  .replace('  fine_tune_at: 100\n', '  fine_tune_at: 100\n  lr: 0.0001\n')
  .replace('with: {fine_tune_at: "\${params.fine_tune_at}", epochs: 1, learning_rate: 0.0001}', 'with: {fine_tune_at: "\${params.fine_tune_at}", epochs: 3, learning_rate: "\${params.lr}", keras_initial_epoch_quirk: false}')}sweep:
  grid:
    lr: [0.0001, 30]
  scheduler: {type: asha, metric: val_loss, grace_period: 1, reduction_factor: 2}
`;
