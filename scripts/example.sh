#!/usr/bin/env bash
# Installs keras_mdn with all extras into .venv and runs the main example: a ResNet-26 with
# parallel residual adapters on the embedded digits domains; writes saved_models/.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
. .venv/bin/activate
pip install -q --disable-pip-version-check -e ".[all]"
export TF_CPP_MIN_LOG_LEVEL=2
python examples/train_digits.py "$@"
