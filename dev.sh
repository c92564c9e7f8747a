#!/usr/bin/env bash
# One entry point for everything: sets the project up from its own files
# (virtual environment, dependencies, compiler cache, build) and then runs
#   bash dev.sh demo    the main job: eager vs fused MLP on scikit-learn digits
#   bash dev.sh test    the whole test suite
#   bash dev.sh build   set-up and build only
#   bash dev.sh lint    ruff, clang-format, clang-tidy (also part of `test`)
#   bash dev.sh bench   the benchmark suite (extra args passed on)
# Every step is skipped when already done: a second run re-downloads and
# rebuilds nothing that did not change.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
CACHE="${TORCH_RELU_EXT_CACHE:-$HOME/.cache/torch-relu-ext}"
VENV="${TORCH_RELU_EXT_VENV:-$CACHE/venv}"
PY="$VENV/bin/python"

log() { printf '[dev.sh] %s\n' "$*" >&2; }

ensure_ccache() {
  if ! command -v ccache >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
      log "installing ccache (Debian package)"
      apt-get install -y -qq ccache >/dev/null 2>&1 ||
        { apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq ccache >/dev/null 2>&1; } ||
        log "ccache unavailable: building without a compiler cache"
    fi
  fi
}

ensure_venv() {
  if [ ! -x "$PY" ]; then
    log "creating virtual environment $VENV"
    mkdir -p "$CACHE"
    python3 -m venv "$VENV"
  fi
  local stamp="$VENV/.requirements.sha256"
  local want
  want="$(sha256sum requirements-dev.txt | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    log "installing dependencies (requirements-dev.txt)"
    "$PY" -m pip install -q --upgrade pip
    "$PY" -m pip install -q -r requirements-dev.txt
    echo "$want" >"$stamp"
  fi
}

build() {
  ensure_ccache
  ensure_venv
  export PATH="$VENV/bin:$PATH"
  if command -v ccache >/dev/null 2>&1; then
    # Clones in other folders share cache hits: paths under the clone are
    # hashed relative to it.
    export CCACHE_BASEDIR="$ROOT" CCACHE_NOHASHDIR=1
    export CCACHE_DIR="${CCACHE_DIR:-$CACHE/ccache}"
    # Debian's masquerade directory: g++/gcc there are ccache in disguise.
    export PATH="/usr/lib/ccache:$PATH"
    export PYTORCH_NVCC="${PYTORCH_NVCC:-ccache /usr/local/cuda/bin/nvcc}"
  fi
  export MAX_JOBS="${MAX_JOBS:-$(nproc)}"
  log "building torch_relu_ext._C (ninja; unchanged sources are not rebuilt)"
  mkdir -p build
  local rc=0
  "$PY" setup.py -q build_ext --inplace >build/build.log 2>&1 || rc=$?
  grep -v -E '^(running|copying|creating|building)|No CUDA runtime|SetuptoolsWarning|^  return|^\[|^ninja: no work' \
    build/build.log >&2 || true
  if [ "$rc" != 0 ]; then
    log "BUILD FAILED (exit $rc); full log: build/build.log"
    exit "$rc"
  fi
  # Zero compiler warnings (-Wall -Wextra) in the project's own files; ccache
  # replays them, so a fresh clone checks every file.
  if grep -E "(csrc|include)/[^ ]*: warning:" build/build.log; then
    log "compiler warnings in the project's files (above)"
    exit 1
  fi
}

# The package is built in place: the repository root is on the import path.
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# Lint and format checks (run by `test`): ruff for Python, clang-format for
# C++/CUDA, clang-tidy and a torch-free compile of the ATen-free core.
lint() {
  log "lint: ruff, clang-format, clang-tidy"
  "$VENV/bin/ruff" check --quiet . && "$VENV/bin/ruff" format --check --quiet .
  local cxx
  cxx=$(git ls-files --cached --others --exclude-standard 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh' 'include/*.h' 'tests/cpp/*.cpp' 'examples/cpp/*.cpp')
  if command -v clang-format >/dev/null 2>&1; then
    # shellcheck disable=SC2086
    clang-format --dry-run --Werror $cxx
  else
    log "clang-format not found: C++ format check skipped"
  fi
  g++ -std=c++17 -fsyntax-only -Wall -Wextra -Werror -Icsrc tests/cpp/core_headers.cpp
  if command -v clang-tidy >/dev/null 2>&1; then
    clang-tidy --quiet tests/cpp/core_headers.cpp -- -std=c++17 -Icsrc 2>/dev/null
    # The CPU loops of every operator, instantiated for every dtype by their
    # baseline build (c10's 16-bit types are the only PyTorch headers it uses).
    local torch_inc
    torch_inc="$("$PY" -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "include"))')"
    clang-tidy --quiet csrc/cpu/isa_default.cpp -- -std=c++17 -Icsrc -isystem "$torch_inc" 2>/dev/null
  else
    log "clang-tidy not found: skipped"
  fi
}

cmd="${1:-help}"
shift || true
case "$cmd" in
  build) build ;;
  lint)
    ensure_venv
    lint
    ;;
  test)
    build
    lint
    log "running tests"
    exec "$PY" -m pytest -q "$@"
    ;;
  demo)
    build
    exec "$PY" examples/train_digits.py "$@"
    ;;
  bench)
    build
    exec "$PY" -m benchmarks.run "$@"
    ;;
  *)
    sed -n '2,10p' "$0"
    exit 2
    ;;
esac
