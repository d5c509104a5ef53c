r"""Training throughput of a multi-domain ResNet-26 on 1, 2 and 4 virtual devices.

Issue 11, item 6. `keras_mdn.models.resnet26` (parallel adapters, 5 domains, mixed-domain
global batches) trains with `fit` on one device and data-parallel on 2 and 4 virtual CPU
devices: TensorFlow `MirroredStrategy` over logical CPUs (per-domain batch-norm statistics
all-reduced, `DomainBatchNormalization(synchronized=None)`), JAX `keras.distribution.
DataParallel` over host devices (`--xla_force_host_platform_device_count`). Each setting runs
in its own process (devices are fixed at backend start). Virtual devices share the same CPU
cores, so expect no speed-up: the point is the recipe and its cost (the all-reduces, the
replicated step), not a scaling curve.

    PYTHONPATH=. python benchmarks/distributed_throughput.py --quick   # width 0.25, 32 px
    PYTHONPATH=. python benchmarks/distributed_throughput.py           # and width 0.5, 64 px

Writes `benchmarks/results/distributed_throughput[_quick].{json,md}`. Never asserts a time.
"""

import argparse
import json
import os
import subprocess
import sys
import time

NUM_DOMAINS = 5
NUM_CLASSES = 10
DEVICES = (1, 2, 4)
BACKENDS = ("tensorflow", "jax")
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def worker(backend, devices, width, size, batch, steps):
    """Runs in a fresh process: examples per second of `fit` after a warm-up epoch."""
    os.environ["KERAS_BACKEND"] = backend
    if backend == "jax":
        os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    else:
        import tensorflow as tf

        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * devices
        )
    import contextlib

    import keras
    import numpy as np

    from keras_mdn.models import resnet26

    scope = contextlib.nullcontext()
    if devices > 1 and backend == "jax":
        import jax

        keras.distribution.set_distribution(
            keras.distribution.DataParallel(devices=jax.devices())
        )
    elif devices > 1:
        import tensorflow as tf

        scope = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(devices)]).scope()
    with scope:
        model = resnet26([NUM_CLASSES] * NUM_DOMAINS, adapter="parallel", width_factor=width,
                         input_shape=(size, size, 3))
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    r = np.random.default_rng(0)
    n = batch * steps
    x = r.normal(size=(n, size, size, 3)).astype("float32")
    d = r.integers(0, NUM_DOMAINS, size=n).astype("int32")
    y = r.integers(0, NUM_CLASSES, size=n)
    start = time.perf_counter()
    model.fit([x[: 2 * batch], d[: 2 * batch]], y[: 2 * batch], batch_size=batch, verbose=0)
    first = time.perf_counter() - start
    start = time.perf_counter()
    model.fit([x, d], y, batch_size=batch, epochs=1, shuffle=False, verbose=0)
    elapsed = time.perf_counter() - start
    return {"examples_per_s": n / elapsed, "step_s": elapsed / steps, "first_epoch_s": first}


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="width 0.25, 32 px only")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per setting")
    parser.add_argument("--backends", nargs="+", choices=BACKENDS, default=list(BACKENDS),
                        help="backends to run; the other backends' rows are kept from the "
                             "results JSON of an earlier run")
    parser.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        backend, devices, width, size, batch, steps = args.worker
        result = worker(backend, int(devices), float(width), int(size), int(batch), int(steps))
        print("RESULT " + json.dumps(result))
        return
    shapes = [(0.25, 32, 64)] if args.quick else [(0.25, 32, 64), (0.5, 64, 64)]
    steps = args.steps or (5 if args.quick else 20)
    suffix = "_quick" if args.quick else ""
    json_path = os.path.join(RESULTS, f"distributed_throughput{suffix}.json")
    load_start = loadavg()
    rows, kept = [], {}
    if os.path.exists(json_path):
        with open(json_path) as f:
            kept = json.load(f)
        rows = [r for r in kept["rows"] if r["backend"] not in args.backends]
        kept = {"loadavg": kept["loadavg"]} if rows else {}
    for width, size, batch in shapes:
        for backend in args.backends:
            for devices in DEVICES:
                env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": backend}
                env.pop("XLA_FLAGS", None)
                command = [sys.executable, os.path.abspath(__file__), "--worker", backend,
                           str(devices), str(width), str(size), str(batch), str(steps)]
                done = subprocess.run(command, env=env, capture_output=True, text=True)
                lines = [ln for ln in done.stdout.splitlines() if ln.startswith("RESULT ")]
                if done.returncode or not lines:
                    raise RuntimeError(done.stdout[-2000:] + done.stderr[-2000:])
                row = dict(backend=backend, devices=devices, width=width, size=size,
                           batch=batch, **json.loads(lines[-1][7:]))
                rows.append(row)
                print(row, flush=True)
    load_end = loadavg()
    loads = {**kept.get("loadavg", {}),
             " ".join(args.backends): {"start": load_start, "end": load_end}}
    rows.sort(key=lambda r: (r["width"], BACKENDS.index(r["backend"]), r["devices"]))
    os.makedirs(RESULTS, exist_ok=True)
    with open(json_path, "w") as f:
        json.dump({"rows": rows, "loadavg": loads, "steps": steps, "cpus": os.cpu_count()},
                  f, indent=2)
    load_text = "; ".join(f"{k}: {v['start']} at start, {v['end']} at end"
                          for k, v in loads.items())
    lines = [
        "# Data-parallel throughput on virtual CPU devices",
        "",
        f"`benchmarks/distributed_throughput.py{' --quick' if args.quick else ''}`: "
        f"ResNet-26, parallel adapters, {NUM_DOMAINS} domains, mixed-domain global batches, "
        f"SGD momentum 0.9, {steps} timed `fit` steps after a 2-step warm-up epoch. "
        f"{os.cpu_count()} CPU cores shared by all virtual devices: no speed-up is expected. "
        f"Load averages (1, 5, 15 min) by run: {load_text}.",
        "",
        "| backend | width | px | global batch | devices | examples/s | step (s) | "
        "vs 1 device | first epoch (s) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        base = next(r for r in rows if r["backend"] == row["backend"] and r["devices"] == 1
                    and r["width"] == row["width"] and r["size"] == row["size"])
        lines.append(
            f"| {row['backend']} | {row['width']} | {row['size']} | {row['batch']} | "
            f"{row['devices']} | {row['examples_per_s']:.1f} | {row['step_s']:.3f} | "
            f"{row['examples_per_s'] / base['examples_per_s']:.2f}x | "
            f"{row['first_epoch_s']:.1f} |"
        )
    with open(os.path.join(RESULTS, f"distributed_throughput{suffix}.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
