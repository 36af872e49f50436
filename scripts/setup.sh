#!/usr/bin/env bash
# Installs everything pipe needs, in one command: `npm run setup` (or `bash scripts/setup.sh`).
#
#   npm run setup              npm packages, native TensorFlow for @tensorflow/tfjs-node, MLflow
#   npm run setup -- --gpu     the same, plus @tensorflow/tfjs-node-gpu and the CUDA 12 libraries
#
# Idempotent: each step checks a stamp or the installed state and is skipped when already done, so
# a second run takes seconds and changes nothing. See docs/setup.md.
#
# Environment:
#   PIPE_CACHE_DIR   download cache (TensorFlow and CUDA wheels, installed CUDA libraries);
#                    default ${XDG_CACHE_HOME:-~/.cache}/pipe. Pre-seed it to set up offline.
#   PIPE_PYTHON      the python3 used for pip and the venv (default: python3 on PATH).
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: npm run setup [-- --gpu]      (or: bash scripts/setup.sh [--gpu])

Installs pipe's dependencies: npm packages (npm ci), native TensorFlow 2.21 for
@tensorflow/tfjs-node (from the tensorflow-cpu wheel, binding built from source), and
MLflow in .venv. Safe to re-run: finished steps are skipped.

Options:
  --gpu        also install @tensorflow/tfjs-node-gpu built against the tensorflow==2.21.0
               (CUDA 12) wheel, with the nvidia-*-cu12 runtime libraries. Without a GPU it
               runs on the CPU.
  -h, --help   this help

Environment:
  PIPE_CACHE_DIR  download cache (default: ~/.cache/pipe); pre-seed wheels/ to work offline
  PIPE_PYTHON     python3 to use (default: python3 on PATH; needs >= 3.10 with venv and pip)
EOF
}

GPU=0
# `npm run setup --gpu` (without the `--`) reaches us as npm config, not as an argument.
[ "${npm_config_gpu:-}" != true ] || GPU=1
for arg in "$@"; do
  case "$arg" in
    --gpu) GPU=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "setup: unknown option '$arg'" >&2; usage >&2; exit 2 ;;
  esac
done

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# --- Pins ----------------------------------------------------------------------------------------
TFJS_VERSION=4.22.0
TF_VERSION=2.21.0
# The cp311 wheels whatever the local python: only their shared libraries and headers are used.
WHEEL_TAGS=(--python-version 3.11 --implementation cp --abi cp311 --platform manylinux_2_27_x86_64)
CPU_WHEEL=tensorflow_cpu-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl
CPU_WHEEL_SHA256=2b847d217b02ee7731ed91431daf3250daa0196c3c94614d23be27232e6e5b6c
GPU_WHEEL=tensorflow-2.21.0-cp311-cp311-manylinux_2_27_x86_64.whl
GPU_WHEEL_SHA256=9056fbc9ba04235810b71ae6cbd958a196e8804fb53bbcffbf3e23b56155f124
CUDA_REQUIREMENTS="$ROOT/scripts/setup-cuda.txt"
MLFLOW_REQUIREMENTS="$ROOT/scripts/setup-mlflow.txt"
# Debian bookworm's Redis and the libraries it needs beyond a base system.
REDIS_DEB_VERSION=7.0
REDIS_DEBS=(redis-server redis-tools libjemalloc2 liblzf1)
MLFLOW_VERSION="$(sed -n 's/^mlflow==\([^ ]*\).*/\1/p' "$MLFLOW_REQUIREMENTS")"

CACHE_DIR="${PIPE_CACHE_DIR:-${XDG_CACHE_HOME:-$HOME/.cache}/pipe}"
PYTHON="${PIPE_PYTHON:-python3}"
VENV="$ROOT/.venv"
HELPER="$ROOT/scripts/setup-tf.py"
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
export PIP_DISABLE_PIP_VERSION_CHECK=1
[ -t 1 ] || export PIP_PROGRESS_BAR=off

