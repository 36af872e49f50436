#!/usr/bin/env python3
"""The Keras transfer-learning recipe (DESIGN.md section 1), the reference side of `npm run bench`.

MobileNetV2 + a new head on cats vs dogs, exactly as the TensorFlow tutorial runs it, in
TensorFlow / Keras 3, reading the same inputs as pipe's pipeline (pipelines/mobilenet.yaml):

  data     a directory: train/ + validation/ (+ test/) of class folders, as in the official zip
           (a lone top folder such as cats_and_dogs_filtered/ is descended into), or one folder of
           class folders; or a local .zip of either
  split    the same image sets pipe's `split` stage makes (default --split pipe, its seeded
           shuffles reimplemented here), or --split tutorial: the tutorial's
           validation.take(val_batches // 5) / skip(...) (train/validation layout only)
  load     keras.utils.image_dataset_from_directory per set: 160x160 bilinear, batch 32, shuffled
  augment  RandomFlip('horizontal'), RandomRotation(0.2)
  model    preprocess_input -> MobileNetV2 base (include_top=False, the weights file given, called
           with training=False) -> GlobalAveragePooling2D -> Dropout(0.2) -> Dense(1)
  phase 1  base frozen; Adam(1e-4); BinaryCrossentropy(from_logits=True); 10 epochs
  phase 2  base.trainable = True, layers[:100] frozen; RMSprop(1e-5);
           fit(epochs=10 + 10, initial_epoch=history.epoch[-1])  (11 epochs, as the recipe)
  evaluate loss and accuracy on the test set

One deliberate deviation from running the tutorial's code on Keras 3 (DESIGN.md section 6): every
BatchNormalization layer of the base is forced into inference mode. Keras 3's fit() passes
training=True down into the base despite base(x, training=False), so the unfrozen BN layers would
normalise with batch statistics and the network collapses at the first fine-tuning step (with the
shared weights: loss 0.693, accuracy 0.5). With the fix the trainable count in phase 2 is the
recipe's 1,861,440 (base) + 1,281 (head) = 1,862,721 and the results match the tutorial's.

Usage (bench/setup-keras.sh creates the venv):
  bench/.venv/bin/python bench/keras_recipe.py --data DIR --weights FILE.h5 [--out result.json]

Prints progress and a summary; --out writes the measurements as JSON (wall times per phase and in
total, per-epoch history, validation accuracy after each phase, test loss/accuracy, peak RSS,
versions, CPU count).
"""

import argparse
import json
import math
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import zipfile

T_START = time.perf_counter()

# The recipe's numbers, to check the model against (MobileNetV2 1.0, 160x160, fine_tune_at 100).
RECIPE_BASE_LAYERS = 154
RECIPE_BASE_PARAMS = 2_257_984
RECIPE_HEAD_PARAMS = 1_281
RECIPE_FINE_TUNE_BASE_PARAMS = 1_861_440
RECIPE_FINE_TUNE_AT = 100

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png")
SUBSET_NAMES = ("train", "validation", "test")
IGNORED_FOLDERS = {"__MACOSX"}


