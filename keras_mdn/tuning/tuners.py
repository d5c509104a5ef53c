"""KerasTuner tuners set up for a `MultiDomainHyperModel`: objective, failures, directory."""

import keras_tuner as kt

from keras_mdn.tuning.objectives import OBJECTIVE, check_metric

TUNERS = {
    "random": kt.RandomSearch,
    "bayesian": kt.BayesianOptimization,
    "hyperband": kt.Hyperband,
    "grid": kt.GridSearch,
}


def objective_direction(name):
    """`"max"` for accuracies, `"min"` for costs and seconds."""
    return "max" if "accuracy" in name else "min"


def make_tuner(kind, hypermodel, objective=OBJECTIVE, max_trials=10, max_epochs=None,
               directory=None, project_name="keras_mdn_search", overwrite=False, seed=0,
               **kwargs):
    """A KerasTuner tuner for `hypermodel`, resumable from `directory`.

    Budget rejections are failed trials (`keras_tuner.errors.FailedTrialError`), so the
    oracle's limit on consecutive failures is lifted to `max_trials`; crashed trials are not
    retried. With `overwrite=False` (the default) a search interrupted in `directory`
    (process killed) resumes there: finished trials are kept, the running one is redone.

    Args:
        kind: `"random"`, `"bayesian"`, `"hyperband"` or `"grid"`.
        hypermodel: a `MultiDomainHyperModel`.
        objective: name of a recorded metric to optimise (see `keras_mdn.tuning.objectives`).
            Defaults to `"mean_accuracy"` (maximised).
        max_trials: int, trials of the random, Bayesian and grid searches (grid stops early
            when the grid is exhausted). Defaults to 10.
        max_epochs: int, Hyperband's `max_epochs` (required for `"hyperband"`).
        directory: where the search state lives. Defaults to the working directory.
        project_name: Defaults to `"keras_mdn_search"`.
        overwrite: start afresh instead of resuming. Defaults to `False`.
        seed: int. Defaults to 0.
        **kwargs: passed to the KerasTuner tuner (for example `factor` for Hyperband).

    Returns:
        A `keras_tuner.Tuner`; call `tuner.search(epochs=...)`.
    """
    if kind not in TUNERS:
        raise ValueError(f"`kind` must be one of {sorted(TUNERS)}. Received: kind={kind!r}")
    check_metric(objective, hypermodel.data.names, latency=hypermodel.measures_latency)
    if isinstance(max_trials, bool) or not isinstance(max_trials, int) or max_trials < 1:
        raise ValueError(
            f"`max_trials` must be a positive int. Received: max_trials={max_trials!r}"
        )
    options = dict(
        objective=kt.Objective(objective, objective_direction(objective)),
        directory=directory,
        project_name=project_name,
        overwrite=overwrite,
        seed=seed,
        max_consecutive_failed_trials=max(max_trials, 3),
        max_retries_per_trial=0,
    )
    if kind == "hyperband":
        if isinstance(max_epochs, bool) or not isinstance(max_epochs, int) or max_epochs < 1:
            raise ValueError(
                "Hyperband needs `max_epochs`, a positive int. "
                f"Received: max_epochs={max_epochs!r}"
            )
        options["max_epochs"] = max_epochs
    else:
        options["max_trials"] = max_trials
    options.update(kwargs)
    return TUNERS[kind](hypermodel, **options)
