"""The Pareto front of a search: accuracy against per-domain cost, over all completed trials."""

import math

from keras_mdn.tuning.objectives import OBJECTIVE


class ParetoFront:
    """The completed trials no other trial beats on both accuracy and cost.

    A trial is on the front when no other trial has an objective at least as high and a cost
    at most as low, one of them strictly. Built by `pareto_front`.

    Attributes:
        objective: name of the maximised metric.
        cost: name of the minimised metric.
        points: the front's `TrialRecord`s, by increasing cost.
        records: every completed record with both metrics.
    """

    def __init__(self, points, records, objective, cost):
        self.points = points
        self.records = records
        self.objective = objective
        self.cost = cost

    def __len__(self):
        return len(self.points)

    def __iter__(self):
        return iter(self.points)

    def table(self):
        """The front as a markdown table: trial, objective, cost, seconds, design."""
        lines = [
            f"| trial | {self.objective} | {self.cost} | seconds | design |",
            "|---|---:|---:|---:|---|",
        ]
        for record in self.points:
            design = ", ".join(
                f"{name}={value}" for name, value in sorted(record.hyperparameters.items())
                if not name.startswith("tuner/")
            )
            lines.append(
                f"| {record.trial_id} | {record.value(self.objective):.4f} | "
                f"{record.value(self.cost):,.0f} | {record.value('seconds'):.1f} | {design} |"
            )
        return "\n".join(lines)

    def __str__(self):
        return self.table()

    def plot(self, path=None, reference=None, title=None):
        """Plots every trial and the front (matplotlib); returns the figure.

        Args:
            path: optional file to save the figure to.
            reference: optional dict label -> `(cost, objective)` of designs to mark (the
                hand design, fine-tuning...).
            title: optional title.
        """
        import matplotlib
        import matplotlib.ticker

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(figsize=(6, 4))
        axes.scatter(
            [r.value(self.cost) for r in self.records],
            [r.value(self.objective) for r in self.records],
            s=14, color="0.6", label="trials",
        )
        axes.step(
            [r.value(self.cost) for r in self.points],
            [r.value(self.objective) for r in self.points],
            where="post", color="C0", marker="o", label="Pareto front",
        )
        for index, (label, (cost, value)) in enumerate((reference or {}).items()):
            axes.scatter([cost], [value], marker="*", s=120, color=f"C{index + 1}", label=label)
        axes.set_xscale("log")
        axes.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        axes.set_xlabel(f"{self.cost} (per domain)")
        axes.set_ylabel(self.objective)
        if title:
            axes.set_title(title)
        axes.legend(fontsize=8)
        figure.tight_layout()
        if path is not None:
            figure.savefig(path, dpi=120)
        plt.close(figure)
        return figure

    def best_within(self, limit):
        """The front point with the highest objective whose cost is at most `limit`."""
        within = [r for r in self.points if r.value(self.cost) <= limit]
        if not within:
            raise ValueError(
                f"No front point costs at most {limit:g} {self.cost}; the cheapest costs "
                f"{self.points[0].value(self.cost):g}. Received: limit={limit!r}"
            )
        return within[-1]

    def model(self, tuner, point):
        """The trained model of a front point, ready for `keras_mdn.export`.

        Args:
            tuner: the tuner that ran the search (or one reloaded from its directory).
            point: a `TrialRecord` of the front, or its trial id.
        """
        trial_id = point if isinstance(point, str) else point.trial_id
        if trial_id not in {r.trial_id for r in self.points}:
            raise ValueError(
                f"Trial {trial_id!r} is not on the front; front trials: "
                f"{[r.trial_id for r in self.points]}. Received: point={point!r}"
            )
        return tuner.load_model(tuner.oracle.get_trial(trial_id))


def pareto_front(records, objective=OBJECTIVE, cost="parameters"):
    """The Pareto front of completed trials: `objective` maximised, `cost` minimised.

    Args:
        records: `TrialRecord`s (`keras_mdn.tuning.trial_records(tuner)` or `load_records`).
        objective: metric to maximise. Defaults to `"mean_accuracy"`.
        cost: metric to minimise: `"parameters"`, `"pack_bytes"`, `"latency_ms"`, `"seconds"`
            or a per-domain `"parameters/<domain>"`. Defaults to `"parameters"`.

    Returns:
        A `ParetoFront`.
    """
    completed = [r for r in records if r.completed]
    if not completed:
        raise ValueError(
            f"No completed trial to build a front from. Received: {len(records)} records "
            f"with statuses {sorted({r.status for r in records})}"
        )
    recorded = sorted({name for r in completed for name in r.metrics})
    for name, role in ((objective, "objective"), (cost, "cost")):
        if name not in recorded:
            raise ValueError(
                f"No trial records a metric named {name!r} (the {role}). Trials record: "
                f"{recorded}. Received: {role}={name!r}"
            )
    usable = [
        r for r in completed
        if not math.isnan(r.value(objective)) and not math.isnan(r.value(cost))
    ]
    # Sweep by increasing cost (ties: best objective first); a point is on the front when it
    # beats every cheaper point's objective, or ties the front's last point exactly.
    ordered = sorted(usable, key=lambda r: (r.value(cost), -r.value(objective), r.trial_id))
    points, best = [], None
    for record in ordered:
        key = (record.value(cost), record.value(objective))
        if best is None or key[1] > best[1] or key == best:
            points.append(record)
            if best is None or key[1] > best[1]:
                best = key
    return ParetoFront(points, usable, objective, cost)
