import keras
import numpy as np
import pytest

from keras_mdn import DomainHead
from tests.helpers import assert_close, rng, save_and_load, skip_unless_tensorflow, to_numpy

CLASSES = [4, 2, 6]


def _head():
    head = DomainHead(CLASSES)
    head.build((None, 5))
    head.bias.assign(rng(3).normal(size=head.bias.shape).astype("float32"))
    return head


def _reference(head, x, d):
    kernel, bias = to_numpy(head.kernel), to_numpy(head.bias)
    start = sum(CLASSES[:d])
    logits = x @ kernel[:, start : start + CLASSES[d]] + bias[start : start + CLASSES[d]]
    return logits


def test_logits_for_every_domain_uniform_and_mixed():
    x = rng(0).normal(size=(5, 5)).astype("float32")
    head = _head()
    domain = np.array([2, 0, 1, 1, 2])
    mixed = to_numpy(head(x, domain=domain))
    assert mixed.shape == (5, 6)
    for d in range(3):
        n = CLASSES[d]
        expected = _reference(head, x, d)
        for form in (d, keras.ops.convert_to_tensor(d), np.full((5,), d)):
            out = to_numpy(head(x, domain=form))
            assert_close(out[:, :n], expected)
            assert np.all(out[:, n:] <= -1e4)
        rows = domain == d
        assert_close(mixed[rows, :n], expected[rows])
        assert np.all(mixed[rows, n:] <= -1e4)


def test_parameter_count_is_that_of_separate_heads():
    head = _head()
    assert head.count_params() == sum(5 * n + n for n in CLASSES)
    kernel, bias = head.domain_weights(2)
    assert tuple(kernel.shape) == (5, 6) and tuple(bias.shape) == (6,)
    assert DomainHead(3, num_domains=4).num_classes == [3, 3, 3, 3]


def test_sparse_crossentropy_trains_on_mixed_batches(tmp_path):
    x = rng(0).normal(size=(8, 5)).astype("float32")
    domain = np.array([0, 1, 2, 0, 1, 2, 0, 1], "int32")
    labels = np.array([3, 1, 5, 0, 0, 2, 1, 1], "int32")
    features = keras.Input((5,), name="features")
    domain_in = keras.Input((), dtype="int32", name="domain")
    model = keras.Model([features, domain_in], DomainHead(CLASSES)(features, domain_in))
    model.compile(
        optimizer=keras.optimizers.Adam(0.05),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy()],
    )
    history = model.fit([x, domain], labels, epochs=30, batch_size=8, verbose=0)
    assert np.isfinite(history.history["loss"]).all()
    assert history.history["loss"][-1] < history.history["loss"][0]
    probs = keras.ops.softmax(model.predict([x, domain], verbose=0))
    # Padded classes get no probability mass.
    assert float(to_numpy(probs)[1, 2:].max()) == 0.0
    loaded = save_and_load(model, tmp_path)
    assert_close(loaded.predict([x, domain], verbose=0), model.predict([x, domain], verbose=0))


def test_bad_input():
    with pytest.raises(ValueError, match="num_domains"):
        DomainHead(3)
    with pytest.raises(ValueError, match="num_classes"):
        DomainHead([3, 0])
    with pytest.raises(ValueError, match="num_domains=3"):
        DomainHead([3, 2], num_domains=3)
    with pytest.raises(ValueError, match="input_shape"):
        DomainHead([3, 2])(np.zeros((2, 3, 4), "float32"), domain=0)
    with pytest.raises(ValueError, match="domain=2"):
        DomainHead([3, 2])(np.zeros((2, 4), "float32"), domain=2)


def test_out_of_domain_labels_are_shown_by_the_loss_and_the_metric():
    from keras_mdn.losses import DomainCrossentropy
    from keras_mdn.metrics import OutOfDomainLabels

    head = DomainHead(num_classes=[3, 2])
    x = np.random.default_rng(0).normal(size=(4, 5)).astype("float32")
    logits = keras.ops.convert_to_numpy(head(x, domain=np.array([0, 1, 1, 0])))
    labels = np.array([2, 2, 1, 3])  # domain 1 has classes 0-1; 3 is past every domain
    loss = DomainCrossentropy(reduction=None)(labels, logits)
    loss = keras.ops.convert_to_numpy(loss)
    assert np.isfinite(loss[[0, 2]]).all() and np.isnan(loss[[1, 3]]).all()
    reference = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)
    np.testing.assert_allclose(
        loss[[0, 2]], keras.ops.convert_to_numpy(reference(labels[[0, 2]], logits[[0, 2]]))
    )
    metric = OutOfDomainLabels()
    metric.update_state(labels, logits)
    metric.update_state(np.array([0, 1, 1, 0]), logits)
    assert float(metric.result()) == 2.0
    assert DomainCrossentropy.from_config(DomainCrossentropy().get_config()).name == (
        "domain_crossentropy"
    )


@pytest.mark.parametrize("jit_compile", [False, True])
def test_length_one_domain_vector_never_broadcasts_in_a_graph_of_unknown_batch(jit_compile):
    # In a TF graph of unknown batch Grappler drops the reshape that would raise: the rows of
    # a length-1 vector used to broadcast to every example.
    skip_unless_tensorflow()
    import tensorflow as tf

    head = _head()
    x = rng(0).normal(size=(4, 5)).astype("float32")
    call = tf.function(
        lambda x, domain: head(x, domain=domain),
        jit_compile=jit_compile,
        input_signature=[tf.TensorSpec((None, 5)), tf.TensorSpec((None,), tf.int32)],
    )
    try:
        logits = to_numpy(call(x, np.array([1], "int32")))
    except tf.errors.InvalidArgumentError:
        return  # raising is the other allowed answer
    assert np.isnan(logits).all()
    np.testing.assert_array_equal(to_numpy(call(x, np.full((4,), 1, "int32"))),
                                  to_numpy(head(x, domain=1)))
