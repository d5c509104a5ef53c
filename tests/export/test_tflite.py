import os

import numpy as np
import pytest

from tests.export.conftest import NUM_CLASSES, T, expected_logits
from tests.helpers import tensorflow_only
from tests.surgery.test_fold import small_model

pytestmark = tensorflow_only

LAYOUTS = ["folded", "multi_signature", "swappable"]


def _read(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_float32_parity_for_every_domain(exported, model, images, layout):
    from keras_mdn.export import load

    directory, _ = exported
    runner = load(directory, layout=layout)
    assert runner.domains == list(range(T))
    for domain in range(T):
        out = runner.predict(images, domain)
        expected = expected_logits(model, images, domain)
        assert out.shape == expected.shape
        assert np.max(np.abs(out - expected)) <= 1e-5, (layout, domain)
    # Batch 1, as on a phone.
    np.testing.assert_allclose(
        runner.predict(images[:1], 1), expected_logits(model, images[:1], 1), atol=1e-5
    )


def test_all_files_use_builtin_ops_only(exported):
    from keras_mdn.export import op_counts

    directory, manifest = exported
    paths = [p for entry in manifest["layouts"].values() for v in entry.values()
             for p in ([v["path"]] if "path" in v else
                       [v["base"]] if "base" in v else
                       [v["template"], v["fold"]] if "template" in v else
                       list(v["paths"].values()))]
    assert len(paths) == T + 4
    for path in paths:
        ops = op_counts(_read(os.path.join(directory, path)))
        assert ops and all(name.isupper() and not name.startswith("FLEX") for name in ops)
        assert "BATCH_MATMUL" in ops if "swappable" in path else True


@pytest.fixture(scope="module")
def base_folded(tmp_path_factory):
    """The same architecture without adapters, folded and converted (domain 0)."""
    from keras_mdn.export import export_folded_tflite

    base = small_model(adapter=None)
    directory = str(tmp_path_factory.mktemp("base"))
    return export_folded_tflite(base, directory, domains=[0])[0]


def test_folded_has_the_base_network_ops_and_size(exported, base_folded):
    from keras_mdn.export import op_counts

    directory, manifest = exported
    folded = os.path.join(directory, manifest["layouts"]["folded"]["None"]["paths"]["0"])
    assert op_counts(_read(folded)) == op_counts(_read(base_folded))
    assert "BATCH_MATMUL" not in op_counts(_read(folded))
    # Same tensors and shapes: sizes differ only by names/metadata bytes.
    size, base_size = os.path.getsize(folded), os.path.getsize(base_folded)
    assert abs(size - base_size) <= 0.02 * base_size


def test_multi_signature_stores_shared_weights_once(exported, model):
    directory, _ = exported
    data = _read(os.path.join(directory, "multi_signature.tflite"))
    for name in ["conv1", "conv2", "conv3"]:
        # TFLite stores a conv filter as OHWI; the shared kernel appears once for T signatures.
        kernel = np.asarray(model.get_layer(name).layer.kernel).transpose(3, 0, 1, 2)
        assert data.count(np.ascontiguousarray(kernel).tobytes()) == 1


QUANTIZED = [("swappable", "int8"), ("multi_signature", "int8"), ("swappable", "float16")]


@pytest.fixture(scope="module")
def quantized(model, representative_data, tmp_path_factory):
    """The quantised files the tests read, each converted once: {(layout, q): runner}."""
    from keras_mdn.export import (
        MultiSignatureModel,
        SwappableModel,
        export_multi_signature_tflite,
        export_swappable_tflite,
    )

    directory = str(tmp_path_factory.mktemp("quantized"))
    runners = {}
    packs_by_domain = None
    for layout, quantization in QUANTIZED:
        if layout == "swappable":
            written = export_swappable_tflite(
                model, directory, quantization=quantization,
                representative_data=representative_data, write_packs=packs_by_domain is None,
            )
            packs_by_domain = packs_by_domain or written["packs"]
            runners[layout, quantization] = SwappableModel(written["base"], packs_by_domain)
        else:
            path = export_multi_signature_tflite(
                model, os.path.join(directory, f"multi.{quantization}.tflite"),
                quantization=quantization, representative_data=representative_data,
            )
            runners[layout, quantization] = MultiSignatureModel(path)
    return runners


@pytest.mark.parametrize("layout, quantization", QUANTIZED)
def test_quantized_parity_within_documented_tolerance(quantized, model, images, layout,
                                                      quantization):
    from keras_mdn.export import TOLERANCES

    runner = quantized[layout, quantization]
    agreement = []
    for domain in range(T):
        expected = expected_logits(model, images, domain)
        out = runner.predict(images, domain)
        spread = np.ptp(expected)
        assert np.max(np.abs(out - expected)) <= TOLERANCES[quantization] * spread
        agreement.append(np.mean(out.argmax(-1) == expected.argmax(-1)))
    print(f"{layout} {quantization}: top-1 agreement {np.mean(agreement):.3f}")


def test_int8_without_representative_data_is_an_error(model, tmp_path):
    from keras_mdn.export import export_multi_signature_tflite

    with pytest.raises(ValueError, match="representative"):
        export_multi_signature_tflite(model, str(tmp_path / "m.tflite"), quantization="int8")


def test_num_classes_in_packs(exported):
    from keras_mdn.export import read_pack

    directory, manifest = exported
    entry = manifest["layouts"]["swappable"]["None"]
    for domain in range(T):
        pack = read_pack(os.path.join(directory, entry["packs"][str(domain)]))
        assert pack.num_classes == NUM_CLASSES[domain]
        assert pack.domain_name == ["digits", "letters", "signs"][domain]
        assert pack.model_id.hex() == entry["model_id"]