# --- Output --------------------------------------------------------------------------------------
START=$SECONDS
STEP_NO=0
STEPS=$((GPU ? 7 : 6))
step() {
  STEP_NO=$((STEP_NO + 1))
  STEP_START=$SECONDS
  printf '\n==> [%d/%d] %s\n' "$STEP_NO" "$STEPS" "$*"
}
say() { printf '    %s\n' "$*"; }
skip() { say "ok: $* (nothing to do)"; }
finished() { say "done in $((SECONDS - STEP_START)) s"; }
die() {
  printf '\nsetup failed: %s\n' "$1" >&2
  shift
  local line
  for line in "$@"; do printf '  %s\n' "$line" >&2; done
  exit 1
}
# Runs a noisy command with its output in a log; shows the log's end when it fails.
logged() {
  local log="$1"
  shift
  mkdir -p "$(dirname "$log")"
  if ! "$@" >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    die "'$*' failed" "full log: $log"
  fi
}
version_ge() { # version_ge 11.2.0 11  -> true when $1 >= $2 (numeric, dot-separated)
  [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n 1)" = "$2" ]
}
sha256_of() { cat "$@" 2>/dev/null | sha256sum | cut -c 1-64; }

# One setup at a time per work tree (the lock lives in the cache: npm ci deletes node_modules).
mkdir -p "$CACHE_DIR"
if command -v flock >/dev/null; then
  exec 9>"$CACHE_DIR/setup-$(printf '%s' "$ROOT" | sha256sum | cut -c 1-12).lock"
  if ! flock -n 9; then
    echo "setup: another setup is running in $ROOT; waiting for it..."
    flock 9
  fi
fi

# --- 1. Prerequisites ----------------------------------------------------------------------------
step "Prerequisites"
[ "$(uname -s)-$(uname -m)" = "Linux-x86_64" ] ||
  die "the native TensorFlow set-up supports Linux x86_64 only (this is $(uname -sm))" \
    "the TensorFlow wheels it builds tfjs-node against exist for manylinux x86_64"

