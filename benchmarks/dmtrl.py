"""DMTRL benchmark (Yang & Hospedales, ICLR 2017): single-task vs hard sharing vs DMTRL.

Regenerate (measured: 1,414 s on 2 CPU cores shared with other jobs at load ~12; the time limit
stops starting new settings after 25 minutes; `--quick` is a smoke run of a few minutes):

    timeout 1800 python benchmarks/dmtrl.py --time-limit 1500

(a) scikit-learn's 8x8 digits as 10 one-vs-all binary tasks with few training examples per
task (a sweep of training sizes, several seeds); (b) Omniglot small1, each of its 5 alphabets
a task over its own characters. Methods, each with the same step budget, batch and optimiser:

- `stl`: one network per task (trained as one model of independent per-task layers),
- `stl_2x`: the same networks trained for twice the budget (DMTRL sees the STL budget as
  its initialisation plus its own budget, so this is the matching control),
- `hard`: shared hidden layers, per-task output layer,
- `laf`, `tucker`, `tt`: every layer a `FactorizedDense` / `FactorizedConv2D` over the tasks,
  initialised from the trained STL networks with `from_layers(..., eps=...)` (ranks from
  the relative-error threshold, as in the authors' code), then trained end to end.

Writes benchmarks/results/dmtrl.{md,json} and dmtrl_*.png.
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from dmtrl_layers import PerTaskConv2D, PerTaskDense, TaskLogitMask  # noqa: E402

from keras_mdn import FactorizedConv2D, FactorizedDense  # noqa: E402
from keras_mdn.ops.decomposition import Tolerance  # noqa: E402

REGENERATE = "timeout 1800 python benchmarks/dmtrl.py --time-limit 1500"
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
OMNIGLOT_ZIP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "..", "shared", "data", "omniglot", "images_background_small1.zip")
DMTRL = ("laf", "tucker", "tt")
METHODS = ("stl", "stl_2x", "hard") + DMTRL
LABELS = {"stl": "STL", "stl_2x": "STL (2x steps)", "hard": "hard sharing",
          "laf": "DMTRL-LAF", "tucker": "DMTRL-Tucker", "tt": "DMTRL-TT"}


# === Training helpers ===


def fit(model, inputs, labels, loss, steps, batch_size, learning_rate, seed, tasks=None):
    """Exactly `steps` Adam steps over reshuffled epochs of the data, one quiet `fit` call.

    With `tasks` (the task id of every example), every batch holds one task, tasks taken in
    turn (a shuffled order per round), each task's examples reshuffled per epoch of its own;
    the factorised layers then run their uniform-task path (one kernel per batch).
    """
    if not model.compiled:  # a second call continues training (same optimiser, no retrace)
        model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss=loss)
    rng = np.random.default_rng(seed)

    def epochs(members, count):
        order = np.concatenate([rng.permutation(members)
                                for _ in range(-(-count // len(members)))])
        return order[:count]

    if tasks is None:
        order = epochs(np.arange(len(labels)), steps * batch_size)
    else:
        ids = np.unique(tasks)
        rounds = -(-steps // len(ids))
        streams = {t: iter(epochs(np.flatnonzero(tasks == t), rounds * batch_size).reshape(
            rounds, batch_size)) for t in ids}
        batches = [next(streams[t]) for _ in range(rounds) for t in rng.permutation(ids)]
        order = np.concatenate(batches[:steps])
    model.fit({k: v[order] for k, v in inputs.items()}, labels[order], batch_size=batch_size,
              epochs=1, shuffle=False, verbose=0)


def factorized_layers(model):
    return [layer for layer in model.layers
            if isinstance(layer, (FactorizedDense, FactorizedConv2D))]


def sharing(model):
    return {layer.name: round(float(layer.sharing_strength()), 4)
            for layer in factorized_layers(model)}


def ranks(model):
    return {layer.name: list(layer.factorization.rank) for layer in factorized_layers(model)}


def factorize(per_task_layer, kind, eps, name, batch_size):
    """`from_layers` on the T plain Keras layers holding the STL network's weights.

    `eps` is a `Tolerance` (threshold and its semantics, `"frobenius"` or `"authors"`).
    """
    layers = per_task_layer.to_keras_layers()
    if isinstance(per_task_layer, PerTaskConv2D):
        return FactorizedConv2D.from_layers(layers, factorization=kind, eps=eps, name=name)
    return FactorizedDense.from_layers(layers, factorization=kind, eps=eps, name=name,
                                       batch_size_hint=batch_size)


def parameter_count(model):
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


# === (a) Digits, 10 one-vs-all tasks ===


def digits_arrays():
    from keras_mdn.datasets import load_digits_domains

    data = load_digits_domains(image_size=None, domains=["original"])
    x_train, y_train = data.arrays("train", 0)
    x_test, y_test = data.arrays("test", 0)
    return (x_train.reshape(len(x_train), -1), y_train, x_test.reshape(len(x_test), -1), y_test)


def sample_one_vs_all(y_train, size, seed, num_tasks=10):
    """Per task: `size // 2` positives (digit t) and the rest negatives (other digits)."""
    rng = np.random.default_rng(seed)
    index, task, label = [], [], []
    for t in range(num_tasks):
        positives = rng.choice(np.flatnonzero(y_train == t), size // 2, replace=False)
        negatives = rng.choice(np.flatnonzero(y_train != t), size - size // 2, replace=False)
        index += [positives, negatives]
        task.append(np.full(size, t))
        label += [np.ones(len(positives)), np.zeros(len(negatives))]
    return (np.concatenate(index), np.concatenate(task).astype("int32"),
            np.concatenate(label).astype("float32"))


def mlp(method, num_tasks, hidden, stl=None, eps=None, batch_size=64):
    features = keras.Input((64,), name="features")
    domain = keras.Input((), dtype="int32", name="domain")
    x = features
    widths = tuple(hidden) + (1,)
    for depth, units in enumerate(widths):
        name = f"dense_{depth}"
        activation = "relu" if depth < len(hidden) else None
        if method == "stl" or (method == "hard" and depth == len(hidden)):
            x = PerTaskDense(units, num_tasks, activation=activation, name=name)(x, domain=domain)
        elif method == "hard":
            x = keras.layers.Dense(units, activation=activation, name=name)(x)
        else:
            x = factorize(stl.get_layer(name), method, eps, name, batch_size)(x, domain=domain)
    return keras.Model({"features": features, "domain": domain}, x)


def digits_errors(model, x_test, y_test, num_tasks=10):
    """Balanced error (mean of the miss and false-alarm rates) and plain error, task means."""
    count = len(y_test)
    logits = keras.ops.convert_to_numpy(model(  # eager: no predict function to trace
        {"features": np.tile(x_test, (num_tasks, 1)),
         "domain": np.repeat(np.arange(num_tasks, dtype="int32"), count)},
        training=False)).reshape(num_tasks, count)
    balanced, plain = [], []
    for t in range(num_tasks):
        truth, guess = y_test == t, logits[t] > 0
        balanced.append(0.5 * (np.mean(~guess[truth]) + np.mean(guess[~truth])))
        plain.append(np.mean(guess != truth))
    return float(np.mean(balanced)), float(np.mean(plain))


def out_of_time(args):
    return args.time_limit and time.perf_counter() - START > args.time_limit


def run_digits(args, progress):
    x_train, y_train, x_test, y_test = digits_arrays()
    loss = keras.losses.BinaryCrossentropy(from_logits=True)
    runs = []
    for seed in args.seeds:  # seed-major: a time limit leaves whole sweeps
        for size in args.sizes:
            if out_of_time(args):
                print(f"time limit: skipping size={size} seed={seed}", flush=True)
                continue
            index, task, label = sample_one_vs_all(y_train, size, seed)
            inputs = {"features": x_train[index], "domain": task}
            label = label[:, None]
            results = {}
            for method in ("stl", "hard"):
                keras.utils.set_random_seed(seed)
                model = mlp(method, 10, args.hidden)
                start = time.perf_counter()
                fit(model, inputs, label, loss, args.steps, args.batch_size, args.lr, seed)
                results[method] = (model, time.perf_counter() - start)
            stl_model = results["stl"][0]
            for method in ("stl", "hard"):
                model, seconds = results[method]
                balanced, plain = digits_errors(model, x_test, y_test)
                runs.append({"size": size, "seed": seed, "method": method, "error": balanced,
                             "plain_error": plain, "train_seconds": round(seconds, 2),
                             "parameters": parameter_count(model)})
            trained = {}  # (method, ranks) -> run: equal ranks give the same network
            for tolerance in tolerances(args):
                for method in args.methods:
                    keras.utils.set_random_seed(seed)
                    model = mlp(method, 10, args.hidden, stl=stl_model, eps=tolerance,
                                batch_size=args.batch_size)
                    key = (method, json.dumps(ranks(model)))
                    tag = {"size": size, "seed": seed, "eps": tolerance.eps,
                           "eps_mode": tolerance.mode}
                    if key in trained:
                        runs.append({**trained[key], **tag, "same_ranks_as": trained[key]["eps"]})
                        continue
                    init = {"rho_init": sharing(model), "ranks": ranks(model),
                            "error_init": digits_errors(model, x_test, y_test)[0]}
                    start = time.perf_counter()
                    fit(model, inputs, label, loss, args.steps, args.batch_size, args.lr, seed)
                    seconds = time.perf_counter() - start
                    balanced, plain = digits_errors(model, x_test, y_test)
                    trained[key] = {**tag, "method": method, "error": balanced,
                                    "plain_error": plain, "train_seconds": round(seconds, 2),
                                    "parameters": parameter_count(model), **init,
                                    "rho": sharing(model)}
                    runs.append(trained[key])
                    progress(runs)
            # The matching control: STL trained for the STL budget plus the DMTRL budget.
            start = time.perf_counter()
            fit(stl_model, inputs, label, loss, args.steps, args.batch_size, args.lr, seed + 1)
            balanced, plain = digits_errors(stl_model, x_test, y_test)
            runs.append({"size": size, "seed": seed, "method": "stl_2x", "error": balanced,
                         "plain_error": plain,
                         "train_seconds": round(time.perf_counter() - start, 2),
                         "parameters": parameter_count(stl_model)})
            line = "  ".join(f"{variant(r)}={r['error']:.3f}" for r in runs
                             if r["size"] == size and r["seed"] == seed)
            print(f"digits size={size} seed={seed}: {line}", flush=True)
            progress(runs)
            keras.backend.clear_session()
    return runs


# === (b) Omniglot small1, 5 alphabets ===


def cnn(method, num_classes, filters, stl=None, eps=None, batch_size=64):
    num_tasks, width = len(num_classes), max(num_classes)
    image = keras.Input((28, 28, 1), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    x = image
    for depth, count in enumerate(filters):
        name = f"conv_{depth}"
        if method == "stl":
            x = PerTaskConv2D(count, 3, num_tasks, activation="relu", name=name)(x, domain=domain)
        elif method == "hard":
            x = keras.layers.Conv2D(count, 3, padding="same", activation="relu", name=name)(x)
        else:
            x = factorize(stl.get_layer(name), method, eps, name, batch_size)(x, domain=domain)
        x = keras.layers.MaxPooling2D(2)(x)
    x = keras.layers.Flatten()(x)
    for depth, (units, activation) in enumerate(((64, "relu"), (width, None))):
        name = f"dense_{depth}"
        if method == "stl" or (method == "hard" and depth == 1):
            x = PerTaskDense(units, num_tasks, activation=activation, name=name)(x, domain=domain)
        elif method == "hard":
            x = keras.layers.Dense(units, activation=activation, name=name)(x)
        else:
            x = factorize(stl.get_layer(name), method, eps, name, batch_size)(x, domain=domain)
    logits = TaskLogitMask(num_classes, name="mask")(x, domain=domain)
    return keras.Model({"image": image, "domain": domain}, logits)


def omniglot_error(model, images, domains, labels, num_tasks):
    logits = np.concatenate([keras.ops.convert_to_numpy(model(
        {"image": images[domains == t], "domain": domains[domains == t]}, training=False))
        for t in range(num_tasks)])
    labels = np.concatenate([labels[domains == t] for t in range(num_tasks)])
    domains = np.sort(domains)
    wrong = np.argmax(logits, axis=-1) != labels
    return float(np.mean([np.mean(wrong[domains == t]) for t in range(num_tasks)]))


def run_omniglot(args, progress):
    from keras_mdn.datasets import load_omniglot_domains

    data = load_omniglot_domains(args.omniglot, image_size=28)
    num_classes = list(data.num_classes)
    num_tasks = len(num_classes)
    x_all, d_all, y_all = data.as_numpy("train")
    x_test, d_test, y_test = data.as_numpy("test")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    runs = []
    for seed in args.omniglot_seeds:
        for drawings in args.omniglot_drawings:
            if out_of_time(args):
                print(f"time limit: skipping drawings={drawings} seed={seed}", flush=True)
                continue
            # `drawings` of the 12 training drawings of every character, chosen by seed.
            rng = np.random.default_rng(seed)
            keep = []
            for t in range(num_tasks):
                for c in range(num_classes[t]):
                    members = np.flatnonzero((d_all == t) & (y_all == c))
                    keep.append(rng.choice(members, drawings, replace=False))
            keep = np.sort(np.concatenate(keep))
            inputs = {"image": x_all[keep], "domain": d_all[keep]}
            labels = y_all[keep]
            results = {}
            for method in ("stl", "hard"):
                keras.utils.set_random_seed(seed)
                model = cnn(method, num_classes, args.filters)
                start = time.perf_counter()
                fit(model, inputs, labels, loss, args.omniglot_steps,
                    args.omniglot_batch_size, args.omniglot_lr, seed, tasks=inputs["domain"])
                results[method] = (model, time.perf_counter() - start)
            stl_model = results["stl"][0]
            for method in ("stl", "hard"):
                model, seconds = results[method]
                runs.append({"drawings": drawings, "seed": seed, "method": method,
                             "error": omniglot_error(model, x_test, d_test, y_test, num_tasks),
                             "train_seconds": round(seconds, 2),
                             "parameters": parameter_count(model)})
            trained = {}
            for tolerance in tolerances(args):
                for method in args.methods:
                    keras.utils.set_random_seed(seed)
                    model = cnn(method, num_classes, args.filters, stl=stl_model, eps=tolerance,
                                batch_size=args.omniglot_batch_size)
                    key = (method, json.dumps(ranks(model)))
                    tag = {"drawings": drawings, "seed": seed, "eps": tolerance.eps,
                           "eps_mode": tolerance.mode}
                    if key in trained:
                        runs.append({**trained[key], **tag, "same_ranks_as": trained[key]["eps"]})
                        continue
                    init = {"rho_init": sharing(model), "ranks": ranks(model), "error_init":
                            omniglot_error(model, x_test, d_test, y_test, num_tasks)}
                    start = time.perf_counter()
                    fit(model, inputs, labels, loss, args.omniglot_steps,
                        args.omniglot_batch_size, args.omniglot_lr, seed,
                        tasks=inputs["domain"])
                    trained[key] = {
                        **tag, "method": method,
                        "error": omniglot_error(model, x_test, d_test, y_test, num_tasks),
                        "train_seconds": round(time.perf_counter() - start, 2),
                        "parameters": parameter_count(model), **init, "rho": sharing(model)}
                    runs.append(trained[key])
                    progress(runs, data.names, num_classes)
            start = time.perf_counter()
            fit(stl_model, inputs, labels, loss, args.omniglot_steps, args.omniglot_batch_size,
                args.omniglot_lr, seed + 1, tasks=inputs["domain"])
            runs.append({"drawings": drawings, "seed": seed, "method": "stl_2x",
                         "error": omniglot_error(stl_model, x_test, d_test, y_test, num_tasks),
                         "train_seconds": round(time.perf_counter() - start, 2),
                         "parameters": parameter_count(stl_model)})
            line = "  ".join(f"{variant(r)}={r['error']:.3f}" for r in runs
                             if r["drawings"] == drawings and r["seed"] == seed)
            print(f"omniglot drawings={drawings} seed={seed}: {line}", flush=True)
            progress(runs, data.names, num_classes)
            keras.backend.clear_session()
    return runs, data.names, num_classes


# === Summaries, report and plots ===


def tolerances(args):
    return [Tolerance(eps, mode) for mode in args.eps_mode for eps in args.eps]


def variant(run):
    """The method, with its threshold for DMTRL runs: `tucker a0.3` (authors), `tt f0.5`."""
    if "eps" not in run:
        return run["method"]
    return f"{run['method']} {run['eps_mode'][0]}{run['eps']:g}"


def variant_label(name):
    method, _, threshold = name.partition(" ")
    if not threshold:
        return LABELS[method]
    mode = {"a": "authors", "f": "frobenius"}[threshold[0]]
    return f"{LABELS[method]} ({mode} {threshold[1:]})"


def variants(runs):
    """Variant names in a stable order: baselines, then DMTRL by kind, mode and eps."""
    names = {variant(r) for r in runs}
    order = [m for m in ("stl", "stl_2x", "hard") if m in names]
    dmtrl = sorted((r["method"], r["eps_mode"], r["eps"]) for r in runs if "eps" in r)
    for method, mode, eps in dmtrl:
        name = variant({"method": method, "eps_mode": mode, "eps": eps})
        if name not in order:
            order.append(name)
    return order


def summarize(runs, key):
    """{setting: {variant: {"mean", "std", "n"}}} of the error."""
    table = {}
    for setting in sorted({r[key] for r in runs}):
        table[setting] = {}
        for name in variants(runs):
            errors = [r["error"] for r in runs if r[key] == setting and variant(r) == name]
            if errors:
                table[setting][name] = {"mean": float(np.mean(errors)),
                                        "std": float(np.std(errors)), "n": len(errors)}
    return table


def mean_rho(runs, key, setting, field="rho", names=None):
    """{label: {layer: mean rho over seeds}} for one setting."""
    out = {}
    for name in names or [v for v in variants(runs) if " " in v]:
        chosen = [r[field] for r in runs if r[key] == setting and variant(r) == name]
        if chosen:
            out[variant_label(name)] = {layer: float(np.mean([c[layer] for c in chosen]))
                                        for layer in chosen[0]}
    return out


def rank_summary(runs, key, setting):
    """{variant: {layer: "r / r'"}} (distinct ranks over seeds) for one setting."""
    out = {}
    for name in [v for v in variants(runs) if " " in v]:
        chosen = [r["ranks"] for r in runs if r[key] == setting and variant(r) == name]
        if not chosen:
            continue
        out[name] = {}
        for layer in chosen[0]:
            values = sorted({tuple(c[layer]) for c in chosen})
            out[name][layer] = " / ".join(str(v) for v in values)
    return out


def error_table(table, key_name):
    """Rows: one per variant; columns: settings (the sweep reads down a column)."""
    settings = list(table)
    names = variants_of(table)
    lines = ["| method | " + " | ".join(f"{key_name} {s}" for s in settings) + " |",
             "|" + "---|" * (len(settings) + 1)]
    best = {s: min(v["mean"] for v in table[s].values()) for s in settings}
    for name in names:
        cells = []
        for s in settings:
            v = table[s].get(name)
            if v is None:
                cells.append("-")
                continue
            text = f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f} ({v['n']})"
            cells.append(f"**{text}**" if v["mean"] == best[s] else text)
        lines.append(f"| {variant_label(name)} | " + " | ".join(cells) + " |")
    return lines


def variants_of(table):
    names = []
    for row in table.values():
        names += [n for n in row if n not in names]
    return names


def rho_table(runs, key, settings):
    lines = []
    for setting in settings:
        final, init = mean_rho(runs, key, setting), mean_rho(runs, key, setting, "rho_init")
        if not final:
            continue
        layers = list(next(iter(final.values())))
        lines.append(f"{key} = {setting}: rho after training (at initialisation)\n")
        lines.append("| method | " + " | ".join(layers) + " |")
        lines.append("|" + "---|" * (len(layers) + 1))
        for method, values in final.items():
            cells = [f"{values[lay]:.3f} ({init[method][lay]:.3f})" for lay in layers]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def rank_table(runs, key, settings):
    lines = []
    for setting in settings:
        summary = rank_summary(runs, key, setting)
        if not summary:
            continue
        layers = list(next(iter(summary.values())))
        lines.append(f"{key} = {setting} (distinct ranks over seeds)\n")
        lines.append("| method | " + " | ".join(layers) + " |")
        lines.append("|" + "---|" * (len(layers) + 1))
        for name, values in summary.items():
            lines.append(f"| {variant_label(name)} | "
                         + " | ".join(values[lay] for lay in layers) + " |")
        lines.append("")
    return lines


def plot(digits_table, omniglot_table, digits_runs, omniglot_runs, prefix):
    """Error vs training size: one panel per DMTRL kind (its eps values) against STL/hard."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    from keras_mdn.sharing import plot_sharing_strength

    panels = [(t, k, m) for t, k in ((digits_table, "digits"), (omniglot_table, "omniglot"))
              if t for m in DMTRL if any(n.split(" ")[0] == m for n in variants_of(t))]
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 4), squeeze=False)
    for ax, (table, name, kind) in zip(axes[0], panels):
        settings = list(table)
        for variant_name in variants_of(table):
            if " " in variant_name and variant_name.split(" ")[0] != kind:
                continue
            points = [(s, 100 * table[s][variant_name]["mean"],
                       100 * table[s][variant_name]["std"]) for s in settings
                      if variant_name in table[s]]
            style = "--" if " " not in variant_name else "-"
            ax.errorbar([p[0] for p in points], [p[1] for p in points],
                        yerr=[p[2] for p in points], label=variant_label(variant_name),
                        linestyle=style, marker="o", capsize=3)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xticks(settings)
        ax.set_xticklabels([str(s) for s in settings])
        if name == "digits":
            ax.set_xlabel("training examples per task")
            ax.set_ylabel("balanced test error (%), mean of 10 tasks")
            ax.set_title(f"Digits, {LABELS[kind]}")
        else:
            ax.set_xlabel("training drawings per character")
            ax.set_ylabel("test error (%), mean over 5 alphabets")
            ax.set_title(f"Omniglot small1, {LABELS[kind]}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(f"{prefix}_error.png", dpi=110)
    plt.close(fig)

    rho_panels = []
    if digits_runs:
        sizes = sorted({r["size"] for r in digits_runs})
        rho_panels += [(digits_runs, "size", sizes[0], "Digits, %d per task"),
                       (digits_runs, "size", sizes[-1], "Digits, %d per task")]
    if omniglot_runs:
        for drawings in sorted({r["drawings"] for r in omniglot_runs}):
            rho_panels.append((omniglot_runs, "drawings", drawings,
                               "Omniglot, %d drawings per character"))
    fig, axes = plt.subplots(1, len(rho_panels), figsize=(6 * len(rho_panels), 4),
                             squeeze=False)
    for ax, (runs, key, setting, title) in zip(axes[0], rho_panels):
        plot_sharing_strength(mean_rho(runs, key, setting), ax=ax, title=title % setting)
    fig.tight_layout()
    fig.savefig(f"{prefix}_rho.png", dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 2 sizes, 1 seed, few steps (about 2 minutes)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=300, help="Adam steps per method")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 32])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--eps", type=float, nargs="+", default=[1e-3],
                        help="thresholds choosing the DMTRL ranks (a sweep: one DMTRL network "
                             "per value; values giving the same ranks are trained once)")
    parser.add_argument("--eps-mode", nargs="+", default=["frobenius"],
                        choices=("frobenius", "authors"),
                        help="eps semantics: keras_mdn's relative Frobenius error, or the "
                             "authors' per-step pivoted-QR precision")
    parser.add_argument("--methods", nargs="+", default=list(DMTRL), choices=DMTRL,
                        help="DMTRL kinds to run")
    parser.add_argument("--omniglot", default=OMNIGLOT_ZIP)
    parser.add_argument("--omniglot-drawings", type=int, nargs="+", default=[2, 12])
    parser.add_argument("--omniglot-seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--omniglot-steps", type=int, default=400)
    parser.add_argument("--omniglot-batch-size", type=int, default=32)
    parser.add_argument("--omniglot-lr", type=float, default=1e-3)
    parser.add_argument("--filters", type=int, nargs="+", default=[16, 32, 32])
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=2,
                        help="2: digits and Omniglot in two processes")
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds after which no new setting starts (seed-major order)")
    parser.add_argument("--from-json", nargs="+", default=None,
                        help="only rewrite the report from these part files")
    parser.add_argument("--part", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-digits", action="store_true")
    parser.add_argument("--skip-omniglot", action="store_true")
    parser.add_argument("--out", default=os.path.join(RESULTS, "dmtrl"),
                        help="output prefix (.md, .json, _error.png, _rho.png)")
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.seeds, args.steps = [10, 100], [0], 150
        args.omniglot_drawings, args.omniglot_steps = [2], 100
    return args


START = time.perf_counter()


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    parts = {"digits": args.out + "_digits_part.json", "omniglot": args.out + "_omniglot_part.json"}
    if args.from_json:
        return report(args, argv, args.from_json)
    if args.jobs == 2 and not (args.skip_digits or args.skip_omniglot):
        # The two experiments in two processes (2 cores), then one report.
        import subprocess

        children = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv,
                                      "--jobs", "1", "--part", skip, "--out", args.out])
                    for skip in ("--skip-omniglot", "--skip-digits")]
        codes = [child.wait() for child in children]
        if any(codes):
            print(f"a part failed (exit codes {codes}); reporting what was saved")
        return report(args, argv, [p for p in parts.values() if os.path.isfile(p)])
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(2 if args.jobs == 1 else 1)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    def save(name, payload):
        payload["seconds"] = round(time.perf_counter() - START, 1)
        with open(parts[name], "w") as f:
            json.dump(payload, f, indent=1, default=str)

    written = []
    if not args.skip_digits:
        run_digits(args, lambda runs: save("digits", {"digits": runs}))
        written.append(parts["digits"])
    if not args.skip_omniglot:
        if os.path.isfile(args.omniglot):
            run_omniglot(args, lambda runs, names, classes: save(
                "omniglot", {"omniglot": runs, "alphabets": list(names),
                             "num_classes": list(classes)}))
            written.append(parts["omniglot"])
        else:
            print(f"Omniglot zip not found at {args.omniglot}: skipping (b)")
    if args.part:
        return None  # a child of --jobs 2: the parent reports
    return report(args, argv, [p for p in written if os.path.isfile(p)])


