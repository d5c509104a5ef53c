"""Keras' layer checks (tests/layer_checks.py) run against every public layer of keras_mdn."""

import keras
import numpy as np
import pytest

import keras_mdn.layers
from keras_mdn.layers import (
    DomainBatchNormalization,
    DomainHead,
    FactorizedConv1D,
    FactorizedConv2D,
    FactorizedDense,
    ResidualAdapter,
)
from tests.layer_checks import CHECKS, LayerCase, run_check

DOMAINS = np.array([0, 1, 2, 0], dtype="int32")

CASES = {
    "batch_norm": LayerCase(
        lambda **kw: DomainBatchNormalization(3, **kw), (4, 3, 3, 2), {"domain": DOMAINS},
        trainable_weights=2, non_trainable_weights=2,
    ),
    "batch_norm_one_domain": LayerCase(
        lambda **kw: DomainBatchNormalization(3, **kw), (4, 5), {"domain": 1},
        trainable_weights=2, non_trainable_weights=2,
    ),
    "adapter_parallel_conv2d": LayerCase(
        lambda **kw: ResidualAdapter(
            keras.layers.Conv2D(4, 3, strides=2, padding="same", activation="relu"), 3, **kw
        ),
        (4, 5, 5, 2), {"domain": DOMAINS}, trainable_weights=3,
    ),
    "adapter_series_conv1d": LayerCase(
        lambda **kw: ResidualAdapter(
            keras.layers.Conv1D(4, 3, padding="same", use_bias=False), 3, mode="series", **kw
        ),
        (4, 6, 2), {"domain": DOMAINS}, trainable_weights=4, non_trainable_weights=2,
    ),
    "adapter_low_rank_dense": LayerCase(
        lambda **kw: ResidualAdapter(keras.layers.Dense(5), 3, rank=2, **kw),
        (4, 6), {"domain": DOMAINS}, trainable_weights=4,
    ),
    "adapter_einsum_dense": LayerCase(
        lambda **kw: ResidualAdapter(
            keras.layers.EinsumDense("abc,cd->abd", (3, 5), bias_axes="d"), 3, **kw
        ),
        (4, 3, 6), {"domain": 2}, trainable_weights=3,
    ),
    "head": LayerCase(
        lambda **kw: DomainHead([4, 2, 3], **kw), (4, 6), {"domain": DOMAINS},
        trainable_weights=2,
    ),
    "factorized_dense_tucker": LayerCase(
        lambda **kw: FactorizedDense(5, 3, factorization="tucker", rank=2, **kw),
        (4, 6), {"domain": DOMAINS}, trainable_weights=5,
    ),
    "factorized_dense_laf": LayerCase(
        lambda **kw: FactorizedDense(5, 3, factorization="laf", rank=2, **kw),
        (4, 6), {"task": 1}, trainable_weights=3,  # the `task` alias
    ),
    "factorized_conv2d_tucker": LayerCase(
        lambda **kw: FactorizedConv2D(4, 3, 3, factorization="tucker", rank=2,
                                      padding="same", **kw),
        (4, 5, 5, 2), {"domain": DOMAINS}, trainable_weights=7,
    ),
    "factorized_conv1d_tt": LayerCase(
        lambda **kw: FactorizedConv1D(4, 3, 3, factorization="tt", rank=2, **kw),
        (4, 6, 2), {"domain": DOMAINS}, trainable_weights=5,
    ),
}

def _params():
    for case in CASES:
        for check in CHECKS:
            yield pytest.param(case, check, id=f"{case}-{check}")


@pytest.mark.parametrize(("case", "check"), list(_params()))
def test_layer_check(case, check, tmp_path):
    run_check(CASES[case], check, tmp_path)


def test_every_public_layer_is_checked():
    public = {
        getattr(keras_mdn.layers, name) for name in keras_mdn.layers.__all__
        if isinstance(getattr(keras_mdn.layers, name), type)
        and issubclass(getattr(keras_mdn.layers, name), keras.layers.Layer)
    }
    checked = {type(case.make()) for case in CASES.values()}
    assert public <= checked, sorted(cls.__name__ for cls in public - checked)
