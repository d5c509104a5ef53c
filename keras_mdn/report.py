"""Parameter report of a multi-domain model: shared vs per-domain, trainable or not, cost."""

import numpy as np

from keras_mdn.layers.domain_layer import count_domains
from keras_mdn.surgery.ownership import model_ownership


def parameter_report(model):
    """Counts a multi-domain model's parameters per layer and per domain.

    Every weight is either shared by all domains or split into per-domain blocks (a table
    with one row per domain, or a head's columns), as its layer says
    (`DomainLayer.domain_variables`, read through `keras_mdn.surgery.ownership`); a
    table's entries are counted for the domain that owns them. Moving statistics of batch
    norms are reported apart ("statistics") and are not counted as parameters. A weight is
    trainable when it is in `model.trainable_weights`; under per-domain freezing
    (`keras_mdn.surgery.train_only_domains`) only the entries of the trained domains count as
    trainable.

    One network is the shared parameters plus one domain's (the mean over domains, which
    differ only when their heads do), so the cost of the model is `total / one_network`
    networks (MISSION §1: parallel adapters on ResNet-26 cost about 2x for 10 domains).

    Args:
        model: a built Keras model (multi-domain or not).

    Returns:
        A `ParameterReport`: `print(report)` shows the table; `report.to_dict()` and
        `report.to_markdown()` give the same numbers for benchmarks.

    Example:

    >>> report = parameter_report(keras_mdn.models.resnet26([10] * 10, adapter="parallel"))
    >>> print(report)
    >>> report.cost_multiple  # about 1.9
    """
    return ParameterReport(model)


