r"""Cost of domain routing: keras_mdn's ResNet-26 against a plain Keras ResNet-26 of one shape.

Issue 8, item 1. For each setting, `keras_mdn.models.resnet26` (5 domains, "BN only",
parallel and series adapters) and a plain Keras ResNet-26 of the same shape (`Conv2D`,
`BatchNormalization`, `Dense`; the same parameter-free shortcuts) are built in one process,
compiled alike, and trained with `train_on_batch` on the same batches:

- first step: the first `train_on_batch` (trace + compile + one step), ratio to the plain
  network's first step;
- step: median over interleaved rounds (plain, then every keras_mdn model and batch kind in
  a fresh random order each round, so a shared machine's load hits all alike), ratio to the
  plain network's median step.

Batch kinds: `one` (the whole batch one domain, given as the model's domain vector, the
form `fit` feeds) and `mixed` (random domains). Compile paths: TensorFlow graph
(`jit_compile=False`), TensorFlow XLA (`jit_compile=True`) and JAX jit (a subprocess: the
backend is fixed per process). Targets (issue 8): step BN only <= 1.1x, parallel <= 1.25x,
series <= 1.4x, mixed batches <= 1.5x; first step <= 1.5x.

    PYTHONPATH=. python benchmarks/routing_overhead.py --quick   # width 0.25, 32 px
    PYTHONPATH=. python benchmarks/routing_overhead.py           # widths 0.25/1, 32/64 px
    PYTHONPATH=. python benchmarks/routing_overhead.py --layers  # per layer, with op counts

Each keras_mdn model is also compared with its floor: the plain network with the adapter's
extra layers (a 1x1 conv beside each 3x3 conv, or BN + 1x1 conv after it) and no routing.
The full grid (SGD momentum; `--quick` also runs Adam) takes about 15 minutes on 2 idle
cores: `--budget-s` (840 s by default) is the whole run's wall time, shared by the cells
as they come, and a cell's rounds shrink (to at least 2) to fit its share.

Each (backend, compile path, width, size) cell runs in its own subprocess (`--layers`: each
backend and path), and every row is appended to `routing_overhead[_quick].jsonl` as it
arrives: a cell whose process dies (a TF worker once died with `free(): invalid next size`
after the XLA rows) is reported as crashed, with its exit code and stderr tail, and the other
cells' rows are kept. Writes `benchmarks/results/routing_overhead[_quick].{jsonl,json,md,png}`.
Never asserts a time.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

NUM_DOMAINS = 5
NUM_CLASSES = 10
BATCH = 32
TARGETS = {"bn": 1.1, "parallel": 1.25, "series": 1.4, "mixed": 1.5, "first": 1.5}
KINDS = {"bn": None, "parallel": "parallel", "series": "series"}
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


# === Models ===


def plain_resnet26(keras, input_shape, width_factor, adapter=None):
    """ResNet-26 of the same shape from core Keras layers: one domain, no routing.

    With `adapter`, each 3x3 conv gets the adapter's extra compute as plain Keras layers (the
    floor of what an adapter costs, with no routing): `"parallel"` adds a 1x1 conv of the same
    stride on the conv's input, `"series"` adds `BN -> 1x1 conv` on its output, as one domain's
    `ResidualAdapter` computes.
    """

    def conv_bn(x, filters, strides, name):
        y = keras.layers.Conv2D(
            filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
        )(x)
        if adapter == "parallel":
            branch = keras.layers.Conv2D(
                filters, 1, strides=strides, use_bias=False, name=f"{name}_adapter"
            )(x)
            y = keras.layers.Add()([y, branch])
        elif adapter == "series":
            branch = keras.layers.BatchNormalization(
                momentum=0.9, epsilon=1e-5, name=f"{name}_adapter_bn"
            )(y)
            branch = keras.layers.Conv2D(filters, 1, use_bias=False, name=f"{name}_adapter")(
                branch
            )
            y = keras.layers.Add()([y, branch])
        return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(y)

    image = keras.Input(input_shape, name="image")
    width = int(32 * width_factor)
    x = conv_bn(image, width, 1, "stem")
    for stage in range(1, 4):
        width *= 2
        for block in range(1, 5):
            prefix = f"stage{stage}_block{block}"
            y = conv_bn(x, width, 2 if block == 1 else 1, f"{prefix}_1")
            y = keras.layers.ReLU()(y)
            y = conv_bn(y, width, 1, f"{prefix}_2")
            if block == 1:
                pooled = keras.layers.AveragePooling2D(2, padding="same")(x)
                x = keras.layers.Concatenate()([pooled, keras.layers.Rescaling(0.0)(pooled)])
            x = keras.layers.ReLU()(keras.layers.Add()([y, x]))
    x = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)(x)
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.ReLU()(x))
    return keras.Model(image, keras.layers.Dense(NUM_CLASSES)(x))


def optimizer(keras, name):
    if name == "sgd_momentum":
        return keras.optimizers.SGD(0.01, momentum=0.9)
    return keras.optimizers.Adam(1e-3)


# === Worker (one backend per process) ===


def emit(row):
    """A worker's row, to the parent (which appends it to the .jsonl at once)."""
    print("ROW " + json.dumps(row), flush=True)