def log(message):
    print(f"[keras {time.perf_counter() - T_START:7.1f}s] {message}", flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="The Keras transfer-learning recipe (MobileNetV2, cats vs dogs) on pipe's inputs.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--data", required=True, help="data directory (train/ + validation/ class folders, or class folders) or a local .zip")
    p.add_argument("--weights", required=True, help="MobileNetV2 no-top weights .h5 (keras-applications layout), or 'imagenet' to let Keras download them")
    p.add_argument("--initial-epochs", type=int, default=10, help="phase 1 epochs")
    p.add_argument("--fine-tune-epochs", type=int, default=10, help="the recipe's fine_tune_epochs: phase 2 runs fit(epochs=initial+this, initial_epoch=history.epoch[-1]), i.e. one more")
    p.add_argument("--fine-tune-at", type=int, default=RECIPE_FINE_TUNE_AT, help="first trainable layer of the base in phase 2")
    p.add_argument("--learning-rate", type=float, default=1e-4, help="phase 1 Adam learning rate")
    p.add_argument("--fine-tune-lr", type=float, default=1e-5, help="phase 2 RMSprop learning rate")
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=160)
    p.add_argument("--seed", type=int, default=42, help="seed of the split (as pipe's split stage) and of Keras")
    p.add_argument("--split", choices=("pipe", "tutorial"), default="pipe",
                   help="pipe: the image sets pipe's split stage makes (fixed, disjoint); tutorial: take/skip on the reshuffling validation dataset (train/validation layout only)")
    p.add_argument("--validation-fraction", type=float, default=0.2, help="single-folder data: share of each class for validation")
    p.add_argument("--test-fraction", type=float, default=0.1, help="single-folder data: share of each class for test")
    p.add_argument("--test-batch-fraction", type=float, default=0.2, help="train/validation data: share of the validation batches (rounded down) that become test")
    p.add_argument("--limit", type=int, default=0, help="use only the first N images (sorted) of each class in each folder (smoke tests); 0 = all")
    p.add_argument("--initial-evaluate", action="store_true", help="evaluate the untrained model on the validation set first, as the tutorial does (timed separately)")
    p.add_argument("--no-bn-fix", action="store_true", help="do NOT force inference-mode BatchNormalization (to show the Keras 3 collapse); not the recipe")
    p.add_argument("--dry-run", action="store_true", help="only find the data and print the split (no TensorFlow)")
    p.add_argument("--verbose", type=int, default=2, choices=(0, 1, 2), help="Keras fit/evaluate verbosity")
    p.add_argument("--out", help="write the measurements as JSON here")
    args = p.parse_args(argv)
    if args.initial_epochs < 1 or args.fine_tune_epochs < 0:
        p.error("--initial-epochs must be >= 1 and --fine-tune-epochs >= 0")
    if args.limit < 0:
        p.error("--limit must be >= 0")
    return args


# --- Data: the layout and the split, as pipe's fetch and split stages ---------------------------

def subfolders(directory):
    return sorted(
        e.name for e in os.scandir(directory)
        if e.is_dir() and not e.name.startswith(".") and e.name not in IGNORED_FOLDERS
    )


def has_files(directory):
    return any(e.is_file() and not e.name.startswith(".") for e in os.scandir(directory))


def detect_layout(source):
    """(root, 'subsets' | 'flat', sets), as pipe's fetch stage finds them."""
    root = source
    while True:
        folders = subfolders(root)
        present = [name for name in SUBSET_NAMES if name in folders]
        if "train" in present:
            return root, "subsets", present
        if len(folders) == 1 and not has_files(root) and subfolders(os.path.join(root, folders[0])):
            root = os.path.join(root, folders[0])
            continue
        return root, "flat", ["all"]


