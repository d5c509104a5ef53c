import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_mdn.tuning import MultiDomainHyperModel, SearchSpace, make_tuner, trial_records
from keras_mdn.tuning.records import load_records
from tests.helpers import tensorflow_only
from tests.tuning.helpers import tiny_base, tiny_data

pytestmark = tensorflow_only

SCRIPT = os.path.join(os.path.dirname(__file__), "search_script.py")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def tiny_space():
    # Three points: bn, parallel at full rank, parallel at rank 2.
    return SearchSpace(groups={"all": ["dense1", "dense2"]}, modes=("bn", "parallel"),
                       ranks=("full", 2))


def hypermodel(cls=MultiDomainHyperModel):
    data = tiny_data()
    return cls(tiny_base(data, epochs=1), data, tiny_space(),
               compile_options={"run_eagerly": True})


@pytest.mark.parametrize("kind", ["random", "bayesian", "grid"])
def test_tuners_on_a_tiny_space(kind, tmp_path):
    trials = 3 if kind == "grid" else 2  # the grid: all three points
    tuner = make_tuner(kind, hypermodel(), max_trials=trials, directory=tmp_path,
                       project_name=kind)
    tuner.search(epochs=1, verbose=0)
    records = trial_records(tuner)
    assert len(records) == trials and all(r.completed for r in records)
    designs = {(r.hyperparameters["all/mode"], r.hyperparameters.get("all/rank"))
               for r in records}
    if kind == "grid":
        assert designs == {("bn", None), ("parallel", "full"), ("parallel", "2")}
    best = tuner.get_best_models(1)[0]
    assert isinstance(best, keras.Model) and [t.name for t in best.inputs] == ["image", "domain"]


class StartingWeights(MultiDomainHyperModel):
    """Records each trial's weights when its training starts (after Hyperband's reload)."""

    starts = []

    def fit(self, hp, model, *args, **kwargs):
        weights = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
        self.starts.append((hp.values.get("tuner/trial_id"), weights))
        return super().fit(hp, model, *args, **kwargs)


def test_hyperband_promotion_reloads_the_domain_layers(tmp_path):
    model_builder = hypermodel(StartingWeights)
    tuner = make_tuner("hyperband", model_builder, max_epochs=2, factor=2,
                       hyperband_iterations=1, directory=tmp_path, project_name="hb")
    tuner.search(verbose=0)
    promoted = [(parent, w) for parent, w in StartingWeights.starts if parent is not None]
    assert promoted, "Hyperband promoted no trial"
    for parent, weights in promoted:
        trained = tuner.load_model(tuner.oracle.get_trial(parent))
        for a, b in zip(weights, trained.weights, strict=True):
            np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(b))
    assert all(r.completed for r in trial_records(tuner))


def test_bad_tuner_arguments(tmp_path):
    model_builder = hypermodel()
    with pytest.raises(ValueError, match="kind"):
        make_tuner("evolution", model_builder, directory=tmp_path)
    with pytest.raises(ValueError, match="No trial records a metric named 'val_loss'"):
        make_tuner("random", model_builder, objective="val_loss", directory=tmp_path)
    with pytest.raises(ValueError, match="max_epochs"):
        make_tuner("hyperband", model_builder, directory=tmp_path)


def run_script(directory, base, *extra, timeout=240):
    env = {**os.environ, "PYTHONPATH": ROOT, "KERAS_BACKEND": "tensorflow"}
    for name in ("KERASTUNER_TUNER_ID", "KERASTUNER_ORACLE_IP", "KERASTUNER_ORACLE_PORT"):
        env.pop(name, None)
    return subprocess.run(
        [sys.executable, SCRIPT, str(directory), "--base", str(base), *extra],
        env=env, capture_output=True, text=True, timeout=timeout,
    )


def test_resume_after_the_process_is_killed(tmp_path):
    data = tiny_data()
    base = tmp_path / "base.keras"
    tiny_base(data, epochs=1).save(base)
    markers = tmp_path / "markers"
    markers.mkdir()
    common = ["--max-trials", "4", "--epochs", "2", "--markers", str(markers)]
    killed = run_script(tmp_path / "search", base, *common, "--kill-at-trial", "3")
    assert killed.returncode == -9, killed.stderr[-2000:]
    first = {r.trial_id: r for r in load_records(tmp_path / "search", "search")}
    finished = {t for t, r in first.items() if r.completed}
    assert len(finished) == 2 and len(first) == 3
    started_before = len(os.listdir(markers))
    resumed = run_script(tmp_path / "search", base, *common, "--records",
                         str(tmp_path / "records.json"))
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    records = {r["trial_id"]: r for r in json.loads((tmp_path / "records.json").read_text())}
    assert len(records) == 4 and all(r["status"] == "COMPLETED" for r in records.values())
    # Finished trials were kept as they were, not run again: the second process ran the
    # interrupted trial and the last one only.
    for trial_id in finished:
        assert records[trial_id]["metrics"] == first[trial_id].metrics
    assert len(os.listdir(markers)) - started_before == 2
