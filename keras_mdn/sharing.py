"""Sharing strength rho of factorised layers (Yang & Hospedales 2017) and its plot.

`rho = 2 / (T (T - 1)) * sum_{i<j} cos(s_i, s_j)` over the task codes `s_i` of a layer:
0 for independent tasks, 1 for fully shared ones.
"""

import numpy as np
from keras import ops


def sharing_strength(task_factors):
    """rho of a task-code matrix `(T, E)` (rows are tasks); nan for a single task."""
    codes = np.asarray(ops.convert_to_numpy(task_factors), dtype=np.float64)
    count = codes.shape[0]
    if count < 2:
        return float("nan")
    norms = np.linalg.norm(codes, axis=1, keepdims=True)
    unit = codes / np.maximum(norms, 1e-12)
    cosines = unit @ unit.T
    upper = cosines[np.triu_indices(count, k=1)]
    return float(np.mean(upper))


def sharing_strengths(model):
    """`{layer name: rho}` for every layer of `model` (nested models too) that has tasks."""
    found = {}

    def visit(layer):
        if hasattr(layer, "sharing_strength") and getattr(layer, "num_domains", 1) > 1:
            found[layer.name] = layer.sharing_strength()
        for child in getattr(layer, "layers", []) or []:
            visit(child)

    for layer in model.layers:
        visit(layer)
    return found


def plot_sharing_strength(model_or_strengths, path=None, ax=None, title="Sharing strength"):
    """Bar plot of rho per layer, in layer order (the paper: more sharing in lower layers).

    Args:
        model_or_strengths: a Keras model, or a dict `{name: rho}` (or of `{method: {...}}`
            to compare several models side by side).
        path: file to save the figure to. Defaults to None (not saved).
        ax: matplotlib axes to draw on. Defaults to None (a new figure).
        title: axes title. Defaults to `"Sharing strength"`.

    Returns:
        The matplotlib figure.
    """
    import matplotlib

    if ax is None:
        matplotlib.use(matplotlib.get_backend() if path is None else "Agg")
    import matplotlib.pyplot as plt

    data = model_or_strengths
    if not isinstance(data, dict):
        data = sharing_strengths(data)
    series = data if data and all(isinstance(v, dict) for v in data.values()) else {"": data}
    if ax is None:
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * max(len(s) for s in series.values())), 3))
    else:
        fig = ax.figure
    width = 0.8 / len(series)
    for offset, (label, values) in enumerate(series.items()):
        positions = np.arange(len(values)) + offset * width
        ax.bar(positions, list(values.values()), width=width, label=label or None)
        ax.set_xticks(np.arange(len(values)) + 0.4 - width / 2)
        ax.set_xticklabels(list(values), rotation=30, ha="right")
    ax.set_ylabel("rho (mean task cosine)")
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), 1.0)
    ax.set_title(title)
    if len(series) > 1:
        ax.legend()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=120)
    return fig
