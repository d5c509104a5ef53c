"""Keras-style layer checks on the public API, for layers called with extra arguments.

Keras' own harness (`keras.src.testing.TestCase.run_layer_test`) is private and passes no call
arguments such as `domain`; these checks do what it does for one layer case:

- `structure`: build, output shape against `compute_output_shape` and the symbolic output
  (shape and dtype), weight counts (trainable / non-trainable), config round trip (the clone
  with the same weights gives the same outputs);
- `training`: one `fit` step, finite loss, every trainable weight moves;
- `mixed_precision`: with `dtype="mixed_bfloat16"`, float32 variables, bfloat16 outputs (eager
  and symbolic), a finite training step;
- `saving`: a model with the layer round trips through `.keras` with identical outputs.

A case is a `LayerCase`; `run_check(case, name, tmp_path)` runs one check.
"""

import dataclasses
import json
from collections.abc import Callable

import keras
import numpy as np

from tests.helpers import save_and_load, to_numpy

CHECKS = ("structure", "training", "mixed_precision", "saving")


@dataclasses.dataclass
class LayerCase:
    """One layer configuration to check.

    Args:
        make: `make(**kwargs)` returns a new layer; `kwargs` are base layer keyword arguments
            (`dtype=`).
        input_shape: the input's shape, batch included.
        call_kwargs: extra call arguments: NumPy arrays (fed as model inputs, batch first) or
            Python values (passed as they are), e.g. `{"domain": np.array([0, 1, 2, 0])}`.
        trainable_weights: expected number of trainable weights.
        non_trainable_weights: expected number of non-trainable weights.
    """

    make: Callable
    input_shape: tuple
    call_kwargs: dict = dataclasses.field(default_factory=dict)
    trainable_weights: int = 0
    non_trainable_weights: int = 0

    def inputs(self, seed=0):
        rng = np.random.default_rng(seed)
        return rng.normal(size=self.input_shape).astype("float32")

    def model(self, layer):
        """A functional model `[x, *array call arguments] -> layer(x, **call_kwargs)`."""
        x = keras.Input(self.input_shape[1:], batch_size=self.input_shape[0])
        inputs, kwargs = [x], {}
        for key, value in self.call_kwargs.items():
            if isinstance(value, np.ndarray):
                kwargs[key] = keras.Input(value.shape[1:], dtype=str(value.dtype),
                                          batch_size=value.shape[0], name=key)
                inputs.append(kwargs[key])
            else:
                kwargs[key] = value
        return keras.Model(inputs, layer(x, **kwargs))

    def model_inputs(self, x):
        return [x] + [v for v in self.call_kwargs.values() if isinstance(v, np.ndarray)]


def run_check(case, name, tmp_path):
    """Runs the check `name` (one of `CHECKS`) on `case`."""
    if name not in CHECKS:
        raise ValueError(f"`name` must be one of {CHECKS}. Received: name={name!r}")
    globals()[f"_check_{name}"](case, tmp_path)


def _check_structure(case, tmp_path):
    layer = case.make()
    x = case.inputs()
    outputs = layer(x, **case.call_kwargs)
    assert layer.built
    assert tuple(outputs.shape) == tuple(layer.compute_output_shape(case.input_shape))
    symbolic = case.model(case.make()).outputs[0]
    assert tuple(symbolic.shape) == tuple(outputs.shape)
    assert keras.backend.standardize_dtype(symbolic.dtype) == keras.backend.standardize_dtype(
        outputs.dtype
    )

    assert len(layer.trainable_weights) == case.trainable_weights, layer.trainable_weights
    assert len(layer.non_trainable_weights) == case.non_trainable_weights, (
        layer.non_trainable_weights
    )
    layer.trainable = False
    assert not layer.trainable_weights
    assert len(layer.non_trainable_weights) == case.trainable_weights + case.non_trainable_weights
    layer.trainable = True

    config = json.loads(json.dumps(layer.get_config()))
    clone = type(layer).from_config(config)
    assert json.loads(json.dumps(clone.get_config())) == config
    clone(x, **case.call_kwargs)
    clone.set_weights(layer.get_weights())
    np.testing.assert_array_equal(to_numpy(clone(x, **case.call_kwargs)), to_numpy(outputs))


def _fit_step(case, model):
    x = case.inputs()
    target = np.zeros(tuple(model.outputs[0].shape), "float32")
    model.compile(keras.optimizers.SGD(0.01), "mse")
    # Two steps: weights behind a zero-initialised adapter get a gradient from the second.
    history = model.fit(case.model_inputs(x), target, batch_size=case.input_shape[0],
                        epochs=2, verbose=0)
    return history.history["loss"][-1]


def _check_training(case, tmp_path):
    layer = case.make()
    model = case.model(layer)
    before = [to_numpy(w) for w in layer.trainable_weights]
    loss = _fit_step(case, model)
    assert np.isfinite(loss)
    for weight, old in zip(layer.trainable_weights, before, strict=True):
        new = to_numpy(weight)
        assert np.all(np.isfinite(new)), weight.path
        assert not np.array_equal(new, old), f"{weight.path} did not move"


def _check_mixed_precision(case, tmp_path):
    layer = case.make(dtype="mixed_bfloat16")
    outputs = layer(case.inputs(), **case.call_kwargs)
    assert keras.backend.standardize_dtype(outputs.dtype) == "bfloat16"
    dtypes = {w.path: keras.backend.standardize_dtype(w.dtype) for w in layer.weights}
    assert set(dtypes.values()) == {"float32"}, dtypes
    model = case.model(case.make(dtype="mixed_bfloat16"))
    assert keras.backend.standardize_dtype(model.outputs[0].dtype) == "bfloat16"
    assert np.isfinite(_fit_step(case, model))
    assert all(np.all(np.isfinite(to_numpy(w))) for w in model.weights)


def _check_saving(case, tmp_path):
    model = case.model(case.make())
    # Move every weight off its initial value (zero adapters, unit statistics).
    rng = np.random.default_rng(1)
    model.set_weights([
        rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) if w.dtype.kind == "f" else w
        for w in model.get_weights()
    ])
    inputs = case.model_inputs(case.inputs())
    loaded = save_and_load(model, tmp_path)
    np.testing.assert_array_equal(
        to_numpy(loaded(inputs, training=False)), to_numpy(model(inputs, training=False))
    )