def run_worker(args):
    """One cell: a compile path, a width and a size (every optimizer in turn)."""
    import keras
    import numpy as np

    from keras_mdn.models import resnet26

    (path,), (width,), (size,) = args.paths, args.widths, args.sizes
    rng = np.random.default_rng(0)
    images = rng.normal(size=(BATCH, size, size, 3)).astype("float32")
    labels = rng.integers(0, NUM_CLASSES, size=(BATCH,)).astype("int32")
    domains = {
        "one": np.full((BATCH,), 2, "int32"),
        "mixed": rng.integers(0, NUM_DOMAINS, size=(BATCH,)).astype("int32"),
    }
    warm_up(keras, np, path)
    for opt in args.optimizers:
        for row in time_setting(
            keras, resnet26, np, width, size, opt, path, images, labels, domains, args.rounds,
            args.budget_s / len(args.optimizers), args.kinds,
        ):
            emit(row)


def warm_up(keras, np, path):
    """One throwaway training step of a small plain network, compiled as the cell's models.

    A process's first compiled function pays one-time start-up costs (the backend's function
    and compiler machinery): without this, they would land on the plain network, timed
    first in every cell, and bias every first-step ratio low.
    """
    model = plain_resnet26(keras, (16, 16, 3), 0.25)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  jit_compile=path != "graph")
    model.train_on_batch(np.zeros((BATCH, 16, 16, 3), "float32"), np.zeros((BATCH,), "int32"))
    keras.backend.clear_session()


def time_setting(keras, resnet26, np, width, size, opt, path, images, labels, domains, rounds,
                 budget_s, kinds):
    """Times one setting; `rounds` at most, fewer where `budget_s` would be exceeded."""
    jit = path != "graph"
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    keras.utils.set_random_seed(0)
    started = time.perf_counter()
    models = {"plain": plain_resnet26(keras, (size, size, 3), width)}
    for kind in kinds:
        if KINDS[kind] is not None:  # the floor: the same extra compute as plain Keras layers
            models[f"floor_{kind}"] = plain_resnet26(
                keras, (size, size, 3), width, adapter=KINDS[kind]
            )
        models[kind] = resnet26(
            [NUM_CLASSES] * NUM_DOMAINS, adapter=KINDS[kind], input_shape=(size, size, 3),
            width_factor=width,
        )
    first = {}
    for name, model in models.items():
        model.compile(optimizer(keras, opt), loss, jit_compile=jit)
        start = time.perf_counter()
        if name in KINDS:
            # The mixed batch runs the same compiled function (same shapes).
            model.train_on_batch([images, domains["one"]], labels)
        else:
            model.train_on_batch(images, labels)
        first[name] = time.perf_counter() - start
    runs = [(name, None) for name in models if name not in KINDS]
    runs += [(k, b) for k in kinds for b in ("one", "mixed")]

    def step(name, batch):
        model = models[name]
        start = time.perf_counter()
        if batch is None:
            model.train_on_batch(images, labels)
        else:
            model.train_on_batch([images, domains[batch]], labels)
        return time.perf_counter() - start

    round_s = sum(step(*run) for run in runs)  # warm-up
    left = budget_s - (time.perf_counter() - started)
    rounds = max(2, min(rounds, int(left / round_s)))
    times = {run: [] for run in runs}
    order = np.random.default_rng(1)
    for _ in range(rounds):
        for index in order.permutation(len(runs)):
            times[runs[index]].append(step(*runs[index]))
    median = {run: statistics.median(t) for run, t in times.items()}
    plain_step = median[("plain", None)]
    rows = []
    for kind in kinds:
        floor = "plain" if KINDS[kind] is None else f"floor_{kind}"
        floor_step = median[(floor, None)]
        for batch in ("one", "mixed"):
            step_s = median[(kind, batch)]
            rows.append(
                dict(
                    width=width, size=size, optimizer=opt, path=path, kind=kind, batch=batch,
                    rounds=rounds, step_s=step_s, plain_step_s=plain_step,
                    step_ratio=step_s / plain_step, floor_step_s=floor_step,
                    floor_ratio=floor_step / plain_step, step_over_floor=step_s / floor_step,
                    first_s=first[kind], plain_first_s=first["plain"],
                    first_ratio=first[kind] / first["plain"],
                    floor_first_ratio=first[floor] / first["plain"],
                    spread=(min(times[(kind, batch)]), max(times[(kind, batch)])),
                )
            )
    keras.backend.clear_session()
    return rows


