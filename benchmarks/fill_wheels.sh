#!/usr/bin/env bash
# Fill wheels/ on a dev machine with internet, for benchmarks/gpu_suite.sh on a GPU machine without it: diffusers at
# the version installed here, with its dependencies (on the GPU machine pip takes from the folder only what is missing
# there), plus any package names given, e.g. `bash benchmarks/fill_wheels.sh opencv-python-headless scikit-image` when
# the GPU machine lacks them too. Wheels only, for this Python; for another, say PYTHON_VERSION=3.12.
#
#   bash benchmarks/fill_wheels.sh [PACKAGE...]      # into $FLOWSR_WHEELS, default wheels/ (git-ignored)
set -eu
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python || command -v python3)}
WHEELS=${FLOWSR_WHEELS:-wheels}
diffusers=$("$PY" -c 'from importlib.metadata import version; print(version("diffusers"))')
target=()
if [ -n "${PYTHON_VERSION:-}" ]; then target=(--python-version "$PYTHON_VERSION"); fi
"$PY" -m pip download --only-binary=:all: "${target[@]}" --dest "$WHEELS" "diffusers==$diffusers" "$@"
echo "fill_wheels: $(ls "$WHEELS" | wc -l) wheels, $(du -sh "$WHEELS" | cut -f1) in $WHEELS"
