"""`MultiDomainHyperModel`: a KerasTuner hypermodel over adapter placement, kind and rank."""

import time

import keras
import keras_tuner as kt
import numpy as np

from keras_mdn.datasets.multi_domain_data import MultiDomainData
from keras_mdn.scoring import domain_accuracies
from keras_mdn.tuning.base_model import adaptable_layers, multi_domain_base
from keras_mdn.tuning.objectives import OBJECTIVE, Budget, trial_costs
from keras_mdn.tuning.placement import place
from keras_mdn.tuning.search_space import SearchSpace


class MultiDomainHyperModel(kt.HyperModel):
    """Searches where adapters go and how big each domain's parameters are.

    Every trial starts from a fresh copy of the pretrained `base` (its shared weights are
    trained once, before the search), applies the trial's design (per group of layers: no
    adapter, per-domain batch norms only, parallel or series adapters, full or low rank), and
    trains only the domain-specific parameters on `data`. `fit` returns the metrics listed in
    `keras_mdn.tuning.objectives` (objective `"mean_accuracy"`), so every trial records its
    accuracy per domain, parameters and pack bytes per domain and its seconds.

    Use it with any KerasTuner tuner (`keras_mdn.tuning.make_tuner` sets the objective); the
    tuner's `search(epochs=...)` arguments reach `fit`. Hyperband's promotion works: a trial
    rebuilt from the same hyperparameters has the same weights, so KerasTuner reloads them.

    Args:
        base: the pretrained base, a built functional Keras model with an input named
            `"image"`: single-domain (per-domain batch norms and head are added) or already
            multi-domain with `data.num_domains` domains (a `keras_mdn.models.resnet26`).
            It is never modified.
        data: a `keras_mdn.datasets.MultiDomainData`.
        search_space: a `SearchSpace`, or a function `(hp, model) -> keras.Model` that
            declares its own hyperparameters and returns the trial's model built from
            `model` (the multi-domain copy of the base, shared layers frozen), for example
            with `keras_mdn.surgery` or factorised layers. Defaults to `SearchSpace()`.
        budget: optional `Budget`: a trial over it fails (`FailedTrialError`, its status
            `"FAILED"` and the reason in its message) at the start of `fit`, before training.
        learning_rate: float, Adam's learning rate when the space does not search it.
            Defaults to `1e-2`.
        batch_size: int. Defaults to 64.
        evaluation_split: the split the recorded accuracies are measured on. Defaults to
            `"validation"`.
        source_domain: int, the domain whose batch norm statistics a shared (`"none"`) group
            keeps. Defaults to 0.
        seed: int, seed of the data order. Defaults to 0.
        verbose: verbosity of `model.fit`. Defaults to 0.
        compile_options: optional dict of extra `model.compile` arguments (for example
            `{"run_eagerly": True}`, quicker than tracing for tiny models, or
            `{"jit_compile": True}`). Defaults to `None` (`jit_compile=False`: XLA compiles a
            large network for longer than a short trial trains).

    Example:

    >>> hypermodel = MultiDomainHyperModel(pretrained, data, SearchSpace(groups="stage"))
    >>> tuner = keras_mdn.tuning.make_tuner("random", hypermodel, max_trials=20,
    ...                                     directory="search", project_name="digits")
    >>> tuner.search(epochs=5)
    """

    def __init__(self, base, data, search_space=None, budget=None, learning_rate=1e-2,
                 batch_size=64, evaluation_split="validation", source_domain=0, seed=0,
                 verbose=0, compile_options=None):
        super().__init__(name="multi_domain", tunable=True)
        if not isinstance(base, keras.Model):
            raise TypeError(f"`base` must be a keras.Model. Received: base={base!r}")
        if not isinstance(data, MultiDomainData):
            raise TypeError(
                f"`data` must be a keras_mdn.datasets.MultiDomainData. Received: data={data!r}"
            )
        search_space = SearchSpace() if search_space is None else search_space
        if not (isinstance(search_space, SearchSpace) or callable(search_space)):
            raise TypeError(
                "`search_space` must be a SearchSpace or a function (hp, model) -> model. "
                f"Received: search_space={search_space!r}"
            )
        if budget is not None and not isinstance(budget, Budget):
            raise TypeError(f"`budget` must be a Budget or None. Received: budget={budget!r}")
        if isinstance(learning_rate, bool) or not learning_rate > 0:
            raise ValueError(
                "`learning_rate` must be a positive number. "
                f"Received: learning_rate={learning_rate!r}"
            )
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(
                f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}"
            )
        if data.num_examples(evaluation_split) == 0:
            raise ValueError(
                f"The data has no examples in the evaluation split. "
                f"Received: evaluation_split={evaluation_split!r}"
            )
        data.domain_index(source_domain)
        self.base = base
        self.data = data
        self.search_space = search_space
        self.budget = budget
        self.learning_rate = float(learning_rate)
        self.batch_size = batch_size
        self.evaluation_split = evaluation_split
        self.source_domain = int(source_domain)
        self.seed = seed
        self.verbose = verbose
        self.compile_options = {"jit_compile": False, **(compile_options or {})}
        probe = multi_domain_base(base, data.num_classes)
        self.resolved = None
        if isinstance(search_space, SearchSpace):
            self.resolved = search_space.resolve(probe, adaptable_layers(probe))

    @property
    def pruned(self):
        """`(group, rank, reason)` of every rank choice removed from the space."""
        return [] if self.resolved is None else list(self.resolved.pruned)

    @property
    def measures_latency(self):
        return self.budget is not None and self.budget.cost == "latency_ms"

    def build(self, hp):
        multi = multi_domain_base(self.base, self.data.num_classes)
        learning_rate = None
        if self.resolved is not None:
            design = self.search_space.define(hp, self.resolved)
            model = place(multi, design, source_domain=self.source_domain)
            learning_rate = design.learning_rate
        else:
            model = self.search_space(hp, multi)
            if not isinstance(model, keras.Model):
                raise TypeError(
                    "The search space function must return a keras.Model. "
                    f"Received: {model!r}"
                )
        model.compile(
            optimizer=keras.optimizers.Adam(learning_rate or self.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
            **self.compile_options,
        )
        return model

    def fit(self, hp, model, *args, epochs=1, initial_epoch=0, callbacks=None, **kwargs):
        if args:
            raise TypeError(
                "MultiDomainHyperModel trains on its own `data`: pass no x/y to "
                f"`tuner.search`. Received: {len(args)} positional arguments"
            )
        unknown = sorted(set(kwargs) - {"verbose"})
        if unknown:
            raise TypeError(
                "MultiDomainHyperModel.fit takes `epochs`, `initial_epoch`, `callbacks` and "
                f"`verbose` from `tuner.search`. Received: {unknown}"
            )
        start = time.perf_counter()
        data = self.data
        # The budget is checked here, not in `build`: KerasTuner also calls `build` to
        # explore the conditional space, and Hyperband to reload a trial.
        costs = trial_costs(model, data.names, latency=self.measures_latency)
        if self.budget is not None:
            reason = self.budget.violation(costs, data.names)
            if reason is not None:
                raise kt.errors.FailedTrialError(f"Trial rejected before training, {reason}")
        train = data.dataset("train", batch_size=self.batch_size, repeat=True, seed=self.seed)
        model.fit(
            train,
            epochs=epochs,
            initial_epoch=initial_epoch,
            steps_per_epoch=data.steps_per_epoch("train", self.batch_size),
            callbacks=callbacks,
            verbose=kwargs.pop("verbose", self.verbose),
        )
        accuracies = domain_accuracies(model, data, split=self.evaluation_split)
        metrics = {OBJECTIVE: float(np.mean(list(accuracies.values())))}
        metrics.update({f"accuracy/{name}": float(a) for name, a in accuracies.items()})
        metrics.update(costs)
        metrics["seconds"] = time.perf_counter() - start
        return metrics
