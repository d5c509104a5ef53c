import os
import struct

import numpy as np
import pytest

from tests.export.conftest import NUM_CLASSES, expected_logits
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


def test_pack_of_another_domain_under_this_domains_name_is_rejected(exported, tmp_path, images):
    import shutil

    from keras_mdn.export import PackError, load

    directory, _ = exported
    copy = str(tmp_path / "export")
    shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("saved_model"))
    shutil.copy(os.path.join(copy, "swappable", "domain_2.mdnpack"),
                os.path.join(copy, "swappable", "domain_1.mdnpack"))
    runner = load(copy, layout="swappable")
    runner.predict(images, 0)
    with pytest.raises(PackError, match="domain_1.mdnpack holds domain 2 .*domain=1"):
        runner.predict(images, 1)
    with pytest.raises(PackError, match="holds domain 2"):
        runner.load_pack(os.path.join(copy, "swappable", "domain_1.mdnpack"), domain=1)
    # The failed switch left domain 0 in place.
    assert runner.pack.domain == 0


@pytest.mark.parametrize("layout", ["swappable", "multi_signature", "folded"])
@pytest.mark.parametrize("domain, error, message", [
    (True, TypeError, "must be an int. Received: domain=True"),
    (1.0, TypeError, "must be an int. Received: domain=1.0"),
    ("1", TypeError, "must be an int"),
    (-1, ValueError, "no domain -1"),
    (3, ValueError, "no domain 3"),
])
def test_bad_domain_is_rejected(exported, images, layout, domain, error, message):
    from keras_mdn.export import load

    directory, _ = exported
    runner = load(directory, layout=layout)
    with pytest.raises(error, match=message):
        runner.predict(images, domain)
    assert runner.predict(images, np.int64(1)).shape == (len(images), NUM_CLASSES[1])


@pytest.mark.parametrize("layout", ["swappable", "multi_signature", "folded"])
def test_image_shape_is_checked(exported, images, layout):
    from keras_mdn.export import load

    directory, _ = exported
    runner = load(directory, layout=layout)
    with pytest.raises(ValueError, match=r"one image: add a batch axis .*images.shape=\(9, 9, 3\)"):
        runner.predict(images[0], 0)
    wrong_size = r"shape \(batch, 9, 9, 3\).*images.shape=\(2, 16, 16, 3\)"
    with pytest.raises(ValueError, match=wrong_size):
        runner.predict(np.zeros((2, 16, 16, 3), "float32"), 0)
    with pytest.raises(ValueError, match=r"images.shape=\(2, 9, 9, 1\)"):
        runner.predict(np.zeros((2, 9, 9, 1), "float32"), 0)


def test_bad_manifest_names_the_file(exported, tmp_path):
    import shutil

    from keras_mdn.export import load

    directory, _ = exported
    copy = tmp_path / "export"
    shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("saved_model"))
    manifest = copy / "manifest.json"
    text = manifest.read_text()
    manifest.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=r"manifest.json is not valid JSON"):
        load(str(copy))
    manifest.write_text('{"format": 2}')
    with pytest.raises(ValueError, match=r"json is not a keras_mdn manifest: key 'layouts'"):
        load(str(copy))
    manifest.write_text(text.replace('"packs"', '"pack_files"'))
    with pytest.raises(ValueError, match=r"json: layout 'fold_on_switch' \(None\) has no "
                       "'packs'"):
        load(str(copy))  # the default layout
    with pytest.raises(ValueError, match=r"json: layout 'swappable' \(None\) has no 'packs'"):
        load(str(copy), layout="swappable")


@pytest.mark.parametrize("layout, relative", [("swappable", "swappable/swappable.tflite"),
                                              ("multi_signature", "multi_signature.tflite"),
                                              ("folded", "folded/domain_0.tflite")])
def test_truncated_tflite_names_the_file(exported, tmp_path, images, layout, relative):
    import shutil

    from keras_mdn.export import load

    directory, _ = exported
    copy = tmp_path / "export"
    shutil.copytree(directory, copy, ignore=shutil.ignore_patterns("saved_model"))
    path = copy / relative
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ValueError, match=f"{relative} is not a valid TFLite model"):
        load(str(copy), layout=layout).predict(images, 0)


def test_pack_with_nan_is_rejected(exported):
    from keras_mdn.export import Pack, PackError, load

    directory, _ = exported
    runner = load(directory, layout="swappable")
    tensors = {name: np.zeros(shape, "float32") for name, shape in runner.input_specs.items()}
    tensors[next(iter(tensors))][...] = np.nan
    with pytest.raises(PackError, match="NaN"):
        runner.load_pack(Pack(runner.model_id, 0, "bad", tensors))