def report(args, argv, part_files):
    """Merges part files into dmtrl.json, the markdown and the plots."""
    digits_runs, omniglot_runs, alphabets, num_classes, seconds = [], [], [], [], 0.0
    for path in part_files:
        with open(path) as f:
            part = json.load(f)
        digits_runs += part.get("digits", [])
        omniglot_runs += part.get("omniglot", [])
        alphabets = part.get("alphabets", alphabets)
        num_classes = part.get("num_classes", num_classes)
        seconds = max(seconds, part.get("seconds", 0.0))
    digits_table = summarize(digits_runs, "size") if digits_runs else {}
    omniglot_table = summarize(omniglot_runs, "drawings") if omniglot_runs else {}
    settings = {key: value for key, value in vars(args).items()
                if key not in ("out", "from_json")}
    command = " ".join(["python", "benchmarks/dmtrl.py"] + argv)
    if args.from_json:
        command = ("report rewritten with --from-json from the part files "
                   + ", ".join(os.path.basename(p) for p in part_files))
    payload = {"command": command, "settings": settings, "seconds": seconds,
               "digits": {"summary": digits_table, "runs": digits_runs},
               "omniglot": {"alphabets": alphabets, "num_classes": num_classes,
                            "summary": omniglot_table, "runs": omniglot_runs}}
    with open(args.out + ".json", "w") as f:
        json.dump(payload, f, indent=1, default=str)
    plot(digits_table, omniglot_table, digits_runs, omniglot_runs, args.out)
    write_markdown(args, payload, digits_table, omniglot_table, digits_runs, omniglot_runs)
    print(f"{seconds:.0f} s; wrote {args.out}.md/.json/_error.png/_rho.png")


