import keras
import numpy as np
import pytest

from keras_mdn.optimizers import GroupLearningRates, ScaledSchedule, adapter_learning_rates

pytestmark = pytest.mark.skipif(
    not hasattr(keras.optimizers, "MultiOptimizer"), reason="needs keras.optimizers.MultiOptimizer"
)

W = {"adapter_kernel": [[1.0, -2.0], [0.5, 3.0]], "conv_kernel": [[2.0, 1.0]], "gamma": [1.5]}
G1 = {"adapter_kernel": [[0.5, 1.0], [-1.0, 2.0]], "conv_kernel": [[1.0, -3.0]], "gamma": [4.0]}
G2 = {"adapter_kernel": [[-1.0, 0.5], [2.0, 1.0]], "conv_kernel": [[0.5, 0.5]], "gamma": [-2.0]}


def variables():
    return [keras.Variable(np.array(v, "float32"), name=k) for k, v in W.items()]


def values(vs):
    return {v.path: keras.ops.convert_to_numpy(v) for v in vs}


def step(optimizer, vs, grads):
    optimizer.apply([keras.ops.convert_to_tensor(np.array(grads[v.path], "float32"))
                     for v in vs], vs)


def test_sgd_one_step_per_group():
    vs = variables()
    is_gamma = lambda v: v.path == "gamma"  # noqa: E731 (a predicate group)
    optimizer = GroupLearningRates(keras.optimizers.SGD(0.1),
                                   multipliers={"adapter_.*": 10.0, is_gamma: 0.0})
    step(optimizer, vs, G1)
    out = values(vs)
    lr = {"adapter_kernel": 1.0, "conv_kernel": 0.1, "gamma": 0.0}
    for k in W:
        np.testing.assert_allclose(out[k], np.array(W[k]) - lr[k] * np.array(G1[k]), rtol=1e-6)


def test_sgd_momentum_two_steps_with_group_l2():
    vs = variables()
    optimizer = GroupLearningRates(keras.optimizers.SGD(0.1, momentum=0.9),
                                   multipliers={"adapter_kernel": 0.5},
                                   l2={"adapter_kernel": 0.01, ".*_kernel": 1e-3})
    with pytest.raises(ValueError, match="more than one group of `l2`"):
        step(optimizer, vs, G1)  # adapter_kernel matches both l2 patterns
    vs = variables()
    optimizer = GroupLearningRates(keras.optimizers.SGD(0.1, momentum=0.9),
                                   multipliers={"adapter_kernel": 0.5},
                                   l2={"adapter_kernel": 0.01, "conv_kernel": 1e-3})
    step(optimizer, vs, G1)
    step(optimizer, vs, G2)
    out = values(vs)
    lr = {"adapter_kernel": 0.05, "conv_kernel": 0.1, "gamma": 0.1}
    l2 = {"adapter_kernel": 0.01, "conv_kernel": 1e-3, "gamma": 0.0}
    for k in W:  # PyTorch / the authors' sgd.py: v = mu v + g + l2 w; w -= lr v
        w, v = np.array(W[k]), 0.0
        for g in (G1, G2):
            v = 0.9 * v + np.array(g[k]) + l2[k] * w
            w = w - lr[k] * v
        np.testing.assert_allclose(out[k], w, rtol=1e-5)


def test_adam_group_equals_adam_at_scaled_rate():
    vs, ref = variables(), variables()
    optimizer = GroupLearningRates(keras.optimizers.Adam(0.01), multipliers={"gamma": 3.0})
    plain = {1.0: keras.optimizers.Adam(0.01), 3.0: keras.optimizers.Adam(0.03)}
    for grads in (G1, G2):
        step(optimizer, vs, grads)
        for m, opt in plain.items():
            group = [v for v in ref if (v.path == "gamma") == (m == 3.0)]
            step(opt, group, grads)
    for k, value in values(vs).items():
        np.testing.assert_allclose(value, values(ref)[k], rtol=1e-6)


