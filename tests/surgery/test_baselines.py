import numpy as np
import pytest

from keras_mdn import DomainBatchNormalization, DomainHead
from keras_mdn.models import resnet26
from keras_mdn.report import parameter_report
from keras_mdn.surgery import batch_norms_only, frozen_features
from tests.helpers import rng, to_numpy
from tests.surgery.toy import infer, randomize_batch_norms, toy_cnn

KW = dict(input_shape=(8, 8, 3), width_factor=0.125)
CLASSES = [4, 4, 3]


def _pretrained():
    model = resnet26([4], **KW)
    randomize_batch_norms(model)
    return model


def _trainable_layers(model):
    return {w.path.split("/")[0] for w in model.trainable_weights}


@pytest.mark.parametrize("build", [frozen_features, batch_norms_only])
def test_the_source_domain_starts_as_the_pretrained_network(build):
    pretrained = _pretrained()
    x = rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
    expected = infer(pretrained, x, 0)
    weights = [to_numpy(w) for w in pretrained.weights]
    baseline = build(pretrained, CLASSES, source_domain=0)
    assert [t.name for t in baseline.inputs] == ["image", "domain"]
    np.testing.assert_allclose(infer(baseline, x, 0)[:, :4], expected, atol=1e-5)
    assert isinstance(baseline.get_layer("head"), DomainHead)
    assert baseline.get_layer("head").num_classes == CLASSES
    assert not {id(w) for w in baseline.weights} & {id(w) for w in pretrained.weights}
    for weight, value in zip(pretrained.weights, weights):
        np.testing.assert_array_equal(to_numpy(weight), value)


def test_frozen_features_train_only_the_heads():
    baseline = frozen_features(_pretrained(), CLASSES)
    assert _trainable_layers(baseline) == {"head"}
    assert baseline.get_layer("stem_bn").num_domains == 1  # one shared, frozen batch norm
    report = parameter_report(baseline)  # the one-domain batch norms count as shared
    features = baseline.get_layer("head").kernel.shape[0]
    assert [d["parameters"] for d in report.domains] == [(features + 1) * n for n in CLASSES]
    assert report.trainable == sum(d["parameters"] for d in report.domains)


def test_batch_norms_only_train_per_domain_batch_norms_and_heads():
    pretrained = _pretrained()
    baseline = batch_norms_only(pretrained, CLASSES)
    bn = baseline.get_layer("stem_bn")
    assert isinstance(bn, DomainBatchNormalization) and bn.num_domains == 3
    source = to_numpy(pretrained.get_layer("stem_bn").moving_variance)
    np.testing.assert_array_equal(to_numpy(bn.moving_variance), np.repeat(source, 3, axis=0))
    trainable = _trainable_layers(baseline)
    assert "head" in trainable and "stem_bn" in trainable
    assert not any("conv" in name for name in trainable)


def test_plain_keras_networks():
    base = toy_cnn()
    x = rng(1).normal(size=(2, 8, 8, 3)).astype("float32")
    expected = to_numpy(base(x, training=False))
    frozen = frozen_features(base, [3, 2], source_domain=0)
    np.testing.assert_allclose(infer(frozen, x, 0), expected, atol=1e-5)
    assert _trainable_layers(frozen) == {"predictions"}
    norms = batch_norms_only(base, [3, 2])
    assert isinstance(norms.get_layer("bn1"), DomainBatchNormalization)
    assert _trainable_layers(norms) == {"bn1", "bn2", "predictions"}


def test_bad_arguments():
    pretrained = _pretrained()
    with pytest.raises(ValueError, match="source_domain=3"):
        frozen_features(pretrained, CLASSES, source_domain=3)
    with pytest.raises(ValueError, match="num_classes"):
        batch_norms_only(pretrained, [])
    with pytest.raises(ValueError, match="single-domain"):
        frozen_features(resnet26([2, 2], **KW), CLASSES)
