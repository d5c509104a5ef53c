import os
import struct

import keras
import numpy as np
import pytest

from tests.export.conftest import expected_logits
from tests.helpers import tensorflow_only
from tests.surgery.test_fold import small_model

pytestmark = tensorflow_only


def _swappable(exported):
    from keras_mdn.export import load

    directory, _ = exported
    return load(directory, layout="swappable"), directory


def test_swappable_switches_domain_without_reload(exported, model, images):
    runner, _ = _swappable(exported)
    interpreter = runner.interpreter
    for domain in [2, 0, 1, 2]:
        out = runner.predict(images, domain)
        assert runner.interpreter is interpreter
        np.testing.assert_allclose(out, expected_logits(model, images, domain), atol=1e-5)


def test_load_pack_by_path(exported, model, images):
    runner, directory = _swappable(exported)
    runner.load_pack(os.path.join(directory, "swappable", "domain_1.mdnpack"))
    np.testing.assert_allclose(runner.predict(images), expected_logits(model, images, 1),
                               atol=1e-5)


def test_pack_of_another_model_is_rejected(exported, tmp_path):
    from keras_mdn.export import Pack, PackError, SwappablePlan, write_pack

    runner, _ = _swappable(exported)
    other = small_model()
    other.get_layer("conv1").layer.kernel.assign(np.ones((3, 3, 3, 6), "float32"))
    plan = SwappablePlan(other)
    path = str(tmp_path / "other.mdnpack")
    write_pack(path, Pack(plan.model_id, 0, "other", plan.pack_tensors(0)))
    with pytest.raises(PackError, match="belongs to model"):
        runner.load_pack(path)


def test_pack_of_another_format_version_is_rejected(exported, tmp_path):
    from keras_mdn.export import PackError

    runner, directory = _swappable(exported)
    with open(os.path.join(directory, "swappable", "domain_0.mdnpack"), "rb") as f:
        data = bytearray(f.read())
    data[8:10] = struct.pack("<H", 9)
    path = tmp_path / "future.mdnpack"
    path.write_bytes(bytes(data))
    with pytest.raises(PackError, match="format version 9"):
        runner.load_pack(str(path))


@pytest.mark.parametrize("layout", ["swappable", "multi_signature", "folded"])
def test_missing_domain(exported, images, layout):
    from keras_mdn.export import load

    directory, _ = exported
    runner = load(directory, layout=layout)
    with pytest.raises(ValueError, match="domain 7"):
        runner.predict(images, 7)


def test_bad_layout_and_missing_quantization(exported):
    from keras_mdn.export import load

    directory, _ = exported
    with pytest.raises(ValueError, match="layout="):
        load(directory, layout="zip")
    with pytest.raises(ValueError, match="quantization="):
        load(directory, layout="folded", quantization="int8")


def test_unsupported_layer_is_named(tmp_path):
    from keras_mdn.export import SwappablePlan, export_folded_tflite

    class Gate(keras.layers.Layer):
        def call(self, x, domain):
            return x * keras.ops.cast(keras.ops.reshape(domain, (-1, 1, 1, 1)), x.dtype)

    gated = small_model(extra=lambda x, domain: Gate(name="my_gate")(x, domain))
    with pytest.raises(ValueError, match="'my_gate' \\(Gate\\)"):
        SwappablePlan(gated)
    with pytest.raises(ValueError, match="'my_gate' \\(Gate\\)"):
        export_folded_tflite(gated, str(tmp_path))
