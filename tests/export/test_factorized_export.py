"""Factorised layers export per task: reconstructed kernels (constants) or kept factorised,
swapped at run time (each task's kernel in the pack) or refolded on a switch."""

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
    export_all(model, directory,
               layouts=("folded", "multi_signature", "swappable", "fold_on_switch"))
    return model, directory


@pytest.mark.parametrize("layout", ["folded", "multi_signature", "swappable", "fold_on_switch"])
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


def test_swappable_factorized_pack_holds_each_tasks_kernel(factorized_export):
    from keras_mdn.export import SwappablePlan

    model, _ = factorized_export
    plan = SwappablePlan(model)
    layer = model.get_layer("fconv")
    tensors = plan.domain_tensors(1)
    # The batch norm that only the conv feeds is merged into the kernel, not swapped alone.
    assert "bn__scale" not in tensors
    scale, _ = model.get_layer("bn").affine(1)
    np.testing.assert_allclose(tensors["fconv__kernel"],
                               np.asarray(layer.task_kernel(1)) * np.asarray(scale), atol=1e-5)
