#!/usr/bin/env python3
"""TensorFlow in graph mode, the per-image reference for pipe (`npm run bench`, measurement `graph`).

Two rates on this machine, with the real weights, at 160 px, batches of 32, each timed after a
warm-up (the first call traces the tf.function):

  forward    images/s of a tf.function around the Keras MobileNetV2 base forward
             (include_top=False, called with training=False): what pipe's `features` stage does
             per view (its metric extract_images_per_second)
  fine-tune  images/s of a tf.function train step over the top of the base from cached activations
             at the fine_tune_at block boundary (for fine_tune_at 100: block_10_project_BN, 10x10x96
             per image), as pipe's `fine-tune` stage trains (its metric fine_tune_images_per_second):
             the layers from the boundary to out_relu, those below fine_tune_at frozen but computed
             (98-99 for 100), every BatchNormalization in inference mode (DESIGN.md section 6, as
             keras_recipe.py forces it; gamma and beta train), then the recipe's head
             GlobalAveragePooling2D -> Dropout(0.2) -> Dense(1), BinaryCrossentropy(from_logits=True),
             RMSprop(1e-5); forward, backward and the update per step. Inputs are random (rates only).

Each rate is timed over --seconds of steps (at least 3), or exactly --batches steps when given.

Usage (bench/setup-keras.sh creates the venv):
  bench/.venv/bin/python bench/graph_rates.py --weights FILE.h5 [--seconds 20] [--out rates.json]
  bench/.venv/bin/python bench/graph_rates.py --weights FILE.h5 --batches 2 --warmup 1   # a smoke test

Prints progress and, as its last line, the result as JSON (also written to --out).
"""

import argparse
import json
import os
import statistics
import sys
import time

T_START = time.perf_counter()
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
# The recipe's own helpers: the same weights loading (checked layer by layer) and the same
# inference-mode BatchNormalization as the Keras side of the benchmark.
from keras_recipe import (  # noqa: E402
    RECIPE_FINE_TUNE_AT,
    RECIPE_FINE_TUNE_BASE_PARAMS,
    cpu_model,
    force_inference_batch_norm,
    load_base_weights,
    n_params,
    peak_rss_mb,
    write_json,
)

RATES = ("forward", "fine-tune")


