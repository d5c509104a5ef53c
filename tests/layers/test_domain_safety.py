"""Bad domain ids and bad data in compiled models: never another domain's answer (issue 8).

Every test runs on each compile path of the current backend: TensorFlow graph and XLA
(`jit_compile=False` / `True`), JAX jit.
"""

import contextlib

import keras
import numpy as np
import pytest

from keras_mdn import DomainBatchNormalization, DomainHead, ResidualAdapter
from tests.helpers import backend, rng, to_numpy

T = 3
# torch runs eagerly: there bad ids raise (the rule wherever the backend can raise).
PATHS = {"tensorflow": ["graph", "xla"], "jax": ["jit"]}.get(backend(), ["eager"])


def _eager_raises(path, match):
    """On the eager path the call must raise a clear error; elsewhere it must not."""
    if path == "eager":
        return pytest.raises(ValueError, match=match)
    return contextlib.nullcontext()


def _model(mode="parallel", domain_dtype="int32"):
    image = keras.Input((6, 6, 2), name="image")
    domain = keras.Input((), dtype=domain_dtype, name="domain")
    x = ResidualAdapter(keras.layers.Conv2D(4, 3, padding="same"), T, mode=mode)(image, domain)
    x = DomainBatchNormalization(T, momentum=0.5)(x, domain)
    x = keras.layers.GlobalAveragePooling2D()(x)
    logits = DomainHead([3, 2, 4])(x, domain)
    model = keras.Model([image, domain], logits)
    r = rng(3)
    for weight in model.weights:
        if weight.trainable and "adapter" in weight.path:
            weight.assign(r.normal(size=weight.shape).astype("float32") * 0.3)
    return model


def _compiled(model, path, optimizer="sgd"):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=path in ("xla", "jit"),
    )
    return model


def _x(n=4, seed=0):
    return rng(seed).normal(size=(n, 6, 6, 2)).astype("float32")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", ["parallel", "series"])
def test_bad_ids_in_compiled_predict_give_nan_rows_only(path, mode):
    model = _compiled(_model(mode), path)
    x = _x()
    clean = to_numpy(model.predict_on_batch([x, np.array([0, 0, 2, 2], "int32")]))
    with _eager_raises(path, "domain=-1"):
        bad = to_numpy(model.predict_on_batch([x, np.array([0, -1, 3, 2], "int32")]))
    if path == "eager":
        return
    assert np.isnan(bad[1]).all() and np.isnan(bad[2]).all()
    np.testing.assert_array_equal(bad[[0, 3]], clean[[0, 3]])


@pytest.mark.parametrize("path", PATHS)
def test_bad_ids_in_training_give_nan_loss_and_touch_no_domain(path):
    model = _compiled(_model(), path)
    before = {w.path: to_numpy(w) for w in model.weights if "moving" in w.path}
    with _eager_raises(path, "domain="):
        loss = model.train_on_batch([_x(), np.array([5, 5, -2, 7], "int32")],
                                    np.zeros(4, "int32"))
    if path != "eager":
        assert np.isnan(loss)
    for w in model.weights:
        if "moving" in w.path:
            np.testing.assert_array_equal(to_numpy(w), before[w.path])


@pytest.mark.parametrize("path", PATHS)
def test_fractional_ids_on_a_float_domain_input_give_nan(path):
    model = _compiled(_model(domain_dtype="float32"), path)
    with _eager_raises(path, "domain=0.7"):
        out = to_numpy(model.predict_on_batch([_x(3), np.array([0.7, 1.0, 2.9], "float32")]))
    if path == "eager":
        return
    assert np.isnan(out[0]).all() and np.isnan(out[2]).all()
    assert np.isfinite(out[1]).all()
    reference = to_numpy(model.predict_on_batch([_x(3), np.array([1.0, 1.0, 1.0], "float32")]))
    np.testing.assert_array_equal(out[1], reference[1])


def test_eager_calls_raise_for_bad_ids():
    model = _model(domain_dtype="float32")
    with pytest.raises(ValueError, match="domain=0.7"):
        model([_x(2), np.array([0.7, 1.0], "float32")])
    with pytest.raises(ValueError, match="domain=3"):
        model([_x(2), np.array([0, 3], "float32")])
    with pytest.raises(TypeError, match="dtype=bool"):
        DomainHead([2, 2])(np.ones((2, 3), "float32"), domain=np.array([True, False]))


