"""Export fixtures: each tiny model is exported once per test session (conversions take seconds)."""

import numpy as np
import pytest

from tests.helpers import backend
from tests.surgery.test_fold import NUM_CLASSES, small_model

T = len(NUM_CLASSES)


def _skip_unless_tensorflow():
    if backend() != "tensorflow":
        pytest.skip(f"export needs the TensorFlow backend, running on {backend()}")


@pytest.fixture(scope="session")
def model():
    _skip_unless_tensorflow()
    return small_model()


@pytest.fixture(scope="session")
def images():
    return np.random.default_rng(7).normal(size=(4, 9, 9, 3)).astype("float32")


@pytest.fixture(scope="session")
def representative_data():
    r = np.random.default_rng(8)
    return {d: r.normal(size=(8, 9, 9, 3)).astype("float32") for d in range(T)}


@pytest.fixture(scope="session")
def exported(model, tmp_path_factory):
    """`export_all` of the small model, float32 only: (directory, manifest)."""
    from keras_mdn.export import export_all

    directory = tmp_path_factory.mktemp("export_all")
    manifest = export_all(model, str(directory), domain_names=["digits", "letters", "signs"])
    return str(directory), manifest


def expected_logits(model, images, domain):
    """The Keras model's logits of the domain's classes."""
    logits = model({"image": images, "domain": np.full((len(images),), domain, "int32")})
    return np.asarray(logits)[:, : NUM_CLASSES[domain]]
