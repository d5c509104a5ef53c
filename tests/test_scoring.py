import math

import numpy as np
import pytest

from keras_mdn.scoring import DECATHLON_BASELINE_ACCURACIES, DecathlonScore, decathlon_score


def _reference(accuracies, baseline):
    """Direct transcription of MISSION §1 in numpy."""
    errors, base_errors = 1.0 - np.asarray(accuracies), 1.0 - np.asarray(baseline)
    max_errors = 2.0 * base_errors
    return 1000.0 / max_errors**2 * np.maximum(0.0, max_errors - errors) ** 2


def test_baseline_scores_250_per_domain_and_2500_in_total():
    result = decathlon_score(dict(DECATHLON_BASELINE_ACCURACIES))
    assert isinstance(result, DecathlonScore)
    assert len(result.per_domain) == 10
    for score in result.per_domain.values():
        assert score == 250.0
    assert result.total == 2500.0


def test_decathlon_baseline_values_match_the_paper():
    percent = [59.87, 60.34, 82.12, 92.82, 55.53, 97.53, 81.41, 87.69, 96.55, 51.20]
    assert list(DECATHLON_BASELINE_ACCURACIES) == [
        "imagenet12", "aircraft", "cifar100", "daimlerpedcls", "dtd",
        "gtsrb", "vgg-flowers", "omniglot", "svhn", "ucf101",
    ]
    np.testing.assert_allclose(list(DECATHLON_BASELINE_ACCURACIES.values()),
                               np.asarray(percent) / 100)


def test_perfect_is_1000_and_twice_the_baseline_error_or_worse_is_0():
    baseline = {"a": 0.8, "b": 0.6, "c": 0.9}
    total, per_domain = decathlon_score({"a": 1.0, "b": 1.0, "c": 1.0}, baseline)
    assert per_domain == {"a": 1000.0, "b": 1000.0, "c": 1000.0}
    assert total == 3000.0
    # errors 0.4 (= 2 x 0.2), 0.9 (> 2 x 0.4), 1.0
    total, per_domain = decathlon_score({"a": 0.6, "b": 0.1, "c": 0.0}, baseline)
    assert per_domain["a"] == pytest.approx(0.0, abs=1e-9)
    assert per_domain["b"] == 0.0 and per_domain["c"] == 0.0
    assert total == pytest.approx(0.0, abs=1e-9)


def test_hand_computed_middle_case():
    # Baseline accuracy 0.8 -> error 0.2, Emax 0.4, a = 1000 / 0.16 = 6250.
    # Accuracy 0.9 -> error 0.1: 6250 * 0.3^2 = 562.5. Accuracy 0.7 -> error 0.3:
    # 6250 * 0.1^2 = 62.5.
    total, per_domain = decathlon_score([0.9, 0.7], [0.8, 0.8])
    assert per_domain[0] == pytest.approx(562.5)
    assert per_domain[1] == pytest.approx(62.5)
    assert total == pytest.approx(625.0)


def test_matches_numpy_reference_on_random_values():
    rng = np.random.default_rng(0)
    accuracies, baseline = rng.uniform(0, 1, 12), rng.uniform(0.05, 0.99, 12)
    total, per_domain = decathlon_score(accuracies, baseline)
    expected = _reference(accuracies, baseline)
    np.testing.assert_allclose([per_domain[i] for i in range(12)], expected, rtol=1e-12)
    assert math.isclose(total, expected.sum(), rel_tol=1e-12)


def test_error_metric_gives_the_same_scores():
    accuracies = {"x": 0.9, "y": 0.55}
    baseline = {"x": 0.85, "y": 0.6}
    by_accuracy = decathlon_score(accuracies, baseline)
    by_error = decathlon_score(
        {k: 1 - v for k, v in accuracies.items()},
        {k: 1 - v for k, v in baseline.items()},
        metric="error",
    )
    assert by_error.per_domain == pytest.approx(by_accuracy.per_domain)
    default_errors = {k: 1 - v for k, v in DECATHLON_BASELINE_ACCURACIES.items()}
    assert decathlon_score(default_errors, metric="error").total == pytest.approx(2500.0)


def test_mapping_order_does_not_matter():
    baseline = {"a": 0.5, "b": 0.7}
    assert decathlon_score({"b": 0.8, "a": 0.6}, baseline).per_domain == pytest.approx(
        decathlon_score({"a": 0.6, "b": 0.8}, baseline).per_domain
    )


@pytest.mark.parametrize(
    "accuracies, baseline, error, match",
    [
        ({"a": 0.5}, {"a": 0.5, "b": 0.5}, ValueError, r"Missing from accuracies: \['b'\]"),
        ({"a": 0.5, "c": 0.2}, {"a": 0.5}, ValueError, r"not in baseline: \['c'\]"),
        ([0.5, 0.6], [0.5], ValueError, "len\\(accuracies\\)=2, len\\(baseline\\)=1"),
        ({"a": 0.5}, [0.5], TypeError, "both be mappings"),
        ({"a": 59.87}, {"a": 0.5}, ValueError, "percentage"),
        ({"a": -0.1}, {"a": 0.5}, ValueError, r"accuracies\['a'\]=-0.1"),
        ({"a": float("nan")}, {"a": 0.5}, ValueError, "in \\[0, 1\\]"),
        ({"a": 0.5}, {"a": 1.5}, ValueError, r"baseline\['a'\]=1.5"),
        ({"a": 0.5}, {"a": 1.0}, ValueError, "zero error"),
        ({"a": "high"}, {"a": 0.5}, TypeError, "must hold numbers"),
        ([], [], ValueError, "empty"),
        ([0.5], None, TypeError, "mapping keyed by"),
        ({"aircraft": 0.5}, None, ValueError, "Missing from accuracies"),
    ],
)
def test_clear_errors(accuracies, baseline, error, match):
    with pytest.raises(error, match=match):
        decathlon_score(accuracies, baseline)