# === Per-layer microbenchmark (--layers) ===

LAYER_PAIRS = ("convbn", "parallel", "series", "head")


def layer_model(keras, name, batch_shape, num_domains):
    """One layer pair: `keras_<pair>` (plain Keras) or `mdn_<pair>` (keras_mdn), a model."""
    from keras_mdn import DomainBatchNormalization, DomainHead, ResidualAdapter

    library, pair = name.split("_")
    channels = batch_shape[-1]
    domain = keras.Input((), dtype="int32")

    def conv(size=3):
        return keras.layers.Conv2D(channels, size, padding="same", use_bias=False)

    def bn(x):
        if library == "keras":
            return keras.layers.BatchNormalization()(x)
        return DomainBatchNormalization(num_domains)(x, domain)

    if pair == "head":
        features = keras.Input((batch_shape[-1],))
        if library == "keras":
            return keras.Model(features, keras.layers.Dense(NUM_CLASSES)(features))
        head = DomainHead([NUM_CLASSES] * num_domains)
        return keras.Model([features, domain], head(features, domain))
    image = keras.Input(batch_shape[1:])
    if pair == "convbn":
        y = bn(conv()(image))
    elif library == "mdn":
        adapter = ResidualAdapter(conv(), num_domains, pair, adapter_initializer="he_normal")
        y = bn(adapter(image, domain))
    elif pair == "parallel":
        y = bn(keras.layers.Add()([conv()(image), conv(1)(image)]))
    else:
        y = conv()(image)
        y = bn(keras.layers.Add()([y, conv(1)(keras.layers.BatchNormalization()(y))]))
    return keras.Model(image if library == "keras" else [image, domain], y)


def count_graph_ops(model, inputs):
    """Ops in the TF graph of one forward pass and of forward + gradient (training mode)."""
    import tensorflow as tf

    @tf.function
    def forward(x):
        return model(x, training=True)

    @tf.function
    def gradient(x):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x, training=True)))
        return tape.gradient(loss, model.trainable_variables)

    return tuple(
        len(fn.get_concrete_function(inputs).graph.get_operations()) for fn in (forward, gradient)
    )


def layers_worker(args):
    import keras
    import numpy as np

    backend = keras.backend.backend()
    size, channels = 16, 16
    rng = np.random.default_rng(0)
    image = rng.normal(size=(BATCH, size, size, channels)).astype("float32")
    features = rng.normal(size=(BATCH, 4 * channels)).astype("float32")
    domain = rng.integers(0, NUM_DOMAINS, size=(BATCH,)).astype("int32")
    names = [f"{lib}_{pair}" for pair in LAYER_PAIRS for lib in ("keras", "mdn")]
    for path in args.paths:
        warm_up(keras, np, path)
        models, first, times, ops_count = {}, {}, {}, {}
        for name in names:
            keras.utils.set_random_seed(0)
            x = features if name.endswith("head") else image
            model = layer_model(keras, name, x.shape, NUM_DOMAINS)
            inputs = [x, domain] if name.startswith("mdn") else x
            target_shape = (BATCH, NUM_CLASSES) if name.endswith("head") else image.shape
            data = (inputs, np.zeros(target_shape, "float32"))
            if backend == "tensorflow" and path == "graph":
                ops_count[name] = count_graph_ops(model, inputs)
            model.compile(optimizer(keras, "sgd_momentum"), "mse", jit_compile=path != "graph")
            start = time.perf_counter()
            model.train_on_batch(*data)
            first[name] = time.perf_counter() - start
            models[name] = (model, data)
            times[name] = []
        for model, data in models.values():  # warm-up
            for _ in range(3):
                model.train_on_batch(*data)
        order = np.random.default_rng(1)
        for _ in range(args.rounds * 4):
            for index in order.permutation(len(names)):
                model, data = models[names[index]]
                start = time.perf_counter()
                model.train_on_batch(*data)
                times[names[index]].append(time.perf_counter() - start)
        for pair in LAYER_PAIRS:
            plain, ours = f"keras_{pair}", f"mdn_{pair}"
            step = {n: statistics.median(times[n]) for n in (plain, ours)}
            emit(dict(
                backend=backend, path=path, pair=pair, keras_step_s=step[plain],
                mdn_step_s=step[ours], step_ratio=step[ours] / step[plain],
                min_ratio=min(times[ours]) / min(times[plain]),
                keras_first_s=first[plain], mdn_first_s=first[ours],
                first_ratio=first[ours] / first[plain],
                keras_ops=ops_count.get(plain), mdn_ops=ops_count.get(ours),
            ))
        keras.backend.clear_session()