def test_learning_rate_sets_every_group_and_schedules_scale():
    optimizer = GroupLearningRates(keras.optimizers.SGD(0.1), multipliers={"gamma": 4.0})
    optimizer.learning_rate = 0.01  # as ReduceLROnPlateau does
    rates = sorted(float(keras.ops.convert_to_numpy(o.learning_rate))
                   for o in optimizer.optimizers)
    np.testing.assert_allclose(rates, [0.01, 0.04], rtol=1e-6)
    np.testing.assert_allclose(float(optimizer.learning_rate), 0.01, rtol=1e-6)
    decay = keras.optimizers.schedules.ExponentialDecay(0.1, decay_steps=1, decay_rate=0.5)
    optimizer = GroupLearningRates(keras.optimizers.SGD(decay), multipliers={"gamma": 4.0})
    vs = variables()
    step(optimizer, vs, G1)
    step(optimizer, vs, G2)  # second step: rate 0.05 x multiplier
    gamma = W["gamma"][0] - 4 * (0.1 * G1["gamma"][0] + 0.05 * G2["gamma"][0])
    np.testing.assert_allclose(values(vs)["gamma"], [gamma], rtol=1e-5)
    np.testing.assert_allclose(float(ScaledSchedule(decay, 4.0)(2)), 0.1, rtol=1e-6)


def test_fit_with_reduce_lr_and_serialisation(tmp_path):
    inputs = keras.Input((3,))
    body = keras.layers.Dense(4, name="body")(inputs)
    outputs = keras.layers.Dense(2, name="head", kernel_constraint="non_neg")(body)
    model = keras.Model(inputs, outputs)
    optimizer = GroupLearningRates(keras.optimizers.SGD(0.1, momentum=0.9),
                                   multipliers={"body/.*": 0.0}, l2={"head/kernel": 1e-3})
    model.compile(optimizer, loss="mse")
    body = keras.ops.convert_to_numpy(model.get_layer("body").kernel)
    x, y = np.random.default_rng(0).normal(size=(2, 8, 3)).astype("float32")[0], np.zeros((8, 2))
    model.fit(x, y, epochs=3, verbose=0, callbacks=[keras.callbacks.ReduceLROnPlateau(
        "loss", factor=0.5, patience=0, min_delta=1e9)])  # epochs 2, 3
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(model.get_layer("body").kernel), body)
    assert np.all(keras.ops.convert_to_numpy(model.get_layer("head").kernel) >= 0)  # constraint
    np.testing.assert_allclose(float(optimizer.learning_rate), 0.1 * 0.5 ** 2, rtol=1e-6)
    copy = GroupLearningRates.from_config(optimizer.get_config())
    assert copy.get_config()["multipliers"] == {"body/.*": 0.0}
    assert copy.get_config()["l2"] == {"head/kernel": 1e-3}
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras")
    assert isinstance(loaded.optimizer, GroupLearningRates)


def test_errors():
    sgd = keras.optimizers.SGD(0.1)
    with pytest.raises(ValueError, match=r"multipliers\['a'\]"):
        GroupLearningRates(sgd, multipliers={"a": -1.0})
    with pytest.raises(ValueError, match="regular expression"):
        GroupLearningRates(sgd, multipliers={"(": 1.0})
    with pytest.raises(ValueError, match="Received: multipliers"):
        GroupLearningRates(sgd, multipliers=[("a", 1.0)])
    with pytest.raises(ValueError, match="plain Keras optimizer"):
        GroupLearningRates("sgd")
    with pytest.raises(ValueError, match="predicates"):
        GroupLearningRates(sgd, l2={lambda v: True: 1e-4}).get_config()
    built = keras.optimizers.SGD(0.1)
    built.build(variables())
    with pytest.raises(ValueError, match="must not be built"):
        GroupLearningRates(built)


def test_adapter_learning_rates_scales_only_adapter_kernels():
    from keras_mdn import ResidualAdapter

    layer = ResidualAdapter(keras.layers.Dense(3, use_bias=False), num_domains=2, rank=2)
    layer.build((None, 4))
    optimizer = adapter_learning_rates(keras.optimizers.SGD(0.1), multiplier=9.0)
    variables = layer.trainable_variables
    before = [keras.ops.convert_to_numpy(v) for v in variables]
    optimizer.apply([keras.ops.ones(v.shape) for v in variables], variables)
    steps = {v.path.rsplit("/", 1)[-1]: float(np.max(b - keras.ops.convert_to_numpy(v)))
             for v, b in zip(variables, before)}
    assert steps.pop("adapter_kernel") == pytest.approx(0.9)
    assert steps.pop("adapter_projection") == pytest.approx(0.9)
    assert steps and all(step == pytest.approx(0.1) for step in steps.values())
