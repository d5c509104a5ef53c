import json

import keras
import numpy as np
import pytest

from keras_mdn import DomainBatchNormalization, ResidualAdapter
from keras_mdn.models import resnet26
from keras_mdn.report import parameter_report
from keras_mdn.surgery import train_only_domains

CLASSES = [3, 4, 5]


def _model():
    return resnet26(CLASSES, adapter="parallel", width_factor=0.125, input_shape=(8, 8, 3))


def _expected(model):
    """Counts from the layers' shapes: shared convs, per-domain adapters, BNs and heads."""
    shared, per_domain, statistics = 0, [0] * 3, 0
    for layer in model.layers:
        if isinstance(layer, ResidualAdapter):
            shared += int(np.prod(layer.layer.kernel.shape))
            _, cin, cout = layer.adapter_kernel.shape
            per_domain = [p + cin * cout for p in per_domain]
        elif isinstance(layer, DomainBatchNormalization):
            channels = layer.gamma.shape[1]
            per_domain = [p + 2 * channels for p in per_domain]
            statistics += 2 * channels
    features = model.get_layer("head").kernel.shape[0]
    per_domain = [p + (features + 1) * n for p, n in zip(per_domain, CLASSES)]
    return shared, per_domain, statistics


def test_counts_per_domain_and_cost():
    model = _model()
    report = parameter_report(model)
    shared, per_domain, statistics = _expected(model)
    assert report.num_domains == 3
    assert report.shared == shared
    assert [d["parameters"] for d in report.domains] == per_domain
    assert [d["statistics"] for d in report.domains] == [statistics] * 3
    assert report.total == shared + sum(per_domain)
    assert report.total + 3 * statistics == sum(int(np.prod(w.shape)) for w in model.weights)
    one = shared + np.mean(per_domain)
    assert report.one_network == pytest.approx(one)
    assert report.cost_multiple == pytest.approx((shared + sum(per_domain)) / one)
    assert report.trainable == report.total
    assert report.multiple_of(shared) == pytest.approx(report.total / shared)
    # Per-layer rows add up, and a table weight is split over the domains.
    assert sum(row["shared"] for row in report.layers) == shared
    conv = next(row for row in report.layers if row["layer"] == "stage1_block1_conv1")
    assert conv["shared"] == 9 * 4 * 8 and conv["per_domain"] == [4 * 8] * 3
    head = next(row for row in report.layers if row["layer"] == "head")
    assert head["per_domain"] == [33 * n for n in CLASSES]


def test_frozen_domains_are_not_counted_as_trainable():
    model = _model()
    train_only_domains(model, [1])
    report = parameter_report(model)
    assert report.shared_trainable == 0
    assert report.trainable == report.domains[1]["parameters"]
    assert [d["trainable"] for d in report.domains] == [0, report.domains[1]["parameters"], 0]


def test_table_markdown_and_dict():
    report = parameter_report(_model())
    text = str(report)
    assert "stage3_block4_conv2" in text and "Per domain" in text
    assert f"trainable params: {report.trainable:,} || all params: {report.total:,}" in text
    assert f"{report.cost_multiple:.3f}x one network" in text
    markdown = report.to_markdown()
    assert "| Layer | Type | Shared |" in markdown and "| Domain |" in markdown
    data = json.loads(json.dumps(report.to_dict()))
    assert data["total"] == report.total and len(data["domains"]) == 3
    assert "cost_multiple=" in repr(report)


def test_plain_model_is_one_network():
    inputs = keras.Input((4,))
    x = keras.layers.BatchNormalization()(keras.layers.Dense(3)(inputs))
    report = parameter_report(keras.Model(inputs, x))
    assert report.num_domains == 1
    assert report.shared == 4 * 3 + 3 + 6 and report.statistics == 6
    assert report.cost_multiple == 1.0
