#!/usr/bin/env bash
# Creates bench/.venv with TensorFlow (CPU) and Keras 3 for the Keras side of the benchmark
# (bench/keras_recipe.py): tensorflow-cpu 2.21.0 and keras 3.15.1. Idempotent: when the venv
# already has the pinned versions, it only says so.
#
#   bench/setup-keras.sh            create or complete bench/.venv
#   bench/setup-keras.sh --force    delete bench/.venv and create it again
#
# The tensorflow-cpu wheel is taken from pipe's download cache (~/.cache/pipe/wheels, filled by
# `npm run setup`) when it is there, so the 274 MB wheel is not downloaded twice; its
# dependencies (keras, numpy, h5py, ...) come from PyPI.
#
# Environment:
#   PIPE_CACHE_DIR   pipe's download cache (default: ${XDG_CACHE_HOME:-~/.cache}/pipe)
#   BENCH_PYTHON     the python3 that creates the venv (default: python3 on PATH; 3.10-3.13;
#                    the cached wheel is for 3.11, other versions download their own)
set -euo pipefail

TF_VERSION=2.21.0
# Keras as measured in DESIGN.md (its BatchNormalization behaviour is what keras_recipe.py works around).
KERAS_VERSION=3.15.1

FORCE=0
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    -h | --help) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 0 ;;
    *) echo "setup-keras: unknown option '$arg' (try --help)" >&2; exit 2 ;;
  esac
done

BENCH="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
VENV="$BENCH/.venv"
PYTHON="${BENCH_PYTHON:-python3}"
CACHE_DIR="${PIPE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pipe}"
WHEELS="$CACHE_DIR/wheels"
export PIP_DISABLE_PIP_VERSION_CHECK=1
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
[ -t 1 ] || export PIP_PROGRESS_BAR=off

say() { printf 'setup-keras: %s\n' "$*"; }
die() { printf 'setup-keras: error: %s\n' "$*" >&2; exit 1; }

# What the venv has, as "tensorflow <v> keras <v>", or nothing when it is not usable.
installed() {
  [ -x "$VENV/bin/python" ] || return 0
  "$VENV/bin/python" - <<'PY' 2>/dev/null || true
from importlib.metadata import version
print("tensorflow-cpu", version("tensorflow-cpu"), "keras", version("keras"), "h5py", version("h5py"))
PY
}

if [ "$FORCE" = 1 ] && [ -d "$VENV" ]; then
  say "--force: removing $VENV"
  rm -rf "$VENV"
fi

have="$(installed)"
if [[ "$have" == "tensorflow-cpu $TF_VERSION keras $KERAS_VERSION "* ]]; then
  say "already set up: $VENV ($have)"
  exit 0
fi

command -v "$PYTHON" >/dev/null || die "$PYTHON not found; set BENCH_PYTHON to a python3 (3.10-3.13)"
pyver="$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
case "$pyver" in
  3.10 | 3.11 | 3.12 | 3.13) ;;
  *) die "$PYTHON is Python $pyver; tensorflow-cpu $TF_VERSION needs 3.10-3.13 (set BENCH_PYTHON)" ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV (Python $pyver)"
  "$PYTHON" -m venv "$VENV" || die "could not create the venv (is the python3-venv package installed?)"
else
  say "completing $VENV"
fi

find_links=()
if compgen -G "$WHEELS/tensorflow_cpu-$TF_VERSION-*.whl" >/dev/null; then
  say "using the cached wheel(s) in $WHEELS"
  find_links=(--find-links "$WHEELS")
else
  say "no cached tensorflow-cpu wheel in $WHEELS: downloading it from PyPI (about 275 MB)"
fi

say "installing tensorflow-cpu==$TF_VERSION keras==$KERAS_VERSION (and their dependencies: numpy, h5py, ...)"
"$VENV/bin/python" -m pip install --quiet "${find_links[@]}" "tensorflow-cpu==$TF_VERSION" "keras==$KERAS_VERSION" ||
  die "pip install failed (see above); nothing else was changed, re-run when fixed"

have="$(installed)"
[[ "$have" == "tensorflow-cpu $TF_VERSION keras $KERAS_VERSION "* ]] || die "the venv does not import as expected after install (got: '${have:-nothing}')"
say "checking that TensorFlow imports"
"$VENV/bin/python" -c 'import tensorflow as tf, keras; print("setup-keras: TensorFlow", tf.__version__, "Keras", keras.__version__)' 2>&1 | grep -v '^WARNING' || true
say "done: $VENV ($have)"
say "run: $VENV/bin/python $BENCH/keras_recipe.py --help"
