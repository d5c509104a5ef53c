#!/usr/bin/env bash
# Installs keras_mdn with its development extras into .venv and runs the tests,
# on the TensorFlow backend (everything) and on the JAX backend (the layers).
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check -e ".[dev]"
export TF_CPP_MIN_LOG_LEVEL=2
KERAS_BACKEND=tensorflow python -m pytest -q
KERAS_BACKEND=jax python -m pytest -q -m "not tensorflow_only" tests/layers tests/ops
