"""A user-written domain layer (`tests/user_domain_layer.py`) through every surgery function,
the parameter report and every export layout, on its `DomainLayer` interface alone."""

import keras
import numpy as np
import pytest

from keras_mdn import DomainHead, ResidualAdapter
from keras_mdn.report import parameter_report
from keras_mdn.surgery import (
    add_domains,
    batch_norms_only,
    compress_adapters,
    fold_domain,
    frozen_features,
    train_only_domains,
    transfer_weights,
)
from tests.helpers import rng, to_numpy
from tests.surgery.toy import assert_same_outputs, infer
from tests.user_domain_layer import DomainScale

T = 3


def _model(num_domains=T, classes=(3, 4, 2)):
    image = keras.Input((6, 6, 3), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    conv = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="conv")
    x = ResidualAdapter(conv, num_domains, name="conv")(image, domain)
    x = DomainScale(num_domains, name="film")(x, domain)  # folds into the conv
    x = keras.layers.ReLU()(x)
    x = DomainScale(num_domains, name="film2")(x, domain)  # stays a batch norm
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = DomainHead(list(classes)[:num_domains], name="head")(x, domain)
    model = keras.Model([image, domain], logits, name="user")
    r = rng(3)
    for weight in model.weights:
        weight.assign((r.normal(size=weight.shape) * 0.3 + (
            1.0 if weight.path.endswith("scale") else 0.0)).astype("float32"))
    return model


def _x(n=2):
    return rng(0).normal(size=(n, 6, 6, 3)).astype("float32")


def test_report_and_freezing():
    model = _model()
    report = parameter_report(model)
    film = next(row for row in report.layers if row["layer"] == "film")
    assert film["shared"] == 0 and film["per_domain"] == [8, 8, 8]
    train_only_domains(model, [1], layers=[DomainScale])
    assert {w.path for w in model.trainable_weights} == {
        "film/scale", "film/offset", "film2/scale", "film2/offset"}
    mask = model.get_layer("film").scale.constraint.trainable_mask
    assert mask[1].all() and not mask[[0, 2]].any()


def test_add_domains_and_fold():
    model = _model()
    x = _x()
    grown = add_domains(model, num_classes=[3], init_from=0)
    assert grown.get_layer("film").num_domains == T + 1
    for d in range(T):
        assert_same_outputs(infer(grown, x, d), infer(model, x, d))
    assert_same_outputs(infer(grown, x, T), infer(model, x, 0)[:, :4])
    for d in range(T):
        folded = fold_domain(model, d)
        types = [type(layer).__name__ for layer in folded.layers]
        assert "DomainScale" not in types and types.count("BatchNormalization") == 1
        expected = infer(model, x, d)[:, : [3, 4, 2][d]]
        np.testing.assert_allclose(to_numpy(folded(x)), expected, atol=1e-5)


def test_compression_transfer_and_baselines():
    model = _model()
    x = _x()
    compressed, rows = compress_adapters(model, rank=3)
    assert isinstance(compressed.get_layer("film"), DomainScale) and rows[0]["rank"] == 3
    np.testing.assert_allclose(infer(compressed, x, 1), infer(model, x, 1), atol=1e-5)
    single = _model(num_domains=1, classes=(4,))
    target = _model()
    assert "film" in transfer_weights(single, target)
    np.testing.assert_array_equal(to_numpy(target.get_layer("film").scale),
                                  np.repeat(to_numpy(single.get_layer("film").scale), T, 0))
    for build in (frozen_features, batch_norms_only):
        baseline = build(single, [4, 4], source_domain=0)
        np.testing.assert_allclose(infer(baseline, x, 0), infer(single, x, 0), atol=1e-5)


@pytest.fixture
def exportable():
    pytest.importorskip("tensorflow")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("export needs the TensorFlow backend")
    return _model()


def test_saved_model_folded_and_multi_signature_exports(exportable, tmp_path):
    from keras_mdn.export import (
        export_folded_tflite,
        export_multi_signature_tflite,
        export_saved_model,
        load,
    )

    model, x = exportable, _x()
    export_saved_model(model, str(tmp_path / "saved"), [0, 2])
    paths = export_folded_tflite(model, str(tmp_path / "folded"), [0, 2])
    assert set(paths) == {0, 2}
    export_multi_signature_tflite(model, str(tmp_path / "multi.tflite"), [0, 2])
    runner = load(str(tmp_path / "multi.tflite"), layout="multi_signature")
    for d in (0, 2):
        logits = np.asarray(runner.predict(x, domain=d))
        n = [3, 4, 2][d]
        np.testing.assert_allclose(logits[:, :n], infer(model, x, d)[:, :n], atol=1e-4)


def test_swappable_export(exportable, tmp_path):
    from keras_mdn.export import export_all, load

    model, x = exportable, _x()
    export_all(model, str(tmp_path / "export"), layouts=("swappable",))
    app = load(str(tmp_path / "export"), layout="swappable")
    for d in range(T):
        n = [3, 4, 2][d]
        logits = np.asarray(app.predict(x, domain=d))
        np.testing.assert_allclose(logits[:, :n], infer(model, x, d)[:, :n], atol=1e-4)
