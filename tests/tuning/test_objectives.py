import math

import pytest

from keras_mdn.report import parameter_report
from keras_mdn.tuning.base_model import multi_domain_base
from keras_mdn.tuning.objectives import (
    Budget,
    check_metric,
    recorded_metrics,
    swappable_latency_ms,
    trial_costs,
)
from tests.helpers import tensorflow_only
from tests.tuning.helpers import NAMES, tiny_base, tiny_data

pytestmark = tensorflow_only


def test_costs_match_the_parameter_report_and_the_packs():
    from keras_mdn.export import export_all

    data = tiny_data()
    model = multi_domain_base(tiny_base(data, epochs=1), data.num_classes)
    costs = trial_costs(model, data.names)
    report = parameter_report(model)
    for d, name in enumerate(data.names):
        assert costs[f"parameters/{name}"] == report.domains[d]["parameters"]
    assert costs["parameters"] == pytest.approx(
        sum(row["parameters"] for row in report.domains) / 3
    )
    # Pack bytes: the size of the pack files the swappable export writes.
    import os
    import tempfile

    with tempfile.TemporaryDirectory() as directory:
        manifest = export_all(model, directory, domains=list(range(3)), layouts=["swappable"])
        packs = sorted(p for p in _files(directory) if p.endswith(".mdnpack"))
        assert len(packs) == 3, manifest
        sizes = sorted(os.path.getsize(p) for p in packs)
    assert sorted(costs[f"pack_bytes/{n}"] for n in data.names) == sizes
    assert set(costs) == set(recorded_metrics(data.names)) - {"mean_accuracy", "seconds"} - {
        f"accuracy/{n}" for n in data.names
    }


def _files(directory):
    import os

    for root, _, names in os.walk(directory):
        for name in names:
            yield os.path.join(root, name)


def test_budget():
    costs = {"parameters/a": 10.0, "parameters/b": 30.0, "latency_ms": 2.0}
    assert Budget("parameters", 30).violation(costs, ["a", "b"]) is None
    reason = Budget("parameters", 20).violation(costs, ["a", "b"])
    assert reason == "over budget: parameters b: 30 > limit 20"
    assert "latency_ms" in Budget("latency_ms", 1).violation(costs, ["a", "b"])
    with pytest.raises(ValueError, match="cost"):
        Budget("flops", 1)
    with pytest.raises(ValueError, match="limit"):
        Budget("parameters", 0)


def test_objective_names():
    assert check_metric("accuracy/b", NAMES) == "accuracy/b"
    with pytest.raises(ValueError, match=r"No trial records a metric named 'val_accuracy'.*"
                                         r"mean_accuracy"):
        check_metric("val_accuracy", NAMES)
    with pytest.raises(ValueError, match="latency_ms"):
        check_metric("latency_ms", NAMES)
    assert check_metric("latency_ms", NAMES, latency=True) == "latency_ms"


def test_latency_is_measured():
    data = tiny_data()
    model = multi_domain_base(tiny_base(data, epochs=1), data.num_classes)
    latency = swappable_latency_ms(model, repeats=5)
    assert 0 < latency < 1000 and not math.isnan(latency)
