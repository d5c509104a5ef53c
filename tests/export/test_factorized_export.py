"""Factorised layers export per task: reconstructed kernels (constants) or kept factorised."""

import numpy as np
import pytest

from tests.export.conftest import T, expected_logits
from tests.helpers import tensorflow_only
from tests.surgery.test_fold import factorized_model

pytestmark = tensorflow_only


@pytest.fixture(scope="module")
def factorized_export(tmp_path_factory):
    from keras_mdn.export import export_all

    model = factorized_model()
    directory = str(tmp_path_factory.mktemp("factorized"))
    export_all(model, directory, layouts=("folded", "multi_signature"))
    return model, directory


@pytest.mark.parametrize("layout", ["folded", "multi_signature"])
def test_factorized_model_parity_per_task(factorized_export, layout):
    from keras_mdn.export import load

    model, directory = factorized_export
    runner = load(directory, layout=layout)
    x = np.random.default_rng(3).normal(size=(2, 6, 6, 3)).astype("float32")
    for domain in range(T):
        expected = expected_logits(model, x, domain)
        assert np.max(np.abs(runner.predict(x, domain) - expected)) <= 1e-5


def test_folded_factorized_has_plain_ops(factorized_export):
    import os

    from keras_mdn.export import op_counts

    _, directory = factorized_export
    with open(os.path.join(directory, "folded", "domain_1.tflite"), "rb") as f:
        ops = op_counts(f.read())
    assert ops["CONV_2D"] == 1 and ops["FULLY_CONNECTED"] == 2


def test_swappable_rejects_factorized_layers_clearly():
    from keras_mdn.export import SwappablePlan

    with pytest.raises(ValueError, match="factorised layer 'fconv'.*folded or multi-signature"):
        SwappablePlan(factorized_model())
