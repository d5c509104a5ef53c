import itertools
import math

import numpy as np
import pytest

from keras_mdn.tuning.pareto import pareto_front
from keras_mdn.tuning.records import TrialRecord


def record(trial_id, accuracy, parameters, status="COMPLETED"):
    metrics = {} if status != "COMPLETED" else {
        "mean_accuracy": accuracy, "parameters": parameters, "seconds": 1.0
    }
    return TrialRecord(str(trial_id), status, {"g/mode": "parallel"}, metrics)


def brute_force(records):
    """Trials that no other trial dominates (>= accuracy, <= cost, one strictly)."""
    front = []
    for p in records:
        a, c = p.value("mean_accuracy"), p.value("parameters")
        dominated = any(
            q.value("mean_accuracy") >= a and q.value("parameters") <= c
            and (q.value("mean_accuracy") > a or q.value("parameters") < c)
            for q in records
        )
        if not dominated:
            front.append(p.trial_id)
    return sorted(front)


@pytest.mark.parametrize("seed", range(20))
def test_front_equals_brute_force(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 30))
    # Few distinct values, so ties in either coordinate (and exact duplicates) happen.
    records = [
        record(i, float(rng.integers(0, 6)) / 5, float(rng.integers(1, 8)) * 100)
        for i in range(count)
    ]
    front = pareto_front(records)
    assert sorted(r.trial_id for r in front) == brute_force(records)
    costs = [r.value("parameters") for r in front]
    assert costs == sorted(costs)


def test_failed_and_incomplete_trials_are_left_out():
    records = [record(0, 0.5, 100), record(1, 0.9, 50, status="FAILED"),
               TrialRecord("2", "COMPLETED", {}, {"mean_accuracy": 0.7, "parameters": math.nan})]
    front = pareto_front(records)
    assert [r.trial_id for r in front] == ["0"]
    assert [r.trial_id for r in front.records] == ["0"]


def test_front_table_plot_and_choice(tmp_path):
    records = [record(i, a, c) for i, (a, c) in enumerate([(0.5, 100), (0.7, 300), (0.6, 400),
                                                           (0.8, 900)])]
    front = pareto_front(records)
    assert [r.trial_id for r in front] == ["0", "1", "3"]
    table = front.table()
    assert table.splitlines()[0].startswith("| trial | mean_accuracy | parameters")
    assert "| 1 | 0.7000 | 300 |" in table
    front.plot(tmp_path / "front.png", reference={"hand design": (500, 0.75)})
    assert (tmp_path / "front.png").stat().st_size > 1000
    assert front.best_within(500).trial_id == "1"
    with pytest.raises(ValueError, match="No front point costs at most 10"):
        front.best_within(10)
    with pytest.raises(ValueError, match="not on the front"):
        front.model(tuner=None, point="2")


def test_bad_names():
    records = [record(0, 0.5, 100)]
    with pytest.raises(ValueError, match=r"No trial records a metric named 'flops' \(the cost\)"):
        pareto_front(records, cost="flops")
    with pytest.raises(ValueError, match="objective"):
        pareto_front(records, objective="val_accuracy")
    with pytest.raises(ValueError, match="No completed trial"):
        pareto_front([record(0, 0, 0, status="FAILED")])


def test_sweep_on_all_orders_of_a_small_set():
    values = [(0.5, 1), (0.5, 1), (0.6, 2), (0.6, 1), (0.4, 0.5)]
    for order in itertools.permutations(range(len(values))):
        records = [record(i, *values[i]) for i in order]
        assert sorted(r.trial_id for r in pareto_front(records)) == brute_force(records)
