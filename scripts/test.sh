#!/usr/bin/env bash
# Installs keras_mdn with its development extras into .venv and runs the tests,
# on the TensorFlow backend (everything), then the layers, ops, mixed precision and
# quantization tests on the JAX backend and on the torch backend (CPU build) where installable.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check -e ".[dev]"
export TF_CPP_MIN_LOG_LEVEL=2
BACKEND_TESTS=(tests/layers tests/ops tests/test_mixed_precision.py tests/test_quantization.py)
# Two pytest workers (pytest-xdist; a module's tests stay on one worker, in order): much of
# the suite is tracing and subprocess waits, which overlap well even on 2 cores.
PARALLEL=(-n 2 --dist loadscope)
KERAS_BACKEND=tensorflow python -m pytest -q "${PARALLEL[@]}"
KERAS_BACKEND=jax python -m pytest -q "${PARALLEL[@]}" -m "not tensorflow_only" "${BACKEND_TESTS[@]}"
# torch: a CPU wheel (here from pip's local wheel directory); skipped where none installs.
if python -c "import torch" 2>/dev/null \
    || pip install -q --disable-pip-version-check "torch==2.13.0+cpu" 2>/dev/null; then
  KERAS_BACKEND=torch python -m pytest -q -m "not tensorflow_only" "${BACKEND_TESTS[@]}"
else
  echo "torch backend tests skipped: no CPU build of torch installs here" \
    "(pip install 'torch==2.13.0+cpu' or any torch>=2.1 CPU wheel, then rerun)."
fi