def log(message):
    print(f"[graph {time.perf_counter() - T_START:7.1f}s] {message}", file=sys.stderr, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Images/s of the MobileNetV2 base forward and of a fine-tuning step over its top, in TensorFlow graph mode (tf.function).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--weights", required=True, help="MobileNetV2 no-top weights .h5 (keras-applications layout), or 'none' for random weights")
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--fine-tune-at", type=int, default=RECIPE_FINE_TUNE_AT, help="first trainable layer of the base; the top starts at the block boundary at or below it")
    p.add_argument("--fine-tune-lr", type=float, default=1e-5, help="RMSprop learning rate of the train step")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--seconds", type=float, default=20.0, help="time each rate over at least this many seconds of steps (and at least 3 steps)")
    p.add_argument("--batches", type=int, default=0, help="time exactly this many steps instead of --seconds (0: use --seconds)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (the first one traces the tf.function)")
    p.add_argument("--only", default=",".join(RATES), help=f"comma-separated: {', '.join(RATES)}")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--out", help="write the result as JSON here too")
    args = p.parse_args(argv)
    args.only = [r.strip() for r in args.only.split(",") if r.strip()]
    bad = [r for r in args.only if r not in RATES]
    if bad or not args.only:
        p.error(f"--only: expected some of {', '.join(RATES)}, got {args.only}")
    if args.seconds <= 0 or args.batches < 0 or args.warmup < 1 or args.batch_size < 1:
        p.error("--seconds must be > 0, --batches >= 0, --warmup >= 1, --batch-size >= 1")
    return args


def timed(step, args):
    """Runs `step` (one batch, synchronous) --warmup times untimed, then times it."""
    t = time.perf_counter()
    step()
    first_s = time.perf_counter() - t
    for _ in range(args.warmup - 1):
        step()
    warmup_s = time.perf_counter() - t
    times = []
    start = time.perf_counter()
    while True:
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
        if args.batches:
            if len(times) >= args.batches:
                break
        elif time.perf_counter() - start >= args.seconds and len(times) >= 3:
            break
    total = sum(times)
    return {
        "images_per_second": round(args.batch_size * len(times) / total, 2),
        "median_batch_images_per_second": round(args.batch_size / statistics.median(times), 2),
        "best_batch_images_per_second": round(args.batch_size / min(times), 2),
        "batches": len(times),
        "images": args.batch_size * len(times),
        "seconds": round(total, 3),
        "warmup_batches": args.warmup,
        "warmup_s": round(warmup_s, 3),
        "first_call_s": round(first_s, 3),
    }


def boundary_index(base, fine_tune_at):
    """The highest layer below fine_tune_at whose output alone feeds every layer above it (a block boundary)."""
    index = {layer.name: i for i, layer in enumerate(base.layers)}
    sources = []
    for layer in base.layers:
        inputs = []
        for node in layer._inbound_nodes:  # Keras 3: the tensors each call of the layer consumed
            for tensor in getattr(node, "input_tensors", []):
                inputs.append(index[tensor._keras_history.operation.name])
        sources.append(inputs)
    for b in range(min(fine_tune_at, len(base.layers)) - 1, -1, -1):
        if all(s >= b for j in range(b + 1, len(base.layers)) for s in sources[j]):
            return b
    return 0


def main(argv):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    t = time.perf_counter()
    import numpy as np
    import tensorflow as tf
    import keras
    times = {"import": round(time.perf_counter() - t, 3)}
    keras.utils.set_random_seed(args.seed)
    log(f"TensorFlow {tf.__version__}, Keras {keras.__version__}; {os.cpu_count()} CPUs")
    result = {
        "format": "pipe-graph-rates/1",
        "versions": {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__},
        "machine": {"cpu_count": os.cpu_count(), "cpu_model": cpu_model()},
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "timing": {"seconds": args.seconds, "batches": args.batches, "warmup": args.warmup},
        "times_s": times,
    }

    t = time.perf_counter()
    shape = (args.image_size, args.image_size, 3)
    if args.weights == "none":
        base = keras.applications.MobileNetV2(input_shape=shape, include_top=False, weights=None)
        result["weights"] = {"source": "none (random)"}
    else:
        base = keras.applications.MobileNetV2(input_shape=shape, include_top=False, weights=None)
        result["weights"] = load_base_weights(base, args.weights)
    bn_layers = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    force_inference_batch_norm(keras, bn_layers)
    times["build"] = round(time.perf_counter() - t, 3)
    log(f"base: MobileNetV2 {len(base.layers)} layers, {base.count_params():,} parameters at {args.image_size} px; weights {result['weights']['source']}")

    if "forward" in args.only:
        base.trainable = False
        forward = tf.function(lambda x: base(x, training=False))
        # preprocess_input's range, [-1, 1]
        x = tf.random.uniform((args.batch_size, *shape), -1.0, 1.0, seed=args.seed)
        log(f"forward: tf.function(base(x, training=False)), batch {args.batch_size}")
        rate = timed(lambda: forward(x).numpy(), args)
        rate["output_shape"] = list(forward(x).shape[1:])
        result["forward"] = rate
        log(f"forward: {rate['images_per_second']:.1f} images/s ({rate['batches']} batches in {rate['seconds']:.1f} s)")

    if "fine-tune" in args.only:
        b = boundary_index(base, args.fine_tune_at)
        boundary = base.layers[b]
        base.trainable = True
        for layer in base.layers[:args.fine_tune_at]:
            layer.trainable = False
        # The top of the base alone: from the boundary's output (the cached activations) to out_relu.
        top = keras.Model(boundary.output, base.output, name="top")
        inputs = keras.Input(shape=tuple(boundary.output.shape[1:]))
        y = top(inputs, training=False)
        y = keras.layers.GlobalAveragePooling2D()(y)
        y = keras.layers.Dropout(args.dropout)(y)
        outputs = keras.layers.Dense(1)(y)
        model = keras.Model(inputs, outputs)
        loss_fn = keras.losses.BinaryCrossentropy(from_logits=True)
        optimizer = keras.optimizers.RMSprop(learning_rate=args.fine_tune_lr)
        variables = model.trainable_variables
        optimizer.build(variables)  # its slots now, not inside the first trace
        base_params = n_params(top.trainable_weights)
        head_params = n_params(variables) - base_params
        frozen_computed = [layer.name for layer in top.layers[1:] if not layer.trainable and layer.weights]

        @tf.function
        def train_step(x, labels):
            with tf.GradientTape() as tape:
                logits = model(x, training=True)  # dropout on; BatchNormalization stays in inference mode
                loss = loss_fn(labels, logits)
            grads = tape.gradient(loss, variables)
            optimizer.apply_gradients(zip(grads, variables))
            return loss

        activation_shape = tuple(int(d) for d in boundary.output.shape[1:])
        x = tf.random.normal((args.batch_size, *activation_shape), seed=args.seed)
        labels = tf.cast(tf.random.uniform((args.batch_size, 1), 0, 2, dtype=tf.int32, seed=args.seed), tf.float32)
        log(
            f"fine-tune: fine_tune_at {args.fine_tune_at}, the top from {boundary.name} (layer {b}, {'x'.join(map(str, activation_shape))}); "
            f"{len(variables)} trainable variables, {base_params:,} parameters in the base + {head_params:,} in the head; "
            f"frozen but computed: {', '.join(frozen_computed) or 'none'}; RMSprop({args.fine_tune_lr:g}), batch {args.batch_size}"
        )
        if args.fine_tune_at == RECIPE_FINE_TUNE_AT and base_params != RECIPE_FINE_TUNE_BASE_PARAMS:
            log(f"WARNING: {base_params:,} trainable parameters in the base, the recipe's {RECIPE_FINE_TUNE_BASE_PARAMS:,}")
        rate = timed(lambda: float(train_step(x, labels)), args)
        rate.update({
            "fine_tune_at": args.fine_tune_at,
            "boundary": boundary.name,
            "boundary_index": b,
            "boundary_shape": list(activation_shape),
            "top_layers": len(top.layers) - 1,
            "frozen_computed": frozen_computed,
            "trainable_variables": len(variables),
            "trainable_params": {"base": base_params, "head": head_params, "total": base_params + head_params},
            "matches_recipe": args.fine_tune_at != RECIPE_FINE_TUNE_AT or base_params == RECIPE_FINE_TUNE_BASE_PARAMS,
            "learning_rate": args.fine_tune_lr,
        })
        result["fine_tune"] = rate
        log(f"fine-tune: {rate['images_per_second']:.1f} images/s ({rate['batches']} steps in {rate['seconds']:.1f} s)")

    times["total"] = round(time.perf_counter() - T_START, 3)
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    text = json.dumps(result)
    if args.out:
        write_json(args.out, result)
    print(text, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