def write_markdown(args, payload, digits_table, omniglot_table, digits_runs, omniglot_runs):
    base = os.path.basename(args.out)
    lines = [
        "# DMTRL benchmark (Yang & Hospedales, ICLR 2017)",
        "",
        f"Regenerate: `{REGENERATE}`" + (" --quick" if args.quick else "")
        + f" (this run: `{payload['command']}`, {payload['seconds']:.0f} s on 2 shared cores).",
        "",
        "The discussion of these numbers (the paper's claims against ours) is in the section",
        "*Claims* at the end; every number below is written by the script.",
        "",
    ]
    if digits_table:
        lines += [
            "## (a) Digits: 10 one-vs-all binary tasks",
            "",
            f"scikit-learn 8x8 digits (train split 1,077 images, test split 360). Task t: "
            "digit t vs the rest. Each task gets its own training sample of n examples: n/2 "
            "positives and n/2 negatives drawn uniformly from the other digits, seeded. Error: "
            "balanced test error (mean of miss and false-alarm rates) on the full test split, "
            "averaged over the 10 tasks. MLP 64 -> "
            f"{' -> '.join(map(str, args.hidden))} -> 1, ReLU; Adam lr {args.lr}, batch "
            f"{args.batch_size} (mixed tasks), {args.steps} steps for every method; DMTRL "
            "initialised from the trained STL networks with "
            f"`from_layers(eps=Tolerance(eps, mode))` for eps in {args.eps} and mode in "
            f"{args.eps_mode}, then {args.steps} steps (a "
            "threshold giving the same ranks as a smaller one reuses that network's result: "
            "the network is the same). Each cell: mean ± std (number of seeds).",
            "",
            "Balanced test error (%):",
            "",
            *error_table(digits_table, "n per task"),
            "",
            "Ranks chosen by `from_layers(eps=...)` (per layer: the factorisation's rank "
            "tuple; LAF `(K,)`, Tucker `(r_in, r_out, r_task)`, TT `(r_1, r_2)`):",
            "",
            *rank_table(digits_runs, "size", sorted({r["size"] for r in digits_runs})[:1]),
            "Sharing strength rho per layer (mean over seeds):",
            "",
            *rho_table(digits_runs, "size", sorted({r["size"] for r in digits_runs})[:1]),
        ]
    if omniglot_table:
        lines += [
            "## (b) Omniglot small1: 5 alphabets as 5 tasks",
            "",
            f"Alphabets {payload['omniglot']['alphabets']} with "
            f"{payload['omniglot']['num_classes']} characters; 28x28; drawers 1..12 are the "
            "training pool (n of the 12 drawings per character, seeded), drawers 17..20 the "
            f"test set. CNN: 3 x [3x3 conv ({', '.join(map(str, args.filters))} filters), "
            "ReLU, 2x2 max-pool] -> dense 64 -> dense 40 (per-task logit mask for alphabets "
            "with fewer characters). DMTRL: every conv layer a `FactorizedConv2D` and every "
            "dense layer a `FactorizedDense`, all from `from_layers(eps=...)`. "
            f"Adam lr {args.omniglot_lr}, {args.omniglot_steps} steps of one-task batches of "
            f"{args.omniglot_batch_size} (tasks in turn) for every method; DMTRL from STL with "
            f"eps in {args.eps}, mode in {args.eps_mode}, then the same budget.",
            "",
            "Test error (%), mean over alphabets:",
            "",
            *error_table(omniglot_table, "drawings per character"),
            "",
            "Ranks chosen:",
            "",
            *rank_table(omniglot_runs, "drawings",
                        sorted({r["drawings"] for r in omniglot_runs})),
            "Sharing strength rho per layer:",
            "",
            *rho_table(omniglot_runs, "drawings", sorted({r["drawings"] for r in omniglot_runs})),
        ]
    lines += [f"Plots: `{base}_error.png` (error vs training size), `{base}_rho.png` (rho "
              "per layer).", ""]
    # Hand-written discussion of a run: benchmarks/<output name>_claims.md.
    claims = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{base}_claims.md")
    if os.path.isfile(claims) and not args.quick:
        with open(claims) as f:
            lines += ["", f.read()]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
