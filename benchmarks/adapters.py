"""Benchmark: the residual adapters paper's claims (Rebuffi et al. 2018) on two small 5-domain sets.

Datasets: Omniglot small1 (5 alphabets as 5 domains; drawers 1-12 train, 13-16 validation,
17-20 test; 32x32) and the embedded digits domains (16x16). Protocol, as in the paper: a
ResNet-26 is pretrained on one source domain (the paper: ImageNet, itself one of the ten
decathlon domains; here the largest alphabet, Korean, and the digits' "original" domain), then
every method adapts it to all five domains (the source included) with the same budget: the same
epochs over every domain's training set, per-domain batches, the same optimizer and schedule.

Methods: 1. one fine-tuned ResNet-26 per domain (the score's baseline); 2. the pretrained
network frozen (its BN too) with per-domain heads; 3. per-domain BN + heads (shared convs
frozen); 4. series adapters; 5. parallel adapters (shared convs frozen; adapters, BN, heads
trained); 6. the trained parallel adapters compressed by cross-domain SVD
(`keras_mdn.surgery.compress_adapters`) to two ranks, with no fine-tuning afterwards by
default (`--compress-epochs N` adds N epochs at a tenth of the learning rate).

Columns: mean and per-domain test accuracy, decathlon score with method 1 as the baseline
(250 per domain by construction), parameters of all five domains as a multiple of one network,
training step time relative to the base network (interleaved, median).

Regenerate (the two datasets run in two processes; 16 minutes on 2 CPU cores shared
with other jobs, most of it TensorFlow tracing the train steps; see results/adapters.md):

    timeout 2700 python benchmarks/adapters.py

Smoke run (1 epoch each; still minutes, tracing the train steps dominates):
`python benchmarks/adapters.py --quick` (writes to /tmp unless `--output` is given).
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import adapters_methods as methods  # noqa: E402
import adapters_output as output  # noqa: E402

import keras_mdn  # noqa: E402
from keras_mdn.baselines import fine_tune_each_domain  # noqa: E402
from keras_mdn.datasets import load_digits_domains, load_omniglot_domains  # noqa: E402
from keras_mdn.report import parameter_report  # noqa: E402
from keras_mdn.surgery import transfer_weights  # noqa: E402

OMNIGLOT_ZIP = os.path.join(
    os.path.dirname(os.path.abspath(__file__)),
    "..",
    "..",
    "shared",
    "data",
    "omniglot",
    "images_background_small1.zip",
)
PARTIAL_PATH = None
RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny smoke run (1 epoch each)")
    parser.add_argument("--datasets", nargs="+", default=["omniglot", "digits"])
    parser.add_argument("--omniglot-path", default=os.path.normpath(OMNIGLOT_ZIP))
    parser.add_argument("--width-factor", type=float, default=0.25)
    parser.add_argument("--epochs", type=int, default=None, help="adaptation epochs (all methods)")
    parser.add_argument("--pretrain-epochs", type=int, default=None)
    parser.add_argument("--compress-epochs", type=int, default=0)
    parser.add_argument("--ranks", type=int, nargs=2, default=[2, 8])
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timing-steps", type=int, default=5)
    parser.add_argument("--timing-rounds", type=int, default=5)
    parser.add_argument("--output", default=None, help="results prefix (default: results/adapters)")
    parser.add_argument("--jobs", type=int, default=2, help="datasets run in parallel processes")
    parser.add_argument("--from-json", action="store_true",
                        help="only rewrite the .md and .png from an existing .json")
    parser.add_argument("--from-partial", metavar="DIR",
                        help="write results from the per-dataset files of an unfinished run")
    parser.add_argument("--child", nargs=2, metavar=("DATASET", "JSON"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = "/tmp/adapters_quick" if args.quick else os.path.join(RESULTS, "adapters")
    return args


# Per dataset: image size, source domain of the pretraining, batch size, epochs.
SETTINGS = {
    "omniglot": {"image_size": 32, "source": "Korean", "batch_size": 32, "epochs": 4,
                 "pretrain_epochs": 15},
    "digits": {"image_size": 16, "source": "original", "batch_size": 64, "epochs": 2,
               "pretrain_epochs": 6},
}


def load(name, args):
    if name == "omniglot":
        return load_omniglot_domains(args.omniglot_path, image_size=SETTINGS[name]["image_size"])
    if name == "digits":
        return load_digits_domains(image_size=SETTINGS[name]["image_size"])
    raise ValueError(f"Unknown dataset. Received: {name!r}")


def run_dataset(name, args):
    settings = SETTINGS[name]
    data = load(name, args)
    epochs = 1 if args.quick else (args.epochs or settings["epochs"])
    pretrain_epochs = 1 if args.quick else (args.pretrain_epochs or settings["pretrain_epochs"])
    batch_size = settings["batch_size"]
    source = data.domain_index(settings["source"])
    classes = list(data.num_classes)
    shape = data.image_shape
    width = args.width_factor
    lr, seed = args.learning_rate, args.seed
    report = {
        "dataset": name,
        "domains": list(data.names),
        "num_classes": classes,
        "train_sizes": data.sizes("train"),
        "test_sizes": data.sizes("test"),
        "image_shape": list(shape),
        "source_domain": data.names[source],
        "batch_size": batch_size,
        "epochs": epochs,
        "pretrain_epochs": pretrain_epochs,
        "compress_epochs": args.compress_epochs,
        "methods": {},
    }

    # Pretraining on the source domain alone.
    start = time.perf_counter()
    keras.utils.set_random_seed(seed)
    pretrained = methods.base_network(classes[source], shape, width, name="pretrained")
    source_data = data.select([source])
    methods.fit(pretrained, source_data, pretrain_epochs, batch_size, lr, seed)
    report["pretrain_test_accuracy"] = methods.accuracies(pretrained, source_data)
    report["pretrain_seconds"] = time.perf_counter() - start
    log(name, "pretrained", report["pretrain_test_accuracy"], start)

    # 1. Independent fine-tuned networks. One 5-domain model whose every weight is trainable
    # stands for the five networks (`fine_tune_each_domain`: reset to the pretrained weights
    # and a fresh optimizer state before each domain, trained on that domain alone), so domain
    # d's network is the shared convs + its BN row + its head, exactly a fine-tuned ResNet-26.
    # (One traced train step instead of five: tracing costs more than training here.)
    start = time.perf_counter()
    keras.utils.set_random_seed(seed + 1)
    finetune = methods.resnet26(classes, input_shape=shape, width_factor=width, name="finetune")
    transfer_weights(pretrained, finetune, source_domain=source)
    methods.compile_model(finetune, 1, lr)  # the schedule's length is set per domain
    accuracy = fine_tune_each_domain(
        finetune, data, epochs, batch_size, seed=seed, batching="per_domain",
        training_augmentation=True, callbacks=[methods.ScheduleLength()], verbose=0,
    )
    shared = int(parameter_report(finetune).shared)  # the shared convs
    total = methods.parameter_count(finetune) + (data.num_domains - 1) * shared
    record(report, "finetune", accuracy, total, None, start)
    report["methods"]["finetune"]["shared_conv_parameters"] = shared
    log(name, "finetune", accuracy, start)
    one_network = total / data.num_domains
    report["one_network_parameters"] = one_network

    # 2.-5. One multi-domain model each.
    trained = {}
    for method in ("frozen", "bn_only", "series", "parallel"):
        start = time.perf_counter()
        keras.utils.set_random_seed(seed + 10)
        model = methods.build_method(method, pretrained, classes, shape, width, source)
        methods.fit(model, data, epochs, batch_size, lr, seed)
        accuracy = methods.accuracies(model, data)
        record(report, method, accuracy, methods.parameter_count(model), model, start)
        trained[method] = model
        log(name, method, accuracy, start)

    # 6. Cross-domain SVD compression of the parallel adapters (+ optional short fine-tune).
    for rank in args.ranks:
        start = time.perf_counter()
        keras.utils.set_random_seed(seed + 20 + rank)
        compressed, per_layer, implementation = methods.compress(trained["parallel"], rank)
        before = methods.accuracies(compressed, data)
        accuracy = before
        if args.compress_epochs:
            methods.fit(compressed, data, args.compress_epochs, batch_size, lr / 10, seed + 1)
            accuracy = methods.accuracies(compressed, data)
            trained[f"parallel_svd_rank{rank}"] = compressed
        key = f"parallel_svd_rank{rank}"
        record(report, key, accuracy, methods.parameter_count(compressed), compressed, start)
        report["methods"][key].update(
            {
                "rank": rank,
                "accuracy_before_finetune": before,
                "mean_accuracy_before_finetune": float(np.mean(list(before.values()))),
                "compression": implementation,
                "layers": per_layer,
            }
        )
        log(name, key, accuracy, start)

    finalize(report)

    # Training step time: the trained models (their train steps are traced already; timing
    # changes their weights, so it comes after the evaluation), interleaved. The base network
    # is the pretrained one-domain ResNet-26, trained whole: a fine-tuning step.
    trained["finetune"] = pretrained
    report["step_time"] = time_steps(data, trained, source, batch_size, args)
    base_time = report["step_time"]["seconds"]["finetune"]
    for key, entry in report["methods"].items():
        seconds = report["step_time"]["seconds"].get(key)
        entry["step_time_ratio"] = None if seconds is None else seconds / base_time
    return report


def finalize(report):
    """Scores against the fine-tuned networks and parameter multiples of every method."""
    one_network = report["one_network_parameters"]
    baseline = report["methods"]["finetune"]["accuracy"]
    report["baseline_floored"] = []
    floored = {}
    for domain, value in baseline.items():
        # The score divides by the baseline error: a perfect baseline gets one test error.
        floor = 1.0 - 1.0 / report["test_sizes"][domain]
        if value > floor:
            report["baseline_floored"].append(domain)
        floored[domain] = min(value, floor)
    for entry in report["methods"].values():
        score = keras_mdn.decathlon_score(entry["accuracy"], floored)
        entry["score"] = score.total
        entry["score_per_domain"] = score.per_domain
        entry["parameter_multiple"] = entry["parameters"] / one_network
        entry.setdefault("step_time_ratio", None)
    return report


def time_steps(data, models, source, batch_size, args):
    """Seconds per train step of each model on one per-domain batch of the source domain."""
    images, labels = data.arrays("train", source)
    images, labels = images[:batch_size], labels[:batch_size]
    multi = ({"image": images, "domain": np.full(len(labels), source, np.int32)}, labels)
    single = ({"image": images, "domain": np.zeros(len(labels), np.int32)}, labels)
    batches = {key: (single if key == "finetune" else multi) for key in models}
    steps, rounds = (2, 2) if args.quick else (args.timing_steps, args.timing_rounds)
    seconds = methods.time_train_steps(models, batches, steps=steps, rounds=rounds)
    return {"batch_size": batch_size, "steps": steps, "rounds": rounds, "seconds": seconds}


def record(report, key, accuracy, parameters, model, start):
    """Adds a method's results to `report` (and saves the partial report of a child run)."""
    entry = {
        "accuracy": accuracy,
        "mean_accuracy": float(np.mean(list(accuracy.values()))),
        "parameters": int(parameters),
        "seconds": time.perf_counter() - start,
    }
    if model is not None:
        entry["parameter_report_total"] = methods.parameter_report_total(model)
    report["methods"][key] = entry
    if PARTIAL_PATH:
        with open(PARTIAL_PATH, "w") as f:
            json.dump(report, f, indent=1, default=float)


