"""Small test helpers on the public API (no keras.src)."""

import os
from pathlib import Path

import keras
import numpy as np
import pytest

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"

requires_shared_data = pytest.mark.skipif(
    not SHARED_DATA.is_dir(),
    reason=f"../shared/data not found at {SHARED_DATA} (present in CI and developer checkouts)",
)

tensorflow_only = pytest.mark.tensorflow_only


def backend():
    return keras.backend.backend()


def skip_unless_tensorflow():
    if backend() != "tensorflow":
        pytest.skip(f"needs the TensorFlow backend, running on {backend()}")


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def assert_close(actual, expected, atol=1e-5, rtol=1e-5):
    np.testing.assert_allclose(to_numpy(actual), to_numpy(expected), atol=atol, rtol=rtol)


def save_and_load(model, tmp_path, name="model.keras"):
    """Round trips `model` through a `.keras` file with no custom_objects."""
    path = os.path.join(str(tmp_path), name)
    model.save(path)
    return keras.saving.load_model(path)


def rng(seed=0):
    return np.random.default_rng(seed)
