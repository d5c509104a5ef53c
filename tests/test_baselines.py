import keras
import numpy as np
import pytest

import keras_mdn
from keras_mdn.baselines import fine_tune_each_domain
from keras_mdn.datasets import MultiDomainData

NUM_CLASSES = [3, 2]


def _data():
    rng = np.random.default_rng(0)
    splits = {}
    for split, count in (("train", 24), ("test", 12)):
        pairs = []
        for classes in NUM_CLASSES:
            images = rng.normal(size=(count, 4, 4, 1)).astype("float32")
            labels = (images[:, 0, 0, 0] > 0).astype("int32") % classes
            pairs.append((images, labels))
        splits[split] = pairs
    return MultiDomainData.from_arrays(["a", "b"], NUM_CLASSES, splits)


def _model():
    image = keras.Input((4, 4, 1), name="image")
    domain = keras_mdn.domain_input()
    x = keras.layers.Dense(6)(keras.layers.Flatten()(image))  # shared
    x = keras_mdn.DomainBatchNormalization(num_domains=2)(x, domain)
    logits = keras_mdn.DomainHead(num_classes=NUM_CLASSES)(keras.layers.ReLU()(x), domain)
    model = keras.Model([image, domain], logits)
    return model


def _compile(model):
    model.compile(keras.optimizers.SGD(0.1, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


class _Capture(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.weights = []

    def on_train_end(self, logs=None):
        self.weights.append(self.model.get_weights())


def _assert_same(actual, expected):
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected):
        np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-6)


def test_each_domain_trains_as_an_independent_network_from_the_same_start():
    keras.utils.set_random_seed(0)
    data, model = _data(), _compile(_model())
    initial = model.get_weights()
    capture = _Capture()
    accuracies = fine_tune_each_domain(model, data, epochs=2, batch_size=8,
                                       callbacks=[capture], verbose=0)
    assert list(accuracies) == ["a", "b"]
    for d in range(2):
        # The reference: a separate copy of the start with a fresh optimizer, domain d only.
        reference = _compile(_model())
        reference.set_weights(initial)
        train = data.dataset("train", domains=[d], batch_size=8, repeat=True)
        reference.fit(train, epochs=2, verbose=0,
                      steps_per_epoch=data.steps_per_epoch("train", 8, domains=[d]))
        _assert_same(capture.weights[d], reference.get_weights())
        expected = keras_mdn.domain_accuracies(reference, data, domains=[d])
        assert accuracies[data.names[d]] == expected[data.names[d]]
    # The second domain moved away from the start (training happened) ...
    assert any(not np.allclose(w, i) for w, i in zip(capture.weights[1], initial))


def test_leaves_the_model_and_its_optimizer_as_given():
    keras.utils.set_random_seed(0)
    data, model = _data(), _compile(_model())
    model.optimizer.build(model.trainable_variables)
    weights = model.get_weights()
    state = [keras.ops.convert_to_numpy(v) for v in model.optimizer.variables]
    fine_tune_each_domain(model, data, epochs=1, batch_size=8, domains=["b"], verbose=0)
    _assert_same(model.get_weights(), weights)
    _assert_same([keras.ops.convert_to_numpy(v) for v in model.optimizer.variables], state)


def test_bad_arguments_raise_naming_them():
    data = _data()
    with pytest.raises(ValueError, match="`model` must be compiled"):
        fine_tune_each_domain(_model(), data, epochs=1)
    with pytest.raises(ValueError, match="epochs=0"):
        fine_tune_each_domain(_compile(_model()), data, epochs=0)