def list_image_files(directory):
    """Image files under `directory`, recursive, relative '/' paths in code-point order (pipe's order)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        rel = os.path.relpath(dirpath, directory)
        for name in filenames:
            if name.startswith(".") or not name.lower().endswith(IMAGE_EXTENSIONS):
                continue
            found.append(name if rel == "." else f"{rel.replace(os.sep, '/')}/{name}")
    return sorted(found)


def class_names_of(root, layout, sets):
    reference = None
    for s in sets:
        classes = subfolders(root if layout == "flat" else os.path.join(root, s))
        if len(classes) < 2:
            sys.exit(f"keras_recipe: {os.path.join(root, '' if layout == 'flat' else s)} needs at least two class folders, found {classes}")
        if reference is not None and classes != reference:
            sys.exit(f"keras_recipe: subset {s} has classes {classes} but {sets[0]} has {reference}")
        reference = classes
    if len(reference) != 2:
        sys.exit(f"keras_recipe: the recipe is a binary classifier (Dense(1)); found {len(reference)} classes {reference}")
    return reference


def list_set(root, layout, set_name, class_names, limit):
    """Files (absolute) and labels of one fetched set, class by class in sorted order (pipe's indices)."""
    files, labels = [], []
    for label, cls in enumerate(class_names):
        folder = os.path.join(root, cls) if layout == "flat" else os.path.join(root, set_name, cls)
        found = list_image_files(folder)
        if limit:
            found = found[:limit]
        if not found:
            sys.exit(f"keras_recipe: class folder {folder} has no images")
        files += [os.path.join(folder, f) for f in found]
        labels += [label] * len(found)
    return files, labels


M32 = 0xFFFFFFFF


def _mix(value):
    z = value & M32
    z = ((z ^ (z >> 16)) * 0x85EBCA6B) & M32
    z = ((z ^ (z >> 13)) * 0xC2B2AE35) & M32
    return z ^ (z >> 16)


def create_rng(seed, *stream):
    """pipe's createRng (src/ml/augment.ts): the same (seed, stream ids) give the same floats."""
    state = _mix(0x2545F491 ^ (seed & M32) ^ ((seed // 2**32) & M32))
    for i in stream:
        state = _mix(state ^ _mix((i + 0x632BE5AB) & M32))
    cell = [state]

    def next_float():
        cell[0] = (cell[0] + 0x9E3779B9) & M32
        return _mix(cell[0]) / 2**32

    return next_float


def shuffle(items, rng):
    """pipe's Fisher-Yates shuffle, in place."""
    for i in range(len(items) - 1, 0, -1):
        j = math.floor(rng() * (i + 1))
        items[i], items[j] = items[j], items[i]
    return items


def js_round(x):
    return math.floor(x + 0.5)


def recipe_test_count(count, batch_size, fraction):
    batches = math.ceil(count / batch_size)
    return min(count, math.floor(batches * fraction + 1e-9) * batch_size)


def stratify(labels, n_classes, validation_fraction, test_fraction, rng):
    parts = {"train": [], "validation": [], "test": []}
    for label in range(n_classes):
        members = shuffle([i for i, l in enumerate(labels) if l == label], rng)
        n_test = js_round(len(members) * test_fraction)
        n_val = js_round(len(members) * validation_fraction)
        if len(members) - n_test - n_val < 1:
            sys.exit(f"keras_recipe: class {label} has {len(members)} images: too few for the split")
        parts["test"] += members[:n_test]
        parts["validation"] += members[n_test:n_test + n_val]
        parts["train"] += members[n_test + n_val:]
    return parts


def plan_sets(args, root, layout, sets, class_names):
    """{'train'|'validation'|'test': [(file, label)]} or, for --split tutorial, None for test."""
    if layout == "flat":
        if args.split == "tutorial":
            sys.exit("keras_recipe: --split tutorial needs train/ and validation/ folders; single-folder data is split stratified")
        files, labels = list_set(root, layout, "all", class_names, args.limit)
        parts = stratify(labels, len(class_names), args.validation_fraction, args.test_fraction, create_rng(args.seed, 4))
        rule = "stratified"
        chosen = {name: [(files[i], labels[i]) for i in idx] for name, idx in parts.items()}
    else:
        if "validation" not in sets:
            sys.exit(f"keras_recipe: {root} has train/ but no validation/ folder")
        listed = {s: list_set(root, layout, s, class_names, args.limit) for s in sets}
        pairs = {s: list(zip(*listed[s])) for s in sets}
        if "test" in sets:
            rule = "keep"
            chosen = {s: pairs[s] for s in SUBSET_NAMES}
        elif args.split == "tutorial":
            rule = "tutorial"
            chosen = {"train": pairs["train"], "validation": pairs["validation"], "test": None}
        else:
            rule = "recipe"
            order = shuffle(list(range(len(pairs["validation"]))), create_rng(args.seed, 2))
            n_test = recipe_test_count(len(order), args.batch_size, args.test_batch_fraction)
            if n_test == 0 or n_test >= len(order):
                sys.exit(f"keras_recipe: {len(order)} validation images cannot be cut into validation and test (test would get {n_test})")
            chosen = {
                "train": pairs["train"],
                "validation": [pairs["validation"][i] for i in order[n_test:]],
                "test": [pairs["validation"][i] for i in order[:n_test]],
            }
    return rule, chosen


def link_set(folder, pairs, class_names):
    """A folder of class folders of symlinks, so that image_dataset_from_directory reads exactly `pairs`."""
    for cls in class_names:
        os.makedirs(os.path.join(folder, cls), exist_ok=True)
    for n, (file, label) in enumerate(pairs):
        # A numbered prefix keeps names unique (sub-folders of a class are flattened).
        os.symlink(os.path.abspath(file), os.path.join(folder, class_names[label], f"{n:06d}_{os.path.basename(file)}"))


def counts(pairs, class_names):
    out = {c: 0 for c in class_names}
    for _, label in pairs:
        out[class_names[label]] += 1
    return out


# --- Measurements ------------------------------------------------------------------------------

def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def n_params(weights):
    return int(sum(math.prod(w.shape) for w in weights))


def main(argv):
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    result = {
        "side": "keras",
        "args": vars(args),
        "machine": {
            "cpu_count": os.cpu_count(),
            "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "cpu_model": cpu_model(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "times_s": {},
    }
    times = result["times_s"]
    tmp = tempfile.mkdtemp(prefix="keras-recipe-")
    try:
        run(args, result, times, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    times["total"] = round(time.perf_counter() - T_START, 3)
    if args.dry_run:
        print(json.dumps(result["data"], indent=2))
        return
    result["peak_rss_mb"] = round(peak_rss_mb(), 1)
    summary(result)
    if args.out:
        write_json(args.out, result)


def write_json(path, result):
    """The measurements as indented JSON at `path` (its folder made if need be)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(result, f, indent=2)
        f.write("\n")
    log(f"wrote {path}")


def run(args, result, times, tmp):
    # Data first (no TensorFlow needed), so that a bad folder fails fast.
    t = time.perf_counter()
    source = os.path.abspath(args.data)
    if os.path.isfile(source) and zipfile.is_zipfile(source):
        log(f"extracting {source}")
        extracted = os.path.join(tmp, "zip")
        with zipfile.ZipFile(source) as z:
            z.extractall(extracted)
        source = extracted
    if not os.path.isdir(source):
        sys.exit(f"keras_recipe: --data {args.data} is neither a directory nor a zip file")
    root, layout, sets = detect_layout(source)
    class_names = class_names_of(root, layout, sets)
    rule, chosen = plan_sets(args, root, layout, sets, class_names)
    set_dirs = {}
    for name, pairs in chosen.items():
        if pairs is None:
            continue
        set_dirs[name] = os.path.join(tmp, "sets", name)
        link_set(set_dirs[name], pairs, class_names)
    result["data"] = {
        "source": os.path.abspath(args.data),
        "layout": layout,
        "split_rule": rule,
        "seed": args.seed,
        "limit_per_class": args.limit or None,
        "class_names": class_names,
        "counts": {name: counts(p, class_names) for name, p in chosen.items() if p is not None},
    }
    log(f"data: {layout} layout in {root}; classes {class_names}; split {rule}")
    for name, c in result["data"]["counts"].items():
        log(f"  {name}: {sum(c.values())} images {c}")

    if args.dry_run:
        return

    t_import = time.perf_counter()
    import warnings
    # fit() warns that shuffle=True is ignored for a tf.data.Dataset: the datasets shuffle themselves.
    warnings.filterwarnings("ignore", message=".*`shuffle=True` was passed.*")
    import numpy as np
    import tensorflow as tf
    import keras
    times["import"] = round(time.perf_counter() - t_import, 3)
    result["versions"] = {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__}
    log(f"TensorFlow {tf.__version__}, Keras {keras.__version__}; {os.cpu_count()} CPUs")
    keras.utils.set_random_seed(args.seed)

    size = (args.image_size, args.image_size)

    def dataset(name, seed_offset):
        # The tutorial's loader; symlink folders carry the chosen images. Shuffled, as the tutorial.
        return keras.utils.image_dataset_from_directory(
            set_dirs[name], shuffle=True, batch_size=args.batch_size, image_size=size,
            seed=args.seed + seed_offset, verbose=False,
        )

    train_ds = dataset("train", 0)
    validation_ds = dataset("validation", 1)
    if rule == "tutorial":
        val_batches = int(tf.data.experimental.cardinality(validation_ds))
        if val_batches // 5 == 0:
            sys.exit(f"keras_recipe: {val_batches} validation batches: val_batches // 5 = 0, the tutorial's test set would be empty")
        test_ds = validation_ds.take(val_batches // 5)
        validation_ds = validation_ds.skip(val_batches // 5)
        n_test = min(val_batches // 5 * args.batch_size, sum(result["data"]["counts"]["validation"].values()))
        result["data"]["tutorial_cut"] = {"validation_batches": val_batches, "test_batches": val_batches // 5,
                                         "note": "test and validation are drawn from the same reshuffling pool, as in the tutorial"}
        log(f"  tutorial cut: {val_batches} validation batches, the first {val_batches // 5} (~{n_test} images) become test")
    else:
        test_ds = dataset("test", 2)
    autotune = tf.data.AUTOTUNE
    train_ds = train_ds.prefetch(buffer_size=autotune)
    validation_ds = validation_ds.prefetch(buffer_size=autotune)
    test_ds = test_ds.prefetch(buffer_size=autotune)
    times["data"] = round(time.perf_counter() - t - times["import"], 3)

    # --- Model ------------------------------------------------------------------------------
    t = time.perf_counter()
    data_augmentation = keras.Sequential([
        keras.layers.RandomFlip("horizontal"),
        keras.layers.RandomRotation(0.2),
    ], name="data_augmentation")
    preprocess_input = keras.applications.mobilenet_v2.preprocess_input
    img_shape = size + (3,)
    if args.weights == "imagenet":
        base_model = keras.applications.MobileNetV2(input_shape=img_shape, include_top=False, weights="imagenet")
        weights_info = {"source": "imagenet"}
    else:
        base_model = keras.applications.MobileNetV2(input_shape=img_shape, include_top=False, weights=None)
        weights_info = load_base_weights(base_model, args.weights)
    result["weights"] = weights_info
    base_layers = len(base_model.layers)
    base_params = base_model.count_params()
    log(f"base: MobileNetV2, {base_layers} layers, {base_params:,} parameters, output {tuple(base_model.output.shape)}; weights {weights_info}")

    bn_layers = [l for l in base_model.layers if isinstance(l, keras.layers.BatchNormalization)]
    if not args.no_bn_fix:
        force_inference_batch_norm(keras, bn_layers)
        log(f"BatchNormalization forced into inference mode in all {len(bn_layers)} BN layers of the base (DESIGN.md section 6)")
    else:
        log("WARNING: --no-bn-fix: Keras 3 fit() will run the unfrozen BN layers with batch statistics")

    base_model.trainable = False
    global_average_layer = keras.layers.GlobalAveragePooling2D()
    prediction_layer = keras.layers.Dense(1)
    inputs = keras.Input(shape=img_shape)
    x = data_augmentation(inputs)
    x = preprocess_input(x)
    x = base_model(x, training=False)
    x = global_average_layer(x)
    x = keras.layers.Dropout(args.dropout)(x)
    outputs = prediction_layer(x)
    model = keras.Model(inputs, outputs)

    model.compile(optimizer=keras.optimizers.Adam(learning_rate=args.learning_rate),
                  loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.BinaryAccuracy(threshold=0, name="accuracy")])
    p1_trainable = n_params(model.trainable_weights)
    result["params"] = {
        "base_layers": base_layers,
        "base_total": base_params,
        "phase1_trainable": p1_trainable,
    }
    log(f"phase 1 model: {model.count_params():,} parameters, {p1_trainable:,} trainable (the head)")
    times["build"] = round(time.perf_counter() - t, 3)

    if args.initial_evaluate:
        t = time.perf_counter()
        loss0, accuracy0 = model.evaluate(validation_ds, verbose=args.verbose)
        times["initial_evaluate"] = round(time.perf_counter() - t, 3)
        result["initial"] = {"val_loss": float(loss0), "val_accuracy": float(accuracy0)}
        log(f"initial (untrained head): val loss {loss0:.4f}, val accuracy {accuracy0:.4f}")

    # --- Phase 1 ----------------------------------------------------------------------------
    log(f"phase 1: {args.initial_epochs} epochs, Adam({args.learning_rate:g})")
    timer = EpochTimer(keras)
    t = time.perf_counter()
    history = model.fit(train_ds, epochs=args.initial_epochs, validation_data=validation_ds,
                        callbacks=[timer], verbose=args.verbose)
    times["phase1"] = round(time.perf_counter() - t, 3)
    result["phase1"] = phase_record(history, timer, args.initial_epochs, 0)
    log(f"phase 1: {times['phase1']:.1f} s; val accuracy {result['phase1']['val_accuracy']:.4f}")

    # --- Phase 2 ----------------------------------------------------------------------------
    t = time.perf_counter()
    base_model.trainable = True
    for layer in base_model.layers[:args.fine_tune_at]:
        layer.trainable = False
    trainable_layers = sum(1 for l in base_model.layers if l.trainable)
    base_trainable = n_params(base_model.trainable_weights)
    model.compile(loss=keras.losses.BinaryCrossentropy(from_logits=True),
                  optimizer=keras.optimizers.RMSprop(learning_rate=args.fine_tune_lr),
                  metrics=[keras.metrics.BinaryAccuracy(threshold=0, name="accuracy")])
    p2_trainable = n_params(model.trainable_weights)
    result["params"].update({
        "fine_tune_at": args.fine_tune_at,
        "phase2_base_trainable_layers": trainable_layers,
        "phase2_base_trainable": base_trainable,
        "phase2_trainable": p2_trainable,
    })
    log(f"phase 2 model: fine_tune_at {args.fine_tune_at}: {trainable_layers} trainable layers in the base, "
        f"{base_trainable:,} trainable parameters in the base + {p2_trainable - base_trainable:,} in the head = {p2_trainable:,}")
    check_counts(result["params"], args)
    if not args.no_bn_fix:
        # (Without the fix this check would itself move the moving statistics: skipped then.)
        result["bn_inference_check"] = bn_check(tf, base_model, args)
        log(f"BN check: base(x, training=True) vs base(x, training=False) differ by at most {result['bn_inference_check']['max_abs_diff']:.3g}")

    total_epochs = args.initial_epochs + args.fine_tune_epochs
    initial_epoch = history.epoch[-1]
    log(f"phase 2: fit(epochs={total_epochs}, initial_epoch={initial_epoch}): {total_epochs - initial_epoch} epochs, RMSprop({args.fine_tune_lr:g})")
    timer = EpochTimer(keras)
    t2 = time.perf_counter()
    history_fine = model.fit(train_ds, epochs=total_epochs, initial_epoch=initial_epoch,
                             validation_data=validation_ds, callbacks=[timer], verbose=args.verbose)
    times["phase2_fit"] = round(time.perf_counter() - t2, 3)
    times["phase2"] = round(time.perf_counter() - t, 3)
    result["phase2"] = phase_record(history_fine, timer, total_epochs, initial_epoch)
    log(f"phase 2: {times['phase2']:.1f} s; val accuracy {result['phase2']['val_accuracy']:.4f}")

    # --- Evaluate ---------------------------------------------------------------------------
    t = time.perf_counter()
    loss, accuracy = model.evaluate(test_ds, verbose=args.verbose)
    times["evaluate"] = round(time.perf_counter() - t, 3)
    result["test"] = {"loss": float(loss), "accuracy": float(accuracy)}
    if rule != "tutorial":
        result["test"]["images"] = sum(result["data"]["counts"]["test"].values())
    log(f"test: loss {loss:.4f}, accuracy {accuracy:.4f} ({times['evaluate']:.1f} s)")
    times["recipe"] = round(times["phase1"] + times["phase2"] + times["evaluate"] + times.get("initial_evaluate", 0), 3)


def load_base_weights(base_model, path):
    """The official keras-applications .h5 layout; every layer is then checked against the file by name."""
    if not os.path.isfile(path):
        sys.exit(f"keras_recipe: weights file {path} not found")
    method = "load_weights"
    try:
        base_model.load_weights(path)
        bad, checked = compare_weights(base_model, path)
    except Exception as error:  # noqa: BLE001 - fall back to loading by layer name
        bad, checked = f"load_weights failed: {error}", 0
    if bad:
        log(f"loading by layer order did not give the file's weights ({bad}); loading by layer name")
        method = "load_weights(by_name=True)"
        base_model.load_weights(path, by_name=True)
        bad, checked = compare_weights(base_model, path)
        if bad:
            sys.exit(f"keras_recipe: {path} does not fit MobileNetV2: {bad}")
    return {"source": os.path.abspath(path), "method": method, "layers_checked": checked}


def compare_weights(base_model, path):
    """(first problem or None, layers checked): each layer's weights equal the file's group of its name."""
    import h5py
    import numpy as np
    checked = 0
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        for layer in base_model.layers:
            values = layer.get_weights()
            if not values:
                continue
            if layer.name not in group:
                return f"no group {layer.name} in the file", checked
            names = [n.decode() if isinstance(n, bytes) else n for n in group[layer.name].attrs["weight_names"]]
            stored = [np.asarray(group[layer.name][n]) for n in names]
            if len(stored) != len(values) or any(s.shape != v.shape or not np.array_equal(s, v) for s, v in zip(stored, values)):
                return f"layer {layer.name} differs from the file", checked
            checked += 1
    return None, checked


def force_inference_batch_norm(keras, bn_layers):
    """Every call of these BN layers normalises with the moving statistics (gamma/beta still train)."""

    class InferenceBatchNormalization(keras.layers.BatchNormalization):
        def call(self, inputs, training=None, mask=None):
            return super().call(inputs, training=False, mask=mask)

    for layer in bn_layers:
        layer.__class__ = InferenceBatchNormalization


def bn_check(tf, base_model, args):
    """With the fix, the base computes the same in training and inference mode (no dropout inside)."""
    x = tf.random.uniform((2, args.image_size, args.image_size, 3), -1.0, 1.0, seed=args.seed)
    a = base_model(x, training=True)
    b = base_model(x, training=False)
    diff = float(tf.reduce_max(tf.abs(a - b)))
    if diff > 1e-5:
        sys.exit(f"keras_recipe: BatchNormalization is not in inference mode during training (the base differs by {diff:g})")
    return {"max_abs_diff": diff}


def check_counts(params, args):
    problems = []
    if params["base_layers"] != RECIPE_BASE_LAYERS:
        problems.append(f"base has {params['base_layers']} layers, the recipe's {RECIPE_BASE_LAYERS}")
    if params["base_total"] != RECIPE_BASE_PARAMS:
        problems.append(f"base has {params['base_total']:,} parameters, the recipe's {RECIPE_BASE_PARAMS:,}")
    if params["phase1_trainable"] != RECIPE_HEAD_PARAMS:
        problems.append(f"phase 1 trains {params['phase1_trainable']:,} parameters, the recipe's head {RECIPE_HEAD_PARAMS:,}")
    if args.fine_tune_at == RECIPE_FINE_TUNE_AT and params["phase2_base_trainable"] != RECIPE_FINE_TUNE_BASE_PARAMS:
        problems.append(f"phase 2 trains {params['phase2_base_trainable']:,} base parameters, the recipe's {RECIPE_FINE_TUNE_BASE_PARAMS:,}")
    params["matches_recipe"] = not problems
    for p in problems:
        log(f"WARNING: {p}")


def EpochTimer(keras):
    class Timer(keras.callbacks.Callback):
        def __init__(self):
            super().__init__()
            self.epochs = {}
            self._t = self._v = None

        def on_epoch_begin(self, epoch, logs=None):
            self._t = time.perf_counter()
            self.epochs[epoch] = {}

        def on_test_begin(self, logs=None):
            self._v = time.perf_counter()

        def on_test_end(self, logs=None):
            if self._t is not None and self._v is not None:
                self._val = time.perf_counter() - self._v

        def on_epoch_end(self, epoch, logs=None):
            e = self.epochs.setdefault(epoch, {})
            e["wall_s"] = round(time.perf_counter() - self._t, 3)
            val = getattr(self, "_val", None)
            if val is not None:
                e["validation_s"] = round(val, 3)
                e["train_s"] = round(e["wall_s"] - val, 3)
                self._val = None

    return Timer()


def phase_record(history, timer, epochs, initial_epoch):
    rows = []
    for i, epoch in enumerate(history.epoch):
        row = {"epoch": epoch}
        for key, values in history.history.items():
            row[key] = float(values[i])
        row.update(timer.epochs.get(epoch, {}))
        rows.append(row)
    return {
        "fit": {"epochs": epochs, "initial_epoch": initial_epoch, "epochs_run": len(history.epoch)},
        "history": rows,
        "val_accuracy": rows[-1].get("val_accuracy") if rows else None,
        "val_loss": rows[-1].get("val_loss") if rows else None,
    }


def summary(result):
    t = result["times_s"]
    p = result.get("params", {})
    print()
    print("Keras recipe: summary")
    print(f"  machine      {result['machine']['cpu_count']} CPUs, {result['machine']['cpu_model']}")
    if "versions" in result:
        print(f"  versions     TensorFlow {result['versions']['tensorflow']}, Keras {result['versions']['keras']}")
    if p:
        print(f"  parameters   base {p['base_total']:,} ({p['base_layers']} layers); phase 1 trainable {p['phase1_trainable']:,}; "
              f"phase 2 trainable {p.get('phase2_trainable', 0):,} (base {p.get('phase2_base_trainable', 0):,}, "
              f"{p.get('phase2_base_trainable_layers')} layers){'' if p.get('matches_recipe') else '  [differs from the recipe]'}")
    for phase in ("phase1", "phase2"):
        if phase in result:
            r = result[phase]
            print(f"  {phase}       {t.get(phase, 0):8.1f} s, {r['fit']['epochs_run']} epochs, val accuracy {r['val_accuracy']:.4f}")
    if "test" in result:
        print(f"  test         loss {result['test']['loss']:.4f}, accuracy {result['test']['accuracy']:.4f} ({t.get('evaluate', 0):.1f} s)")
    print(f"  total        {t.get('total', 0):8.1f} s wall (recipe {t.get('recipe', 0):.1f} s: phases + evaluation; import {t.get('import', 0):.1f} s)")
    print(f"  peak RSS     {result.get('peak_rss_mb', 0):.0f} MB")


if __name__ == "__main__":
    main(sys.argv[1:])
