"""Per-trial records of a search, read from the tuner or from its directory."""

import glob
import json
import math
import os


class TrialRecord:
    """One trial of a search.

    Attributes:
        trial_id: str.
        status: `"COMPLETED"`, `"FAILED"` (a budget rejection, with its `reason`), ...
        hyperparameters: dict name -> value (active values only).
        metrics: dict name -> float (last recorded value), empty unless completed.
        reason: for a failed trial, the error message that ended it (a budget rejection:
            `"Trial rejected before training, over budget: ..."`), else "".
    """

    def __init__(self, trial_id, status, hyperparameters, metrics, reason=""):
        self.trial_id = str(trial_id)
        self.status = status
        self.hyperparameters = dict(hyperparameters)
        self.metrics = dict(metrics)
        self.reason = reason

    @property
    def completed(self):
        return self.status == "COMPLETED"

    def value(self, name):
        """The recorded metric `name`, NaN when absent."""
        return float(self.metrics.get(name, math.nan))

    def to_dict(self):
        return {
            "trial_id": self.trial_id,
            "status": self.status,
            "hyperparameters": self.hyperparameters,
            "metrics": self.metrics,
            "reason": self.reason,
        }

    def __repr__(self):
        return f"TrialRecord({self.trial_id!r}, {self.status}, {self.hyperparameters})"


def trial_records(tuner):
    """The records of every trial a tuner's oracle knows, in trial-id order."""
    return sorted(
        (_from_trial_state(trial.get_state()) for trial in tuner.oracle.trials.values()),
        key=lambda record: record.trial_id,
    )


def load_records(directory, project_name):
    """The records of a search's trials from its directory (any process, chief included)."""
    paths = sorted(glob.glob(os.path.join(directory, project_name, "trial_*", "trial.json")))
    if not paths:
        raise ValueError(
            f"No trials found under {os.path.join(directory, project_name)!r}. Received: "
            f"directory={directory!r}, project_name={project_name!r}"
        )
    records = []
    for path in paths:
        with open(path) as file:
            records.append(_from_trial_state(json.load(file)))
    return records


def _from_trial_state(state):
    metrics = {}
    for name, history in state.get("metrics", {}).get("metrics", {}).items():
        observations = history.get("observations", [])
        if observations:
            value = observations[-1]["value"]
            metrics[name] = float(value[0] if isinstance(value, list) else value)
    values = state.get("hyperparameters", {}).get("values", {})
    message = state.get("message") or ""
    lines = [line for line in message.strip().splitlines() if line.strip()]
    reason = lines[-1] if lines else ""
    # The message is a traceback; its last line is "<module>.<Error>: <reason>".
    head, _, tail = reason.partition(": ")
    if tail and head.split(".")[-1].endswith("Error"):
        reason = tail
    return TrialRecord(state["trial_id"], state["status"], values, metrics, reason)