APT_MISSING=()
PROBLEMS=()
NODEDIR=""
NODE_VERSION=""
NPM_VERSION=""
PY_VERSION=""
PY_EXE=""
check_prerequisites() {
  APT_MISSING=()
  PROBLEMS=()
  if ! command -v node >/dev/null; then
    PROBLEMS+=("Node.js is missing: install Node.js 20 or newer (NodeSource's nodejs package, nvm, or the official binaries), then re-run.")
  else
    NODE_VERSION="$(node -p process.versions.node)"
    version_ge "$NODE_VERSION" 20 ||
      PROBLEMS+=("Node.js $NODE_VERSION is too old: pipe needs Node.js >= 20. Install a newer Node.js (e.g. NodeSource's nodejs 20 or 22 package, or nvm install 20), then re-run.")
    NODEDIR="${npm_config_nodedir:-$(dirname "$(dirname "$(readlink -f "$(command -v node)")")")}"
    [ -f "$NODEDIR/include/node/node_api.h" ] ||
      PROBLEMS+=("Node.js headers not found in $NODEDIR/include/node (node-gyp needs them and cannot download them offline): use a Node.js that ships its headers (NodeSource, nvm, official tarballs) or set npm_config_nodedir to a directory holding include/node/node_api.h.")
  fi
  if ! command -v npm >/dev/null; then
    PROBLEMS+=("npm is missing: it comes with Node.js; then run: npm install -g npm@11")
  else
    NPM_VERSION="$(npm --version)"
    version_ge "$NPM_VERSION" 11 ||
      PROBLEMS+=("npm $NPM_VERSION is too old: npm >= 11 is needed because it honours \"allowScripts\" in package.json (tfjs-node's own install script would download libtensorflow and fail). Fix: npm install -g npm@11")
  fi
  # One python run (a pyenv shim costs a second per call): version, venv + ensurepip, pip, path.
  local py_facts=""
  if command -v "$PYTHON" >/dev/null; then
    py_facts="$("$PYTHON" -c 'import importlib.util as u, sys
print("%d.%d.%d" % sys.version_info[:3], int(bool(u.find_spec("venv") and u.find_spec("ensurepip"))), int(bool(u.find_spec("pip"))), sys.executable)' 2>/dev/null || true)"
  fi
  if [ -z "$py_facts" ] && [ -n "${PIPE_PYTHON:-}" ]; then
    PROBLEMS+=("PIPE_PYTHON=$PIPE_PYTHON does not run: point it at a Python >= 3.10, or unset it to use python3 on PATH.")
  elif [ -z "$py_facts" ]; then
    APT_MISSING+=(python3 python3-venv python3-pip)
  else
    local has_venv has_pip
    read -r PY_VERSION has_venv has_pip PY_EXE <<<"$py_facts"
    if ! version_ge "$PY_VERSION" 3.10; then
      PROBLEMS+=("$PYTHON is Python $PY_VERSION: pipe needs Python >= 3.10 (for MLflow). Install a newer python3, or point PIPE_PYTHON at one (e.g. PIPE_PYTHON=python3.11 npm run setup).")
    else
      [ "$has_venv" = 1 ] || APT_MISSING+=(python3-venv)
      [ "$has_pip" = 1 ] || APT_MISSING+=(python3-pip)
    fi
  fi
  command -v g++ >/dev/null || APT_MISSING+=(g++)
  command -v make >/dev/null || APT_MISSING+=(make)
}
check_prerequisites
if [ ${#APT_MISSING[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing missing Debian packages: ${APT_MISSING[*]}"
    export DEBIAN_FRONTEND=noninteractive
    logged "$CACHE_DIR/logs/apt-get-update.log" apt-get update
    logged "$CACHE_DIR/logs/apt-get-install.log" apt-get install -y --no-install-recommends "${APT_MISSING[@]}"
    check_prerequisites
  fi
  [ ${#APT_MISSING[@]} -eq 0 ] ||
    PROBLEMS+=("missing ${APT_MISSING[*]} (a C++ toolchain, make and python3 with venv and pip are needed). Fix: sudo apt-get update && sudo apt-get install -y ${APT_MISSING[*]}")
fi
[ ${#PROBLEMS[@]} -eq 0 ] || die "prerequisites are missing:" "${PROBLEMS[@]}"
PYTHON="$PY_EXE"
say "Node.js $NODE_VERSION, npm $NPM_VERSION, Python $PY_VERSION ($PY_EXE), $(g++ --version | head -n 1), $(make --version | head -n 1)"
finished

# --- 2. npm packages -----------------------------------------------------------------------------
step "npm packages"
NPM_STAMP="$ROOT/node_modules/.pipe-setup-npm"
if [ -f "$NPM_STAMP" ] && [ "$(cat "$NPM_STAMP")" = "$(sha256_of package.json package-lock.json)" ] &&
  [ -f node_modules/@tensorflow/tfjs-node/package.json ]; then
  skip "node_modules matches package.json and package-lock.json"
else
  if [ ! -f package-lock.json ]; then
    say "npm install (no package-lock.json)"
    npm install --no-audit --no-fund
  elif [ -d node_modules ]; then
    # Incremental: keeps the native TensorFlow already built into node_modules when it still fits.
    say "npm install (node_modules exists; in sync with package-lock.json afterwards)"
    npm install --no-audit --no-fund
  else
    say "npm ci"
    npm ci --no-audit --no-fund
  fi
  sha256_of package.json package-lock.json >"$NPM_STAMP"
  finished
fi

# --- native TensorFlow for one tfjs flavour ------------------------------------------------------
# Downloads a pinned wheel into the cache unless it is there, checked against its PyPI sha256.
ensure_wheel() {
  local file="$1" sha256="$2" spec="$3"
  local path="$CACHE_DIR/wheels/$file"
  if [ -f "$path" ]; then
    say "wheel: $path (cached)"
    return
  fi
  say "downloading $spec ($file) into $CACHE_DIR/wheels"
  local tmp="$CACHE_DIR/wheels/.download-$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  logged "$CACHE_DIR/logs/pip-download-$file.log" \
    "$PYTHON" -m pip download --no-deps --only-binary=:all: "${WHEEL_TAGS[@]}" -d "$tmp" "$spec"
  [ -f "$tmp/$file" ] || die "pip did not download $file (see $CACHE_DIR/logs/pip-download-$file.log)"
  "$PYTHON" "$HELPER" verify "$tmp/$file" "$sha256" || { rm -rf "$tmp"; exit 1; }
  mv "$tmp/$file" "$path"
  rm -rf "$tmp"
  say "sha256 matches PyPI's: $sha256"
}

# The binding file node-pre-gyp builds (lib/napi-v<N>/tfjs_binding.node), if any.
binding_of() { find "$1/lib" -name tfjs_binding.node -print -quit 2>/dev/null || true; }

# deps/ from the wheel (DESIGN.md section 2), then the binding via the package's scripts/install.js.
native_tensorflow() {
  local flavour="$1" package="$2" file="$3" sha256="$4" spec="$5"
  local dir="$ROOT/node_modules/$package"
  local stamp="$dir/deps/pipe-libtensorflow.json"
  local extracted=0
  if [ -f "$stamp" ] && grep -q "\"sha256\": \"$sha256\"" "$stamp" && [ -f "$dir/deps/lib/libtensorflow_cc.so.2" ]; then
    say "libtensorflow $TF_VERSION already in $package/deps"
  else
    ensure_wheel "$file" "$sha256" "$spec"
    say "extracting libtensorflow and headers into $package/deps (checked against the wheel's RECORD)"
    "$PYTHON" "$HELPER" extract "$CACHE_DIR/wheels/$file" "$sha256" "$dir/deps" "$spec" |
      sed 's/^/    /'
    extracted=1
  fi
  local binding
  binding="$(binding_of "$dir")"
  if [ "$extracted" = 0 ] && [ -n "$binding" ] && [ "$binding" -nt "$stamp" ]; then
    say "binding ${binding#"$ROOT"/} already built"
  else
    say "building the $package binding from source (node-gyp, about 30 s)"
    local node_gyp="${npm_config_node_gyp:-}"
    if [ -z "$node_gyp" ]; then
      node_gyp="$(dirname "$(readlink -f "$(command -v npm)")")/../node_modules/node-gyp/bin/node-gyp.js"
      [ -f "$node_gyp" ] || node_gyp=""
    fi
    rm -rf "${dir:?}/build" "$dir/build-tmp-napi-v"*
    (
      cd "$dir"
      export PATH="$ROOT/node_modules/.bin:$PATH"
      export npm_config_nodedir="$NODEDIR" npm_config_build_from_source=true
      [ -z "$node_gyp" ] || export npm_config_node_gyp="$node_gyp"
      logged "$CACHE_DIR/logs/build-$flavour.log" node scripts/install.js "$flavour"
    )
    binding="$(binding_of "$dir")"
    [ -n "$binding" ] || die "the build left no tfjs_binding.node in $dir/lib" "log: $CACHE_DIR/logs/build-$flavour.log"
    say "built ${binding#"$ROOT"/}"
  fi
}

# Loads the flavour in a fresh node process: the backend must be the native 'tensorflow'.
verify_flavour() {
  local package="$1" log_level="${2:-$TF_CPP_MIN_LOG_LEVEL}"
  # shellcheck disable=SC2016 # JavaScript, not shell
  TF_CPP_MIN_LOG_LEVEL="$log_level" node -e '
    const name = process.argv[1];
    const tf = require(name);
    const version = require(`${name}/package.json`).version;
    const a = tf.tensor2d([[1, 2], [3, 4]]);
    const product = Array.from(tf.matMul(a, a).dataSync());
    if (tf.getBackend() !== "tensorflow" || product.join() !== "7,10,15,22") {
      console.error(`${name}: backend ${tf.getBackend()}, matMul gave ${product}`);
      process.exit(1);
    }
    console.log(`${name} ${version}: backend ${tf.getBackend()}, TensorFlow ${tf.backend().binding.TF_Version}, matMul ok`);
  ' "$package" | sed 's/^/    /' || die "$package does not load with its native backend" \
    "re-run the setup; if it persists, delete node_modules/$package/deps and run it again"
}

# --- 3. native TensorFlow (CPU) ------------------------------------------------------------------
step "Native TensorFlow $TF_VERSION for @tensorflow/tfjs-node"
native_tensorflow cpu @tensorflow/tfjs-node "$CPU_WHEEL" "$CPU_WHEEL_SHA256" "tensorflow-cpu==$TF_VERSION"
finished

# --- 4. GPU flavour ------------------------------------------------------------------------------
if [ "$GPU" = 1 ]; then
  step "GPU flavour: @tensorflow/tfjs-node-gpu with TensorFlow $TF_VERSION (CUDA 12)"
  gpu_dir="$ROOT/node_modules/@tensorflow/tfjs-node-gpu"
  if [ -f "$gpu_dir/package.json" ] && grep -q "\"version\": \"$TFJS_VERSION\"" "$gpu_dir/package.json"; then
    say "@tensorflow/tfjs-node-gpu $TFJS_VERSION installed"
  else
    # --no-save: package.json and the lock stay CPU-only, so a plain `npm ci` never needs the GPU
    # wheel. Its install script is skipped through "allowScripts" like tfjs-node's.
    say "npm install --no-save @tensorflow/tfjs-node-gpu@$TFJS_VERSION"
    npm install --no-save --no-audit --no-fund "@tensorflow/tfjs-node-gpu@$TFJS_VERSION"
  fi

  cuda_dir="$CACHE_DIR/cuda/$(sha256_of "$CUDA_REQUIREMENTS" | cut -c 1-12)"
  if [ -f "$cuda_dir/.complete" ]; then
    say "CUDA 12 libraries in $cuda_dir"
  else
    say "CUDA 12 libraries (nvidia-*-cu12 wheels, about 3 GB) into $cuda_dir"
    # Offline first (a pre-seeded cache), then from the index; pip checks the pinned hashes.
    if ! "$PYTHON" -m pip download --no-deps --require-hashes --no-index --find-links "$CACHE_DIR/wheels" \
      -d "$CACHE_DIR/wheels" -r "$CUDA_REQUIREMENTS" >/dev/null 2>&1; then
      logged "$CACHE_DIR/logs/pip-download-cuda.log" "$PYTHON" -m pip download --no-deps --require-hashes \
        --only-binary=:all: -d "$CACHE_DIR/wheels" -r "$CUDA_REQUIREMENTS"
    fi
    rm -rf "$cuda_dir.tmp"
    logged "$CACHE_DIR/logs/pip-install-cuda.log" "$PYTHON" -m pip install --no-deps --require-hashes \
      --no-index --find-links "$CACHE_DIR/wheels" --target "$cuda_dir.tmp" -r "$CUDA_REQUIREMENTS"
    rm -rf "$cuda_dir"
    mv "$cuda_dir.tmp" "$cuda_dir"
    touch "$cuda_dir/.complete"
  fi

  native_tensorflow gpu @tensorflow/tfjs-node-gpu "$GPU_WHEEL" "$GPU_WHEEL_SHA256" "tensorflow==$TF_VERSION"
  "$PYTHON" "$HELPER" link-cuda "$gpu_dir/deps" "$cuda_dir" | sed 's/^/    /'
  finished
fi

# --- 5. MLflow -----------------------------------------------------------------------------------
step "MLflow $MLFLOW_VERSION in .venv"
venv_mlflow() {
  "$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("mlflow"))' 2>/dev/null || true
}
if [ -x "$VENV/bin/python" ] && [ -x "$VENV/bin/mlflow" ] && [ "$(venv_mlflow)" = "$MLFLOW_VERSION" ]; then
  skip "mlflow $MLFLOW_VERSION in $VENV"
else
  if ! "$VENV/bin/python" -c '' 2>/dev/null; then
    say "creating $VENV with Python $PY_VERSION"
    "$PYTHON" -m venv --clear "$VENV" || die "could not create $VENV with $PYTHON" \
      "on Debian/Ubuntu: sudo apt-get install -y python3-venv python3-pip"
  fi
  say "pip install -r scripts/setup-mlflow.txt (mlflow==$MLFLOW_VERSION)"
  logged "$CACHE_DIR/logs/pip-install-mlflow.log" "$VENV/bin/python" -m pip install -r "$MLFLOW_REQUIREMENTS"
  [ "$(venv_mlflow)" = "$MLFLOW_VERSION" ] || die "mlflow $MLFLOW_VERSION did not install into $VENV" \
    "log: $CACHE_DIR/logs/pip-install-mlflow.log"
  finished
fi

# --- 6. Redis ------------------------------------------------------------------------------------
# For `pipe worker` clusters (BullMQ) and their tests: Debian's redis-server package, unpacked into
# .redis/ (no root, no system service); .redis/bin/redis-server runs it with its own libraries.
step "Redis $REDIS_DEB_VERSION (Debian package) in .redis"
REDIS_DIR="$ROOT/.redis"
redis_version() { "$REDIS_DIR/bin/redis-server" --version 2>/dev/null | sed -n 's/.* v=\([^ ]*\).*/\1/p'; }
if [ -x "$REDIS_DIR/bin/redis-server" ] && [ -n "$(redis_version)" ]; then
  skip "redis-server $(redis_version) in $REDIS_DIR"
else
  command -v apt-get >/dev/null || die "apt-get not found: pipe's Redis comes from Debian's redis-server package" \
    "on another system install redis-server >= 6.2 and link it as $REDIS_DIR/bin/redis-server"
  debs="$CACHE_DIR/debs"
  mkdir -p "$debs"
  fetch_debs() { (cd "$debs" && apt-get download "${REDIS_DEBS[@]}" >"$CACHE_DIR/logs/apt-download-redis.log" 2>&1); }
  have_debs() { for p in "${REDIS_DEBS[@]}"; do compgen -G "$debs/${p%%=*}_*.deb" >/dev/null || return 1; done; }
  if ! have_debs; then
    mkdir -p "$CACHE_DIR/logs"
    say "apt-get download ${REDIS_DEBS[*]}"
    if ! fetch_debs; then
      # Package lists may be missing on a fresh machine.
      if [ "$(id -u)" = 0 ]; then
        say "apt-get update"
        apt-get update >"$CACHE_DIR/logs/apt-update.log" 2>&1 || true
      fi
      fetch_debs || die "could not download Debian's redis-server" "log: $CACHE_DIR/logs/apt-download-redis.log"
    fi
  fi
  rm -rf "$REDIS_DIR.tmp"
  mkdir -p "$REDIS_DIR.tmp/bin"
  for p in "${REDIS_DEBS[@]}"; do
    deb="$(ls -t "$debs/${p%%=*}"_*.deb | head -1)"
    dpkg-deb -x "$deb" "$REDIS_DIR.tmp"
  done
  cat >"$REDIS_DIR.tmp/bin/redis-server" <<'WRAP'
#!/bin/sh
# Debian's redis-server, unpacked by scripts/setup.sh, with the libraries that came with it.
dir="$(cd "$(dirname "$0")/.." && pwd)"
libs="$(ls -d "$dir"/usr/lib/*-linux-gnu 2>/dev/null | tr '\n' ':')"
LD_LIBRARY_PATH="$libs${LD_LIBRARY_PATH:-}" exec "$dir/usr/bin/redis-server" "$@"
WRAP
  chmod +x "$REDIS_DIR.tmp/bin/redis-server"
  rm -rf "$REDIS_DIR"
  mv "$REDIS_DIR.tmp" "$REDIS_DIR"
  [ -n "$(redis_version)" ] || die "the unpacked redis-server does not run" "try: $REDIS_DIR/bin/redis-server --version"
  say "redis-server $(redis_version): $REDIS_DIR/bin/redis-server"
  finished
fi

# --- 7. Verify -----------------------------------------------------------------------------------
step "Verify: load TensorFlow.js with its native backend"
verify_flavour @tensorflow/tfjs-node
if [ -f "$ROOT/node_modules/@tensorflow/tfjs-node-gpu/deps/pipe-libtensorflow.json" ]; then
  if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
    verify_flavour @tensorflow/tfjs-node-gpu
    say "GPUs: $(nvidia-smi -L | grep -c '^GPU') visible to nvidia-smi (CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset})"
  else
    # Without a driver TensorFlow logs a harmless "failed call to cuInit" error: keep it quiet here.
    verify_flavour @tensorflow/tfjs-node-gpu 3
    say "GPUs: none visible; the GPU flavour runs on the CPU here"
  fi
fi
say "mlflow $(venv_mlflow): $VENV/bin/mlflow"
finished

printf '\nSetup complete in %d s. Diagnose problems with: node bin/pipe.js doctor\n' "$((SECONDS - START))"
