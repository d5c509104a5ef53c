"""Learning-rate multipliers and L2 decay per group of variables, for any Keras optimizer.

Keras 3 optimizers take one learning rate. Keras' own `keras.optimizers.MultiOptimizer`
gives groups of variables their own optimizers, but it hides the learning rate (so
`ReduceLROnPlateau`, `LearningRateScheduler` and schedules cannot drive it) and each group's
optimizer is configured by hand. `GroupLearningRates` is a `MultiOptimizer` built from ONE
optimizer: every group gets a copy of it whose learning rate is the group's multiplier times
the base learning rate (a float or a schedule), and `learning_rate` reads and sets the base
rate, so the learning-rate callbacks scale every group together.

It also takes a per-group coupled L2 decay (`l2`): `l2 * variable` is added to the gradient
before the optimizer sees it, as PyTorch's `weight_decay` and the per-group decays of the
residual adapters' authors (srebuffi/residual_adapters: one learning rate, weight decay
`wd3x3` on the 3x3 convs, `wd1x1` on the 1x1 adapters, `wd` on the rest). Keras'
`weight_decay` argument is the decoupled (AdamW) form; under momentum the two differ.
"""

import math
import re

import keras

from keras_mdn.api import register

_MultiOptimizer = getattr(keras.optimizers, "MultiOptimizer", None)

# The kernels of every `ResidualAdapter` (its per-domain 1x1 kernel; a low-rank adapter's
# shared projection too), as a `GroupLearningRates` selector.
ADAPTER_KERNELS = r".*adapter_(kernel|projection)"