# === Report ===


def target(row):
    return TARGETS["mixed"] if row["batch"] == "mixed" else TARGETS[row["kind"]]


def _ops(pair):
    return "" if pair is None else "{} / {}".format(*pair)


def _mark(ratio, limit):
    return f"{ratio:.2f}" + ("" if ratio <= limit else " !")


# (header, cell) per column: the model grid and the per-layer microbenchmark.
MODEL_COLUMNS = [
    ("width", lambda r: r["width"]), ("px", lambda r: r["size"]),
    ("optimizer", lambda r: r["optimizer"]), ("path", lambda r: r["path"]),
    ("model", lambda r: r["kind"]), ("batch", lambda r: r["batch"]),
    ("n", lambda r: r["rounds"]), ("step ms", lambda r: f"{1e3 * r['step_s']:.1f}"),
    ("plain ms", lambda r: f"{1e3 * r['plain_step_s']:.1f}"),
    ("step x", lambda r: _mark(r["step_ratio"], target(r))),
    ("floor x", lambda r: _mark(r["floor_ratio"], target(r))),
    ("/ floor", lambda r: f"{r['step_over_floor']:.2f}"),
    ("first s", lambda r: f"{r['first_s']:.1f}"),
    ("plain first s", lambda r: f"{r['plain_first_s']:.1f}"),
    ("first x", lambda r: _mark(r["first_ratio"], TARGETS["first"])),
    ("floor first x", lambda r: f"{r['floor_first_ratio']:.2f}"),
]
LAYER_COLUMNS = [
    ("backend", lambda r: r["backend"]), ("path", lambda r: r["path"]),
    ("layer", lambda r: r["pair"]), ("keras ms", lambda r: f"{1e3 * r['keras_step_s']:.2f}"),
    ("keras_mdn ms", lambda r: f"{1e3 * r['mdn_step_s']:.2f}"),
    ("step x", lambda r: f"{r['step_ratio']:.2f}"),
    ("fastest step x", lambda r: f"{r['min_ratio']:.2f}"),
    ("first x", lambda r: f"{r['first_ratio']:.2f}"),
    ("keras ops fwd / +grad", lambda r: _ops(r["keras_ops"])),
    ("keras_mdn ops fwd / +grad", lambda r: _ops(r["mdn_ops"])),
]


def model_intro(meta):
    return [
        "# Routing overhead: keras_mdn ResNet-26 / plain Keras ResNet-26",
        "",
        f"Load average at start {meta['load_start']}, at end {meta['load_end']} "
        f"({meta['cpus']} CPUs). Batch {BATCH}, {NUM_DOMAINS} domains, median of "
        f"{meta['rounds']} interleaved rounds"
        + (f" at most (fewer where the time budget of {meta['budget_s']} s for the whole run "
           "is short: column `n`)" if meta["budget_s"] < 1e8 else "")
        + f". Step target: BN only "
        f"{TARGETS['bn']}x, parallel {TARGETS['parallel']}x, series {TARGETS['series']}x, "
        f"mixed batch {TARGETS['mixed']}x; first step {TARGETS['first']}x. `!` marks a miss.",
        "",
        "`floor x`: a plain Keras ResNet-26 with the adapter's extra compute as plain layers "
        "(parallel: a 1x1 conv beside each 3x3; series: BN + 1x1 conv after it; one domain, "
        "no routing) over the plain network: the least an adapter can cost. `/ floor`: the "
        "keras_mdn model over that floor, the cost of routing alone.",
    ]