def log(dataset, what, accuracy, start):
    mean = float(np.mean(list(accuracy.values())))
    seconds = time.perf_counter() - start
    print(f"[{dataset}] {what}: mean test accuracy {mean:.4f} ({seconds:.0f} s)", flush=True)


def machine_note():
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "load_average": list(load) if load else None,
        "python": platform.python_version(),
        "versions": methods.version_note(),
    }


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        global PARTIAL_PATH
        name, path = args.child
        PARTIAL_PATH = path + ".partial"
        with open(path, "w") as f:
            json.dump(run_dataset(name, args), f, indent=1, default=float)
        return
    if args.from_partial:
        datasets = {}
        for name in args.datasets:
            for suffix in (".json", ".json.partial"):
                path = os.path.join(args.from_partial, name + suffix)
                if os.path.exists(path):
                    with open(path) as f:
                        datasets[name] = finalize(json.load(f))
                    datasets[name]["partial"] = suffix != ".json"
                    break
        results = {
            "command": "python benchmarks/adapters.py",
            "arguments": vars(args),
            "machine_start": machine_note(),
            "machine_end": machine_note(),
            "datasets": datasets,
            "seconds": None,
        }
        with open(args.output + ".json", "w") as f:
            json.dump(results, f, indent=1, default=float)
        write_outputs(results, args.output)
        return
    if args.from_json:
        with open(args.output + ".json") as f:
            write_outputs(json.load(f), args.output)
        return
    start = time.perf_counter()
    argv = sys.argv[1:] if argv is None else argv
    results = {
        "command": " ".join(["python benchmarks/adapters.py", *argv]),
        "arguments": vars(args),
        "machine_start": machine_note(),
        "datasets": run_datasets(args, argv),
    }
    results["machine_end"] = machine_note()
    results["seconds"] = time.perf_counter() - start
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    with open(args.output + ".json", "w") as f:
        json.dump(results, f, indent=1, default=float)
    write_outputs(results, args.output)


def run_datasets(args, argv):
    """Each dataset in its own process (`--jobs` at a time), or in this one with `--jobs 1`."""
    if args.jobs <= 1 or len(args.datasets) == 1:
        return {name: run_dataset(name, args) for name in args.datasets}
    results, running = {}, []
    pending = list(args.datasets)
    temporary = tempfile.mkdtemp(prefix="adapters_benchmark_")
    print(f"per-dataset results (partial ones: *.json.partial) in {temporary}", flush=True)
    while pending or running:
        while pending and len(running) < args.jobs:
            name = pending.pop(0)
            path = os.path.join(temporary, f"{name}.json")
            command = [sys.executable, os.path.abspath(__file__), *argv, "--child", name, path]
            running.append((name, path, subprocess.Popen(command)))
        name, path, process = running.pop(0)
        if process.wait() != 0:
            raise RuntimeError(f"The {name} run failed (exit code {process.returncode})")
        with open(path) as f:
            results[name] = json.load(f)
    return {name: results[name] for name in args.datasets}


def write_outputs(results, prefix):
    output.write_markdown(results, prefix + ".md")
    output.write_plot(results, prefix + ".png")
    print(f"wrote {prefix}.md/.json/.png")


if __name__ == "__main__":
    main()
