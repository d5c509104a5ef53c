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

Writes `benchmarks/results/routing_overhead[_quick].{json,md,png}`. Never asserts a time.
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


def plain_resnet26(keras, input_shape, width_factor):
    """ResNet-26 of the same shape from core Keras layers: one domain, no routing."""

    def conv_bn(x, filters, strides, name):
        x = keras.layers.Conv2D(
            filters, 3, strides=strides, padding="same", use_bias=False, name=f"{name}_conv"
        )(x)
        return keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5, name=f"{name}_bn")(x)

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


def run_worker(args):
    import keras
    import numpy as np

    from keras_mdn.models import resnet26

    backend = keras.backend.backend()
    paths = ["graph", "xla"] if backend == "tensorflow" else ["jit"]
    rows = []
    rng = np.random.default_rng(0)
    for width in args.widths:
        for size in args.sizes:
            images = rng.normal(size=(BATCH, size, size, 3)).astype("float32")
            labels = rng.integers(0, NUM_CLASSES, size=(BATCH,)).astype("int32")
            domains = {
                "one": np.full((BATCH,), 2, "int32"),
                "mixed": rng.integers(0, NUM_DOMAINS, size=(BATCH,)).astype("int32"),
            }
            for opt in args.optimizers:
                for path in paths:
                    new = time_setting(
                        keras, resnet26, np, width, size, opt, path, images, labels, domains,
                        args.rounds,
                    )
                    rows += new
                    for row in new:
                        print(json.dumps(row), file=sys.stderr, flush=True)
    print("RESULT " + json.dumps(rows))


def time_setting(keras, resnet26, np, width, size, opt, path, images, labels, domains, rounds):
    jit = path != "graph"
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    keras.utils.set_random_seed(0)
    models = {"plain": plain_resnet26(keras, (size, size, 3), width)}
    for kind, adapter in KINDS.items():
        models[kind] = resnet26(
            [NUM_CLASSES] * NUM_DOMAINS, adapter=adapter, input_shape=(size, size, 3),
            width_factor=width,
        )
    first = {}
    for name, model in models.items():
        model.compile(optimizer(keras, opt), loss, jit_compile=jit)
        start = time.perf_counter()
        if name == "plain":
            model.train_on_batch(images, labels)
        else:
            model.train_on_batch([images, domains["one"]], labels)
            # The mixed batch runs the same compiled function (same shapes): warm it too.
        first[name] = time.perf_counter() - start
    runs = [("plain", None)] + [(k, b) for k in KINDS for b in ("one", "mixed")]

    def step(name, batch):
        model = models[name]
        start = time.perf_counter()
        if name == "plain":
            model.train_on_batch(images, labels)
        else:
            model.train_on_batch([images, domains[batch]], labels)
        return time.perf_counter() - start

    for run in runs:  # warm-up
        step(*run)
    times = {run: [] for run in runs}
    order = np.random.default_rng(1)
    for _ in range(rounds):
        for index in order.permutation(len(runs)):
            times[runs[index]].append(step(*runs[index]))
    plain_step = statistics.median(times[("plain", None)])
    rows = []
    for kind in KINDS:
        for batch in ("one", "mixed"):
            median = statistics.median(times[(kind, batch)])
            rows.append(
                dict(
                    width=width, size=size, optimizer=opt, path=path, kind=kind, batch=batch,
                    step_s=median, plain_step_s=plain_step, step_ratio=median / plain_step,
                    first_s=first[kind], plain_first_s=first["plain"],
                    first_ratio=first[kind] / first["plain"],
                    spread=(min(times[(kind, batch)]), max(times[(kind, batch)])),
                )
            )
    keras.backend.clear_session()
    return rows


# === Report ===


def target(row):
    return TARGETS["mixed"] if row["batch"] == "mixed" else TARGETS[row["kind"]]


def write_results(rows, meta, suffix):
    os.makedirs(RESULTS, exist_ok=True)
    stem = os.path.join(RESULTS, f"routing_overhead{suffix}")
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=1)
    lines = [
        "# Routing overhead: keras_mdn ResNet-26 / plain Keras ResNet-26",
        "",
        f"Load average at start {meta['load_start']}, at end {meta['load_end']} "
        f"({meta['cpus']} CPUs). Batch {BATCH}, {NUM_DOMAINS} domains, median of "
        f"{meta['rounds']} interleaved rounds. Step target: BN only {TARGETS['bn']}x, "
        f"parallel {TARGETS['parallel']}x, series {TARGETS['series']}x, mixed batch "
        f"{TARGETS['mixed']}x; first step {TARGETS['first']}x. `!` marks a miss.",
        "",
        "| width | px | optimizer | path | model | batch | step ms | plain ms | step x "
        "| first s | plain first s | first x |",
        "|---:|---:|---|---|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        step_mark = "" if r["step_ratio"] <= target(r) else " !"
        first_mark = "" if r["first_ratio"] <= TARGETS["first"] else " !"
        lines.append(
            f"| {r['width']} | {r['size']} | {r['optimizer']} | {r['path']} | {r['kind']} | "
            f"{r['batch']} | {1e3 * r['step_s']:.1f} | {1e3 * r['plain_step_s']:.1f} | "
            f"{r['step_ratio']:.2f}{step_mark} | {r['first_s']:.1f} | {r['plain_first_s']:.1f} | "
            f"{r['first_ratio']:.2f}{first_mark} |"
        )
    missed = [r for r in rows if r["step_ratio"] > target(r)]
    first_missed = [r for r in rows if r["batch"] == "one" and r["first_ratio"] > TARGETS["first"]]
    lines += [
        "",
        f"Step targets met: {len(rows) - len(missed)}/{len(rows)}; first-step targets met: "
        f"{sum(r['batch'] == 'one' for r in rows) - len(first_missed)}/"
        f"{sum(r['batch'] == 'one' for r in rows)}.",
    ]
    with open(stem + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
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


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="width 0.25, 32 px only")
    parser.add_argument("--backends", default="tensorflow,jax")
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--widths", type=float, nargs="+", default=None)
    parser.add_argument("--sizes", type=int, nargs="+", default=None)
    parser.add_argument("--optimizers", nargs="+", default=["sgd_momentum", "adam"])
    args = parser.parse_args()
    if args.widths is None:
        args.widths = [0.25] if args.quick else [0.25, 1.0]
    if args.sizes is None:
        args.sizes = [32] if args.quick else [32, 64]
    if args.rounds is None:
        args.rounds = 8 if args.quick else 15
    if args.worker:
        run_worker(args)
        return
    meta = dict(load_start=loadavg(), cpus=os.cpu_count(), rounds=args.rounds,
                widths=args.widths, sizes=args.sizes, optimizers=args.optimizers)
    rows = []
    for backend in args.backends.split(","):
        command = [sys.executable, os.path.abspath(__file__), "--worker",
                   "--rounds", str(args.rounds), "--widths", *map(str, args.widths),
                   "--sizes", *map(str, args.sizes), "--optimizers", *args.optimizers]
        env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="2")
        done = subprocess.run(command, env=env, stdout=subprocess.PIPE, text=True)
        if done.returncode != 0:
            raise SystemExit(f"{backend} worker failed with exit code {done.returncode}")
        line = [x for x in done.stdout.splitlines() if x.startswith("RESULT ")][-1]
        rows += json.loads(line[len("RESULT "):])
    meta["load_end"] = loadavg()
    suffix = "_quick" if args.quick else ""
    write_results(rows, meta, suffix)
    with open(os.path.join(RESULTS, f"routing_overhead{suffix}.md")) as f:
        print(f.read())


if __name__ == "__main__":
    main()