def model_summary(rows):
    missed = [r for r in rows if r["step_ratio"] > target(r)]
    floor_missed = [r for r in missed if r["floor_ratio"] > target(r)]
    ones = [r for r in rows if r["batch"] == "one"]
    first_missed = [r for r in ones if r["first_ratio"] > TARGETS["first"]]
    return [
        f"Step targets met: {len(rows) - len(missed)}/{len(rows)} ({len(floor_missed)} of the "
        f"misses have a floor above the target: the plain Keras network with the adapter's "
        f"extra layers misses it too); first-step targets met: "
        f"{len(ones) - len(first_missed)}/{len(ones)}.",
    ]


def layer_intro(meta):
    return [
        "# Routing overhead per layer: keras_mdn layer / its plain Keras equivalent",
        "",
        f"Load average at start {meta['load_start']}, at end {meta['load_end']} "
        f"({meta['cpus']} CPUs). Training step (`train_on_batch`, SGD momentum, MSE) of a "
        f"one-layer model, batch {BATCH} of 16x16x16 (head: 64 features), {NUM_DOMAINS} "
        "domains, mixed batch; median of interleaved rounds. convbn: Conv2D + "
        "DomainBatchNormalization vs Conv2D + BatchNormalization; parallel / series: "
        "ResidualAdapter + DomainBatchNormalization vs the same extra 1x1 conv (and BN) as "
        "Keras layers; head: DomainHead vs Dense. Ops: TF graph ops of the forward pass, and "
        "of forward + gradient.",
    ]