class ParameterReport:
    """Per-weight, per-layer and per-domain parameter counts of a model.

    Attributes:
        num_domains: number of domains (1 for a model without per-domain layers).
        weights: one dict per weight: `layer`, `weight`, `shape`, `shared`, `statistic`,
            `count`, `per_domain` (list, zeros for a shared weight), `trainable` (number of
            trainable entries).
        layers: one dict per layer: `layer`, `type`, `shared`, `per_domain` (list),
            `statistics` (per domain, list), `trainable`.
        domains: one dict per domain: `domain`, `parameters`, `trainable`, `statistics`.
        shared: shared parameters. shared_trainable: those of them that are trainable.
        total: all parameters (shared + every domain's).
        trainable: trainable parameters.
        one_network: shared + mean per-domain parameters.
        cost_multiple: `total / one_network`.
    """

    def __init__(self, model):
        self.model_name = model.name
        self.num_domains = max(count_domains(model), 1)
        trainable_ids = {id(v) for v in model.trainable_weights}
        self.weights = []
        for entry in model_ownership(model):
            variable = entry.variable
            per_domain = [entry.domain_size(d) for d in range(self.num_domains)]
            trainable_mask = _trainable_mask(variable, id(variable) in trainable_ids)
            row = {
                "layer": entry.layer.name,
                "type": type(entry.layer).__name__,
                "weight": entry.name,
                "shape": tuple(int(s) for s in variable.shape),
                "shared": entry.shared,
                "statistic": entry.statistic,
                "count": entry.size,
                "per_domain": per_domain,
                "trainable": int(trainable_mask.sum()),
                "trainable_per_domain": [
                    int((trainable_mask & entry.domain_mask([d])).sum()) if not entry.shared else 0
                    for d in range(self.num_domains)
                ],
            }
            self.weights.append(row)
        parameters = [w for w in self.weights if not w["statistic"]]
        statistics = [w for w in self.weights if w["statistic"]]
        self.shared = sum(w["count"] for w in parameters if w["shared"])
        self.shared_trainable = sum(w["trainable"] for w in parameters if w["shared"])
        self.domains = [
            {
                "domain": d,
                "parameters": sum(w["per_domain"][d] for w in parameters),
                "trainable": sum(w["trainable_per_domain"][d] for w in parameters),
                "statistics": sum(w["per_domain"][d] for w in statistics),
            }
            for d in range(self.num_domains)
        ]
        self.total = self.shared + sum(d["parameters"] for d in self.domains)
        self.trainable = sum(w["trainable"] for w in parameters)
        self.statistics = sum(w["count"] for w in statistics)
        self.one_network = self.shared + float(np.mean([d["parameters"] for d in self.domains]))
        self.cost_multiple = self.total / self.one_network if self.one_network else 0.0
        self.layers = []
        by_layer = {}
        for w in self.weights:
            row = by_layer.get(w["layer"])
            if row is None:
                row = by_layer[w["layer"]] = {
                    "layer": w["layer"],
                    "type": w["type"],
                    "shared": 0,
                    "per_domain": [0] * self.num_domains,
                    "statistics": [0] * self.num_domains,
                    "trainable": 0,
                }
                self.layers.append(row)
            if w["statistic"]:
                row["statistics"] = [a + b for a, b in zip(row["statistics"], w["per_domain"])]
                continue
            if w["shared"]:
                row["shared"] += w["count"]
            row["per_domain"] = [a + b for a, b in zip(row["per_domain"], w["per_domain"])]
            row["trainable"] += w["trainable"]

    def multiple_of(self, parameters):
        """The model's total parameters as a multiple of `parameters` (e.g. a base network)."""
        return self.total / parameters

    def to_dict(self):
        """The report as plain Python data (JSON-serialisable)."""
        return {
            "model": self.model_name,
            "num_domains": self.num_domains,
            "shared": self.shared,
            "shared_trainable": self.shared_trainable,
            "domains": [dict(d) for d in self.domains],
            "total": self.total,
            "trainable": self.trainable,
            "statistics": self.statistics,
            "one_network": self.one_network,
            "cost_multiple": self.cost_multiple,
            "layers": [dict(row) for row in self.layers],
        }

    def _tables(self):
        layer_rows = [
            [
                row["layer"],
                row["type"],
                f"{row['shared']:,}",
                _per_domain_text(row["per_domain"]),
                _per_domain_text(row["statistics"]),
                f"{row['trainable']:,}",
            ]
            for row in self.layers
            if row["shared"] or any(row["per_domain"]) or any(row["statistics"])
        ]
        layer_header = ["Layer", "Type", "Shared", "Per domain", "Statistics/domain", "Trainable"]
        domain_rows = [
            [
                str(d["domain"]),
                f"{d['parameters']:,}",
                f"{d['trainable']:,}",
                f"{d['statistics']:,}",
            ]
            for d in self.domains
        ]
        domain_header = ["Domain", "Parameters", "Trainable", "Statistics"]
        return (layer_header, layer_rows), (domain_header, domain_rows)

    def summary_lines(self):
        fraction = 100.0 * self.trainable / self.total if self.total else 0.0
        return [
            f"shared parameters: {self.shared:,} (trainable: {self.shared_trainable:,})",
            f"per-domain parameters: {_per_domain_text([d['parameters'] for d in self.domains])}"
            f" (x {self.num_domains} domains)",
            f"one network (shared + one domain): {self.one_network:,.0f}",
            f"{self.num_domains} domains: {self.total:,} parameters = "
            f"{self.cost_multiple:.3f}x one network",
            f"trainable params: {self.trainable:,} || all params: {self.total:,} || "
            f"trainable%: {fraction:.4f}",
        ]

    def to_markdown(self):
        """The report as markdown tables (per layer, per domain) and summary lines."""
        parts = [f"Parameters of `{self.model_name}`", ""]
        for header, rows in self._tables():
            parts.append("| " + " | ".join(header) + " |")
            parts.append("|" + "|".join(["---"] * len(header)) + "|")
            parts += ["| " + " | ".join(row) + " |" for row in rows]
            parts.append("")
        parts += [f"- {line}" for line in self.summary_lines()]
        return "\n".join(parts)

    def __str__(self):
        parts = [f'Parameters of "{self.model_name}"']
        for (header, rows), text_columns in zip(self._tables(), (2, 1)):
            widths = [max(len(str(c)) for c in column) for column in zip(header, *rows)]
            line = "  ".join(
                h.ljust(w) if i < text_columns else h.rjust(w)
                for i, (h, w) in enumerate(zip(header, widths))
            )
            parts += [line, "-" * len(line)]
            parts += [
                "  ".join(
                    c.ljust(w) if i < text_columns else c.rjust(w)
                    for i, (c, w) in enumerate(zip(row, widths))
                )
                for row in rows
            ]
            parts.append("")
        return "\n".join(parts + self.summary_lines())

    def __repr__(self):
        return (
            f"<ParameterReport {self.model_name!r}: shared={self.shared}, "
            f"domains={self.num_domains}, total={self.total}, "
            f"cost_multiple={self.cost_multiple:.3f}>"
        )


def _trainable_mask(variable, trainable):
    """Entries of `variable` that training updates (per-domain freezing keeps the others)."""
    shape = tuple(variable.shape)
    if not trainable:
        return np.zeros(shape, dtype=bool)
    mask = getattr(variable.constraint, "trainable_mask", None)
    if mask is None:
        return np.ones(shape, dtype=bool)
    return np.broadcast_to(np.asarray(mask, dtype=bool), shape)


def _per_domain_text(values):
    values = list(values)
    if len(set(values)) == 1:
        return f"{values[0]:,}"
    return " / ".join(f"{v:,}" for v in values)
