"""What a trial costs per domain, budgets on those costs, and the objective names trials record.

KerasTuner sums a list of objectives into one number, so the question "accuracy against
per-domain cost" is answered in two ways: a scalar objective (the mean accuracy) searched
under a `Budget` that rejects a trial before it trains, and the Pareto front of all recorded
trials (`keras_mdn.tuning.pareto`).

Every completed trial records these metrics (all floats, stored by the oracle):

- `"mean_accuracy"`: mean over domains of the accuracy on the evaluation split (the objective);
- `"accuracy/<domain>"`: each domain's accuracy;
- `"parameters"` and `"parameters/<domain>"`: per-domain parameters (`parameter_report`),
  the mean over domains and each domain's;
- `"pack_bytes"` and `"pack_bytes/<domain>"`: bytes of each domain's swappable pack
  (`keras_mdn.export`), when the model has a swappable form;
- `"latency_ms"`: LiteRT latency of the swappable model (batch 1), only when a budget asks;
- `"seconds"`: wall time of the trial's training and evaluation.
"""

import math
import tempfile
import time

import numpy as np

from keras_mdn.report import parameter_report

OBJECTIVE = "mean_accuracy"
COSTS = ("parameters", "pack_bytes", "latency_ms")


def recorded_metrics(domain_names, latency=False):
    """The names of the metrics every completed trial records (see the module docstring)."""
    names = [OBJECTIVE, "parameters", "pack_bytes", "seconds"]
    names += [f"accuracy/{d}" for d in domain_names]
    names += [f"parameters/{d}" for d in domain_names]
    names += [f"pack_bytes/{d}" for d in domain_names]
    if latency:
        names.append("latency_ms")
    return names


def check_metric(name, domain_names, what="objective", latency=False):
    """Raises `ValueError` unless trials record a metric called `name`."""
    known = recorded_metrics(domain_names, latency=latency)
    if name not in known:
        raise ValueError(
            f"No trial records a metric named {name!r}, so it cannot be the {what}. "
            f"Trials record: {known}. Received: {what}={name!r}"
        )
    return name


class Budget:
    """An upper limit on one per-domain cost; a trial over it is rejected before it trains.

    Args:
        cost: `"parameters"` (per-domain parameters, `parameter_report`), `"pack_bytes"`
            (bytes of a domain's swappable pack) or `"latency_ms"` (LiteRT latency of the
            swappable model at batch 1, measured on this machine: slow, an export per trial).
        limit: positive number; every domain must cost at most this much.

    Example:

    >>> hypermodel = MultiDomainHyperModel(base, data, budget=Budget("parameters", 20_000))
    """

    def __init__(self, cost, limit):
        if cost not in COSTS:
            raise ValueError(f"`cost` must be one of {COSTS}. Received: cost={cost!r}")
        if isinstance(limit, bool) or not isinstance(limit, (int, float)) or not limit > 0:
            raise ValueError(f"`limit` must be a positive number. Received: limit={limit!r}")
        self.cost = cost
        self.limit = float(limit)

    def violation(self, costs, domain_names):
        """The reason `costs` (from `trial_costs`) break the budget, or None."""
        if self.cost == "latency_ms":
            values = {"all domains": costs["latency_ms"]}
        else:
            values = {d: costs[f"{self.cost}/{d}"] for d in domain_names}
        over = {d: v for d, v in values.items() if not v <= self.limit}
        if not over:
            return None
        shown = ", ".join(f"{d}: {v:g}" for d, v in over.items())
        return f"over budget: {self.cost} {shown} > limit {self.limit:g}"

    def __repr__(self):
        return f"Budget({self.cost!r}, {self.limit:g})"


def trial_costs(model, domain_names, latency=False):
    """Per-domain parameters and pack bytes of a multi-domain model (untrained is fine).

    Args:
        model: the trial's multi-domain model.
        domain_names: one name per domain.
        latency: also measure the LiteRT latency (`"latency_ms"`) of the swappable export.

    Returns:
        dict of floats with the keys `"parameters"`, `"parameters/<domain>"`,
        `"pack_bytes"`, `"pack_bytes/<domain>"` (NaN when the model has no swappable form)
        and, with `latency`, `"latency_ms"`.
    """
    report = parameter_report(model)
    costs = {}
    per_domain = [row["parameters"] for row in report.domains]
    for name, count in zip(domain_names, per_domain, strict=True):
        costs[f"parameters/{name}"] = float(count)
    costs["parameters"] = float(np.mean(per_domain))
    pack_bytes = _pack_bytes(model, domain_names)
    for name, size in zip(domain_names, pack_bytes, strict=True):
        costs[f"pack_bytes/{name}"] = size
    costs["pack_bytes"] = float(np.mean(pack_bytes))
    if latency:
        costs["latency_ms"] = swappable_latency_ms(model)
    return costs


def _pack_bytes(model, domain_names):
    try:
        from keras_mdn.export import packs
        from keras_mdn.export.swappable import SwappablePlan

        plan = SwappablePlan(model)
    except (ImportError, ValueError, NotImplementedError, TypeError):
        return [math.nan] * len(domain_names)
    return [
        float(packs.Pack(plan.model_id, d, name, plan.pack_tensors(d),
                         num_classes=plan.num_classes(d)).nbytes())
        for d, name in enumerate(domain_names)
    ]


def swappable_latency_ms(model, repeats=50):
    """Median LiteRT latency (ms, batch 1) of `model`'s swappable export, domain 0."""
    from keras_mdn.export import load
    from keras_mdn.export.tflite import export_swappable_tflite

    with tempfile.TemporaryDirectory() as directory:
        written = export_swappable_tflite(model, directory, domains=[0])
        runner = load(written["base"], layout="swappable")
        runner.load_pack(written["packs"][0])
        shape = tuple(int(s) for s in model.inputs[0].shape[1:])
        images = np.zeros((1, *shape), dtype=np.float32)
        runner.predict(images, domain=0)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            runner.predict(images, domain=0)
            times.append(time.perf_counter() - start)
    return float(np.median(times) * 1000.0)