def write_results(stem, meta, rows, crashed, layers):
    """The one writer: `<stem>.json`, `<stem>.md` (and the model grid's `<stem>.png`).

    Crashed cells are listed with their exit code and stderr tail after the table.
    """
    columns = LAYER_COLUMNS if layers else MODEL_COLUMNS
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows, "crashed": crashed}, f, indent=1)
    lines = (layer_intro if layers else model_intro)(meta) + [
        "",
        "| " + " | ".join(header for header, _ in columns) + " |",
        "|" + "|".join("---" if header in ("optimizer", "path", "model", "batch", "backend",
                                          "layer") else "---:" for header, _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(str(cell(r)) for _, cell in columns) + " |" for r in rows]
    if rows and not layers:
        lines += [""] + model_summary(rows)
    for crash in crashed:
        lines += [
            "",
            f"CRASHED cell {' '.join(f'{k}={v}' for k, v in crash['cell'].items())}: exit "
            f"code {crash['returncode']} after {crash['rows_before']} rows; stderr tail:",
            "",
            "```",
            crash["stderr_tail"],
            "```",
        ]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    if rows and not layers:
        plot(rows, stem + ".png")


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [
        f"{r['path']} {r['kind']} {r['batch']}\n{r['optimizer']} w{r['width']} {r['size']}px"
        for r in rows
    ]
    positions = range(len(rows))
    for ax, key, title in (
        (axes[0], "step_ratio", "training step / plain"),
        (axes[1], "first_ratio", "first step (trace+compile) / plain"),
    ):
        colors = [
            "tab:red" if r[key] > (target(r) if key == "step_ratio" else TARGETS["first"])
            else "tab:blue" for r in rows
        ]
        ax.bar(positions, [r[key] for r in rows], color=colors)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_title(title + " (red: target missed)")
        ax.set_xticks(list(positions))
        ax.set_xticklabels(labels, rotation=90, fontsize=5)
        ax.set_ylabel("ratio")
    fig.tight_layout()
    fig.savefig(path, dpi=130)


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def cells(args):
    """The subprocesses: (backend, path, width, size); `--layers`: (backend, path)."""
    out = []
    for backend in args.backends.split(","):
        paths = ["graph", "xla"] if backend == "tensorflow" else ["jit"]
        for path in [p for p in paths if args.paths is None or p in args.paths]:
            if args.layers:
                out.append(dict(backend=backend, path=path))
                continue
            out += [dict(backend=backend, path=path, width=w, size=s)
                    for w in args.widths for s in args.sizes]
    return out


def run_cell(args, cell, budget_s, jsonl):
    """Runs one cell in its own process; appends each of its rows to `jsonl` as it arrives.

    Returns `(rows, crash)`: `crash` is None, or the exit code and stderr tail of a cell
    whose process died (its rows before the crash are kept).
    """
    import tempfile

    command = [sys.executable, os.path.abspath(__file__), "--worker",
               "--rounds", str(args.rounds), "--budget-s", str(budget_s),
               "--optimizers", *args.optimizers, "--kinds", *args.kinds,
               "--paths", cell["path"]]
    if args.layers:
        command.append("--layers")
    else:
        command += ["--widths", str(cell["width"]), "--sizes", str(cell["size"])]
    env = dict(os.environ, KERAS_BACKEND=cell["backend"], TF_CPP_MIN_LOG_LEVEL="2")
    rows = []
    with tempfile.TemporaryFile("w+") as stderr:
        process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=stderr,
                                   text=True)
        for line in process.stdout:
            if line.startswith("ROW "):
                row = {**json.loads(line[len("ROW "):]), "backend": cell["backend"]}
                rows.append(row)
                with open(jsonl, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(json.dumps(row), flush=True)
        returncode = process.wait()
        if returncode == 0:
            return rows, None
        stderr.seek(0)
        tail = "\n".join(stderr.read().strip().splitlines()[-15:])
    crash = dict(cell=cell, returncode=returncode, stderr_tail=tail, rows_before=len(rows))
    with open(jsonl, "a") as f:
        f.write(json.dumps({"crashed": crash}) + "\n")
    print(f"cell {cell} crashed with exit code {returncode}:\n{tail}", flush=True)
    return rows, crash


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="width 0.25, 32 px only")
    parser.add_argument("--layers", action="store_true",
                        help="per-layer microbenchmark and TF graph op counts instead")
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--paths", nargs="+", default=None, choices=["graph", "xla", "jit"])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=list(KINDS))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--budget-s", type=float, default=None,
                        help="wall seconds for the whole run, shared by the cells as they "
                        "come; a cell's rounds shrink to fit its share (at least 2)")
    parser.add_argument("--suffix", default=None, help="results file suffix")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--widths", type=float, nargs="+", default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--optimizers", nargs="+", default=None,
                        help="default: both for --quick, SGD momentum for the full grid")
    args = parser.parse_args()
    if args.widths is None:
        args.widths = [0.25] if args.quick else [0.25, 1.0]
    if args.sizes is None:
        args.sizes = [32] if args.quick else [32, 64]
    if args.optimizers is None:
        # The full grid fits about 15 minutes with one optimizer; --quick times both.
        args.optimizers = ["sgd_momentum", "adam"] if args.quick else ["sgd_momentum"]
    if args.rounds is None:
        args.rounds = 8 if args.quick else 10
    if args.budget_s is None:
        # The full grid: about 15 minutes on 2 idle cores for both backends.
        args.budget_s = 1e9 if args.quick else 840.0
    if args.worker:
        (layers_worker if args.layers else run_worker)(args)
        return
    if args.layers:
        suffix = "_layers" if args.suffix is None else args.suffix
    else:
        suffix = ("_quick" if args.quick else "") if args.suffix is None else args.suffix
    os.makedirs(RESULTS, exist_ok=True)
    stem = os.path.join(RESULTS, f"routing_overhead{suffix}")
    open(stem + ".jsonl", "w").close()
    meta = dict(load_start=loadavg(), cpus=os.cpu_count(), rounds=args.rounds,
                budget_s=args.budget_s, widths=args.widths, sizes=args.sizes,
                optimizers=args.optimizers)
    todo = cells(args)
    rows, crashed = [], []
    started = time.perf_counter()
    for index, cell in enumerate(todo):
        # What is left of the budget, shared by the cells left (a cell that overruns its share,
        # with its compiles and at least 2 rounds, takes from the later ones).
        left = args.budget_s - (time.perf_counter() - started)
        share = max(left / (len(todo) - index), 0.0)
        new, crash = run_cell(args, cell, share, stem + ".jsonl")
        rows += new
        crashed += [crash] if crash else []
    meta["load_end"] = loadavg()
    write_results(stem, meta, rows, crashed, args.layers)
    with open(stem + ".md") as f:
        print(f.read())


if __name__ == "__main__":
    main()