@register
class ScaledSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A learning-rate schedule times a constant: `multiplier * schedule(step)`.

    Args:
        schedule: a `keras.optimizers.schedules.LearningRateSchedule`.
        multiplier: float >= 0.
    """

    def __init__(self, schedule, multiplier):
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError(
                "`schedule` must be a keras.optimizers.schedules.LearningRateSchedule. "
                f"Received: schedule={schedule!r}"
            )
        self.schedule = schedule
        self.multiplier = _check_number("multiplier", multiplier)

    def __call__(self, step):
        return self.multiplier * self.schedule(step)

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
                "multiplier": self.multiplier}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["schedule"] = keras.optimizers.schedules.deserialize(config["schedule"])
        return cls(**config)


@register
class GroupLearningRates(_MultiOptimizer or keras.optimizers.Optimizer):
    """One optimizer, with a learning-rate multiplier and an L2 decay per group of variables.

    A group is selected by a regular expression matched in full against `variable.path`
    (e.g. `"resnet26/.*/adapter_kernel"`, `".*adapter_(kernel|projection)"`) or by a
    predicate `variable -> bool`. Variables of no group train with multiplier 1 and no
    added decay. A variable selected by two groups of the same argument is an error.

    For each distinct multiplier `m`, a copy of `optimizer` with learning rate
    `m * learning_rate` updates that group's variables (`m = 1`: `optimizer` itself), so
    momentum, Adam's moments and decoupled `weight_decay` work per group exactly as the
    optimizer does; `m = 0` freezes a group. For SGD with momentum, a group's update is the
    base update with `lr * m`: `v = mu v + g + l2 w; w -= lr m v`.

    `learning_rate` gets and sets the base rate (groups follow), so `ReduceLROnPlateau` and
    `LearningRateScheduler` work as with a plain optimizer; a schedule is scaled per group
    (`ScaledSchedule`). Needs Keras >= 3.12 (`keras.optimizers.MultiOptimizer`).

    Args:
        optimizer: a Keras optimizer, not yet built (any class; its config is copied).
        multipliers: dict `{selector: multiplier}` with multipliers >= 0. Defaults to `None`
            (every variable at the base rate).
        l2: dict `{selector: decay}`: `decay * variable` is added to those variables'
            gradients (coupled L2, the authors' per-group weight decay). Defaults to `None`.
        name: Defaults to `"group_learning_rates"`.

    Example (the authors' groups on a `resnet26`: adapters at 10x, their own decay):

    >>> optimizer = GroupLearningRates(
    ...     keras.optimizers.SGD(0.01, momentum=0.9),
    ...     multipliers={".*adapter_(kernel|projection)": 10.0},
    ...     l2={".*adapter_(kernel|projection)": 5e-4, ".*kernel": 1e-4})
    >>> model.compile(optimizer, loss=...)
    """

    def __init__(self, optimizer, multipliers=None, l2=None, name="group_learning_rates"):
        if _MultiOptimizer is None:
            raise ImportError(
                "GroupLearningRates needs keras.optimizers.MultiOptimizer (Keras >= 3.12). "
                f"Received: keras.__version__={keras.__version__!r}"
            )
        if not isinstance(optimizer, keras.optimizers.Optimizer) or isinstance(
                optimizer, (_MultiOptimizer, keras.optimizers.LossScaleOptimizer)):
            raise ValueError(
                "`optimizer` must be a plain Keras optimizer (not a MultiOptimizer or "
                f"LossScaleOptimizer). Received: optimizer={optimizer!r}"
            )
        if optimizer.built:
            raise ValueError(
                "`optimizer` must not be built yet (its state would not be split into "
                f"groups). Received: optimizer={optimizer.name!r} (built)"
            )
        multipliers = _check_groups("multipliers", multipliers)
        l2 = _check_groups("l2", l2)
        copies = {1.0: optimizer}
        for m in sorted(set(multipliers.values()) - {1.0}):
            copies[m] = _scaled_copy(optimizer, m)
        super().__init__(self._optimizer_for, name=name)
        self._base, self._multipliers, self._l2, self._copies = optimizer, multipliers, l2, copies
        self._inner_optimizers = list(copies.values())

    def _optimizer_for(self, variable):
        return self._copies[_lookup(self._multipliers, variable, "multipliers", 1.0)]

    @property
    def optimizer(self):
        """The base optimizer (the group of multiplier 1)."""
        return self._base

    @property
    def learning_rate(self):
        return self._base.learning_rate

    @learning_rate.setter
    def learning_rate(self, value):
        for m, copy in self._copies.items():
            copy.learning_rate = value if m == 1.0 else value * m

    def apply(self, grads, trainable_variables=None):
        if trainable_variables is None and self.built:
            trainable_variables = self._trainable_variables
        if self._l2 and trainable_variables is not None:
            grads = [
                g if g is None or (c := _lookup(self._l2, v, "l2", 0.0)) == 0.0
                else g + keras.ops.cast(c, g.dtype) * v
                for g, v in zip(grads, trainable_variables)
            ]
        return super().apply(grads, trainable_variables)

    def get_config(self):
        for arg, groups in (("multipliers", self._multipliers), ("l2", self._l2)):
            predicates = [k for k in groups if not isinstance(k, str)]
            if predicates:
                raise ValueError(
                    f"Only path patterns (str) of `{arg}` can be serialised, not predicates. "
                    f"Received: {arg} keys {predicates!r}"
                )
        return {"optimizer": keras.optimizers.serialize(self._base),
                "multipliers": dict(self._multipliers), "l2": dict(self._l2),
                "name": self.name}

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        config["optimizer"] = keras.optimizers.deserialize(
            config["optimizer"], custom_objects=custom_objects)
        return cls(**config)


def _check_number(arg, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            math.isfinite(value) and value >= 0):
        raise ValueError(f"`{arg}` must be a finite number >= 0. Received: {arg}={value!r}")
    return float(value)


def _check_groups(arg, groups):
    if groups is None:
        return {}
    if not isinstance(groups, dict):
        raise ValueError(
            f"`{arg}` must be a dict {{path pattern or predicate: number}}. "
            f"Received: {arg}={groups!r}"
        )
    for key, value in groups.items():
        if isinstance(key, str):
            try:
                re.compile(key)
            except re.error as error:
                raise ValueError(
                    f"`{arg}` key {key!r} is not a regular expression ({error}). "
                    f"Received: {arg}={groups!r}"
                ) from None
        elif not callable(key):
            raise ValueError(
                f"`{arg}` keys must be path patterns (str) or predicates (callables). "
                f"Received: {arg} key {key!r}"
            )
        _check_number(f"{arg}[{key!r}]", value)
    return {key: float(value) for key, value in groups.items()}


def _lookup(groups, variable, arg, default):
    """The value of the one group that selects `variable`, else `default`."""
    hits = [key for key in groups
            if (re.fullmatch(key, variable.path) if isinstance(key, str) else key(variable))]
    if len(hits) > 1:
        raise ValueError(
            f"Variable {variable.path!r} is selected by more than one group of `{arg}`. "
            f"Received: {arg} keys {hits!r}"
        )
    return groups[hits[0]] if hits else default


def _scaled_copy(optimizer, multiplier):
    config = optimizer.get_config()
    rate = config["learning_rate"]
    if isinstance(rate, dict):
        config["learning_rate"] = ScaledSchedule(
            keras.optimizers.schedules.deserialize(rate), multiplier)
    else:
        config["learning_rate"] = float(rate) * multiplier
    config["name"] = f"{optimizer.name}_x{multiplier:g}"
    return optimizer.__class__.from_config(config)


def adapter_learning_rates(optimizer, multiplier=9.0):
    """The new-domain recipe: `optimizer` with the adapter kernels at `multiplier` x its rate.

    `GroupLearningRates(optimizer, multipliers={ADAPTER_KERNELS: multiplier})`. Under one
    learning rate a zero-initialised 1x1 adapter's output moves about 1/9 as fast per step as
    the 3x3 conv's beside it (1 tap against 9); 9x was measured in
    `benchmarks/results/new_domain_omniglot.md` (leave one alphabet out, fresh adapters added
    with `keras_mdn.surgery.add_domain`), ahead of one rate for every parameter.

    Args:
        optimizer: a Keras optimizer, not yet built.
        multiplier: float >= 0. Defaults to `9.0`.

    Returns:
        A `GroupLearningRates`.

    Example:

    >>> bigger = add_domain(model, num_classes=20)
    >>> bigger.compile(adapter_learning_rates(keras.optimizers.SGD(0.05, momentum=0.9)), ...)
    """
    return GroupLearningRates(optimizer, multipliers={ADAPTER_KERNELS: multiplier})