@pytest.mark.parametrize("path", PATHS)
def test_domain_vector_of_another_length_raises(path):
    model = _compiled(_model(), path)
    with pytest.raises(Exception, match="shape"):  # ValueError, or a backend error
        model.predict_on_batch([_x(4), np.array([0, 1, 2], "int32")])
    with pytest.raises(Exception, match="shape"):  # ValueError, or a backend error
        model.predict_on_batch([_x(4), np.array([0], "int32")])
    with pytest.raises(ValueError, match=r"shape=\(3,\)"):
        DomainHead([2, 2, 2])(np.ones((4, 3), "float32"), domain=np.array([0, 1, 2]))


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("mode", ["parallel", "series"])
def test_nan_example_leaves_absent_domains_bit_identical(path, mode):
    model = _compiled(_model(mode), path, optimizer=keras.optimizers.SGD(0.1, momentum=0.9))
    x = _x()
    x[1, 2, 3, 0] = np.nan  # one NaN pixel in a domain-0 example; domain 2 is absent
    domains = np.array([0, 0, 1, 1], "int32")
    per_domain = ("adapter_kernel", "gamma", "beta", "moving_mean", "moving_variance")
    tables = [w for w in model.weights if w.path.split("/")[-1] in per_domain]
    assert len(tables) == (5 if mode == "parallel" else 9)
    before = {w.path: to_numpy(w) for w in tables}
    head = model.layers[-1]
    head_before = to_numpy(head.kernel), to_numpy(head.bias)
    model.train_on_batch([x, domains], np.zeros(4, "int32"))
    for w in tables:
        value = to_numpy(w)
        np.testing.assert_array_equal(value[2], before[w.path][2], err_msg=w.path)
        if "moving" in w.path:
            assert np.isfinite(value[1]).all(), w.path  # the clean present domain moved sanely
    # Head columns: domain 0 is 0-2, domain 1 is 3-4, domain 2 is 5-8.
    np.testing.assert_array_equal(to_numpy(head.kernel)[:, 5:], head_before[0][:, 5:])
    np.testing.assert_array_equal(to_numpy(head.bias)[5:], head_before[1][5:])
    assert np.isfinite(to_numpy(head.kernel)[:, 3:5]).all()


@pytest.mark.parametrize("domain", [1, "scalar", "vector"])
def test_nan_or_empty_batches_move_only_their_own_statistics(domain):
    bn = DomainBatchNormalization(T, momentum=0.5)
    bn.build((None, 4, 4, 2))
    mean0 = rng(1).normal(size=(T, 2)).astype("float32")
    bn.moving_mean.assign(mean0)
    x = _x(4)[..., :2][:, :4, :4]
    x[0, 0, 0, 0] = np.nan
    ids = {1: 1, "scalar": keras.ops.convert_to_tensor(1, "int32"),
           "vector": np.array([1, 1, 1, 1], "int32")}[domain]
    bn(x, domain=ids, training=True)
    moving = to_numpy(bn.moving_mean)
    np.testing.assert_array_equal(moving[[0, 2]], mean0[[0, 2]])
    assert np.isnan(moving[1, 0])
    empty = {1: 0, "scalar": keras.ops.convert_to_tensor(0, "int32"),
             "vector": np.zeros((0,), "int32")}[domain]
    before = to_numpy(bn.moving_variance)
    bn(np.zeros((0, 4, 4, 2), "float32"), domain=empty, training=True)
    np.testing.assert_array_equal(to_numpy(bn.moving_variance), before)


@pytest.mark.parametrize("path", PATHS)
def test_nan_in_a_new_domain_batch_leaves_old_domains_bit_identical(path):
    from keras_mdn.surgery import add_domain, train_only_domains
    from tests.surgery.toy import toy_multi_domain

    grown = add_domain(toy_multi_domain(mode="series"), num_classes=2)
    train_only_domains(grown, 3)
    grown.compile(
        optimizer=keras.optimizers.Adam(1e-2, weight_decay=1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=path in ("xla", "jit"),
    )
    x = rng(0).normal(size=(4, 6, 6, 3)).astype("float32")
    old = [to_numpy(grown.predict_on_batch([x, np.full(4, d, "int32")])) for d in range(3)]
    bad = x.copy()
    bad[0, 1, 1, 1] = np.nan
    grown.train_on_batch([bad, np.full(4, 3, "int32")], np.zeros(4, "int32"))
    for d in range(3):
        after = to_numpy(grown.predict_on_batch([x, np.full(4, d, "int32")]))
        np.testing.assert_array_equal(after, old[d])