def test_rejects_unknown_metric():
    with pytest.raises(ValueError, match="metric='top5'"):
        decathlon_score([0.5], [0.5], metric="top5")


def _linear_model(num_inputs, num_outputs, seed=0):
    import keras

    image = keras.Input((2, 2, 1), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    x = keras.layers.Flatten()(image)
    one_hot = keras.layers.CategoryEncoding(num_inputs, output_mode="one_hot")(domain)
    dense = keras.layers.Dense(num_outputs, name="dense")
    logits = dense(keras.layers.Concatenate()([x, one_hot]))
    model = keras.Model({"image": image, "domain": domain}, logits)
    rng = np.random.default_rng(seed)
    dense.set_weights([rng.normal(size=(4 + num_inputs, num_outputs)), np.zeros(num_outputs)])
    return model, rng


def test_domain_accuracies_against_numpy():
    from keras_mdn.datasets import MultiDomainData
    from keras_mdn.scoring import domain_accuracies

    model, rng = _linear_model(2, 5)
    kernel, _ = model.get_layer("dense").get_weights()
    splits = {"test": []}
    for n, classes in ((37, 5), (20, 2)):
        images = rng.normal(size=(n, 2, 2, 1)).astype(np.float32)
        splits["test"].append((images, rng.integers(0, classes, n)))
    data = MultiDomainData.from_arrays(["five", "two"], [5, 2], splits)
    result = domain_accuracies(model, data, batch_size=8)
    for d, name in enumerate(data.names):
        images, labels = data.arrays("test", name)
        features = np.concatenate([images.reshape(len(images), 4), np.eye(2)[[d] * len(images)]], 1)
        logits = features @ kernel
        # only the domain's own classes compete
        expected = np.mean(np.argmax(logits[:, : data.num_classes[d]], 1) == labels)
        assert result[name] == pytest.approx(expected)
    assert list(result) == ["five", "two"]
    assert decathlon_score(result, {"five": 0.5, "two": 0.5}).total >= 0.0
    with pytest.raises(ValueError, match="shape"):
        domain_accuracies(_linear_model(2, 3)[0], data)


@pytest.mark.tensorflow_only
def test_domain_accuracies_through_tf_data():
    from keras_mdn.datasets import MultiDomainData
    from keras_mdn.datasets.multi_domain_data import DatasetSource
    from keras_mdn.scoring import domain_accuracies
    from tests.helpers import skip_unless_tensorflow

    skip_unless_tensorflow()
    import tensorflow as tf

    model, rng = _linear_model(1, 3, seed=1)
    images = rng.normal(size=(30, 2, 2, 1)).astype(np.float32)
    labels = rng.integers(0, 3, 30)
    source = DatasetSource(
        lambda split: tf.data.Dataset.from_tensor_slices((images, labels)),
        {"test": 30},
        lambda image, augment, seed: image,
    )
    streamed = MultiDomainData(["d"], [3], (2, 2, 1), [source])
    in_memory = MultiDomainData.from_arrays(["d"], [3], {"test": [(images, labels)]})
    expected = domain_accuracies(model, in_memory, batch_size=7)
    assert domain_accuracies(model, streamed, batch_size=7, domains="d") == expected


@pytest.mark.tensorflow_only
def test_domain_accuracies_trace_the_model_once():
    import keras

    from keras_mdn.datasets import MultiDomainData
    from keras_mdn.scoring import domain_accuracies
    from tests.helpers import skip_unless_tensorflow

    skip_unless_tensorflow()
    model, rng = _linear_model(2, 5)
    splits = {"test": [(rng.normal(size=(n, 2, 2, 1)).astype(np.float32),
                        rng.integers(0, 2, n)) for n in (13, 7)]}
    data = MultiDomainData.from_arrays(["x", "y"], [2, 2], splits)
    shapes = []
    original = model.predict_on_batch

    def recording(inputs):
        shapes.append(keras.ops.shape(inputs["image"]))
        return original(inputs)

    model.predict_on_batch = recording
    domain_accuracies(model, data, batch_size=4)
    assert {tuple(shape) for shape in shapes} == {(4, 2, 2, 1)}  # 13 and 7 padded to 4s


def test_domain_accuracies_of_a_model_without_a_domain_input():
    import keras

    from keras_mdn.datasets import MultiDomainData
    from keras_mdn.scoring import domain_accuracies

    rng = np.random.default_rng(3)
    image = keras.Input((2, 2, 1), name="image")
    dense = keras.layers.Dense(3)
    model = keras.Model(image, dense(keras.layers.Flatten()(image)))
    images = rng.normal(size=(19, 2, 2, 1)).astype(np.float32)
    labels = rng.integers(0, 3, 19)
    data = MultiDomainData.from_arrays(["d"], [3], {"test": [(images, labels)]})
    kernel, bias = dense.get_weights()
    expected = np.mean(np.argmax(images.reshape(19, 4) @ kernel + bias, 1) == labels)
    assert domain_accuracies(model, data, batch_size=8)["d"] == pytest.approx(expected)
