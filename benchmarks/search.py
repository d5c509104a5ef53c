"""Benchmark: searched adapter placement and ranks against the paper's hand design.

Datasets: Omniglot small1 (5 alphabets, 32x32, source domain Korean) and the embedded digits
domains (16x16, source "original"). A ResNet-26 (`keras_mdn.models.resnet26`, width 0.25) is
pretrained once on the source domain; its shared convs are then frozen for every method
but fine-tuning. Methods, all trained with the same optimizer (Adam), learning rate, batch
size and epochs over every domain's training set:

1. independent fine-tuned networks (one whole ResNet-26 per domain, trained on its domain);
2. per-domain BN only (shared convs frozen);
3. the paper's hand design: parallel adapters on every conv, full rank;
4. the search: `keras_mdn.tuning` Bayesian optimisation over the four stages (stem, stage1-3),
   each taking none / BN only / parallel / series adapters at full rank or rank 4 or 16,
   `--trials` trials (objective: mean validation accuracy). Every Pareto-front point
   (validation accuracy against per-domain parameters) is reloaded and scored on test.

Target (issue 9): a front point within 1 point of the hand design's mean test accuracy with at
most half its per-domain parameters, or above its accuracy at no more parameters.
With `--workers`, the digits search is also run distributed (chief + 1 and 2 workers as
processes on 127.0.0.1, `keras_mdn.tuning.run_distributed`) to report trials per hour.

Full run (the lead's, alone on the machine; tens of minutes):
    timeout 5400 python benchmarks/search.py --workers
Smoke run (1 epoch, 3 trials; writes results/search_quick.*):
    python benchmarks/search.py --quick --workers
"""

import argparse
import json
import os
import platform
import sys
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import keras_tuner as kt  # noqa: E402
import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from keras_mdn import tuning  # noqa: E402
from keras_mdn.datasets import load_digits_domains, load_omniglot_domains  # noqa: E402
from keras_mdn.layers import DomainBatchNormalization  # noqa: E402
from keras_mdn.models import resnet26  # noqa: E402
from keras_mdn.report import parameter_report  # noqa: E402
from keras_mdn.scoring import domain_accuracies  # noqa: E402

RESULTS = os.path.join(ROOT, "benchmarks", "results")
OMNIGLOT_ZIP = os.path.join(ROOT, "..", "shared", "data", "omniglot",
                            "images_background_small1.zip")
SETTINGS = {
    "omniglot": {"image_size": 32, "source": "Korean", "batch_size": 32, "epochs": 4,
                 "pretrain_epochs": 15},
    "digits": {"image_size": 16, "source": "original", "batch_size": 64, "epochs": 2,
               "pretrain_epochs": 6},
}
LEARNING_RATE = 3e-3
# --quick trains a few dozen steps per model: eager steps cost less than tracing a ResNet-26
# train step (about 20 s of CPU each, see the README's known limitations).
COMPILE = {"jit_compile": False}
STAGES = ("stem", "stage1", "stage2", "stage3")
QUICK_NOTE = ("**Smoke run (`--quick`)**: one pretraining epoch, one epoch per method and trial, "
              "three trials, eager steps. It checks that the benchmark runs end to end; its "
              "accuracies (and so its target line) say nothing about the method: the target "
              "is judged on the full run.")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 epoch, 3 trials")
    parser.add_argument("--datasets", nargs="*", default=["omniglot", "digits"],
                        help="datasets to search (none with --workers: only the timing)")
    parser.add_argument("--omniglot-path", default=os.path.normpath(OMNIGLOT_ZIP))
    parser.add_argument("--trials", type=int, default=None, help="search trials (default 24)")
    parser.add_argument("--width-factor", type=float, default=0.25)
    parser.add_argument("--workers", action="store_true",
                        help="also time the digits search with 1 and 2 workers")
    parser.add_argument("--worker-trials", type=int, default=None)
    parser.add_argument("--output", default=None, help="results prefix")
    parser.add_argument("--worker-child", nargs=2, metavar=("DIRECTORY", "TRIALS"),
                        help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def load(name, args):
    if name == "omniglot":
        return load_omniglot_domains(args.omniglot_path, image_size=SETTINGS[name]["image_size"])
    return load_digits_domains()


def compile_options(quick):
    return {**COMPILE, "run_eagerly": True} if quick else dict(COMPILE)


def pretrained_base(data, source, epochs, batch_size, width_factor, quick=False):
    """ResNet-26 trained on the source domain; every domain's BN starts from the source's."""
    keras.utils.set_random_seed(0)
    model = resnet26(list(data.num_classes), input_shape=data.image_shape,
                     width_factor=width_factor, name="pretrained")
    model.compile(keras.optimizers.Adam(LEARNING_RATE),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  **compile_options(quick))
    train = data.dataset("train", domains=[source], batch_size=batch_size, repeat=True)
    steps = data.steps_per_epoch("train", batch_size, domains=[source])
    model.fit(train, epochs=epochs, steps_per_epoch=steps, verbose=0)
    index = data.domain_index(source)
    for layer in model.layers:
        if isinstance(layer, DomainBatchNormalization):
            for weight in layer.weights:
                rows = keras.ops.convert_to_numpy(weight)
                weight.assign(np.repeat(rows[index : index + 1], len(rows), axis=0))
    return model


def fixed_design(hypermodel, mode, epochs):
    """Trains one fixed design through the hypermodel: the same budget as a trial."""
    hp = kt.HyperParameters()
    hp.values.update({f"{group}/mode": mode for group in hypermodel.resolved.groups})
    hp.values.update({f"{group}/rank": "full" for group in hypermodel.resolved.groups})
    model = hypermodel.build(hp)
    metrics = hypermodel.fit(hp, model, epochs=epochs)
    test = domain_accuracies(model, hypermodel.data, split="test")
    return {"validation": metrics["mean_accuracy"], "test": float(np.mean(list(test.values()))),
            "test_per_domain": test, "parameters": metrics["parameters"],
            "seconds": metrics["seconds"]}


def fine_tuning(base, data, epochs, batch_size, quick=False):
    """One whole network per domain, all weights trained on that domain."""
    test, start = {}, time.perf_counter()
    for d, name in enumerate(data.names):
        model = tuning.multi_domain_base(base, data.num_classes)
        for layer in model.layers:
            layer.trainable = True
        model.compile(keras.optimizers.Adam(LEARNING_RATE),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      **compile_options(quick))
        train = data.dataset("train", domains=[d], batch_size=batch_size, repeat=True)
        steps = data.steps_per_epoch("train", batch_size, domains=[d])
        model.fit(train, epochs=epochs, steps_per_epoch=steps, verbose=0)
        test[name] = domain_accuracies(model, data, split="test", domains=[d])[name]
    report = parameter_report(model)
    return {"test": float(np.mean(list(test.values()))), "test_per_domain": test,
            "parameters": float(report.one_network), "seconds": time.perf_counter() - start}


def search_space():
    return tuning.SearchSpace(groups="stage", ranks=("full", 4, 16))


def run_dataset(name, args, directory):
    settings = SETTINGS[name]
    epochs = 1 if args.quick else settings["epochs"]
    pretrain_epochs = 1 if args.quick else settings["pretrain_epochs"]
    trials = args.trials or (3 if args.quick else 24)
    batch_size = settings["batch_size"]
    data = load(name, args)
    start = time.perf_counter()
    base = pretrained_base(data, settings["source"], pretrain_epochs, batch_size,
                           args.width_factor, quick=args.quick)
    pretrain_seconds = time.perf_counter() - start
    base.save(os.path.join(directory, f"{name}_base.keras"))
    hypermodel = tuning.MultiDomainHyperModel(base, data, search_space(),
                                              learning_rate=LEARNING_RATE, batch_size=batch_size,
                                              compile_options=compile_options(args.quick))
    result = {"dataset": str(data).splitlines()[0], "domains": list(data.names),
              "epochs": epochs, "pretrain_epochs": pretrain_epochs, "trials": trials,
              "batch_size": batch_size, "pretrain_seconds": pretrain_seconds}
    print(f"[{name}] references", flush=True)
    result["hand_design"] = fixed_design(hypermodel, "parallel", epochs)
    result["bn_only"] = fixed_design(hypermodel, "bn", epochs)
    result["fine_tuning"] = fine_tuning(base, data, epochs, batch_size, quick=args.quick)
    print(f"[{name}] search: {trials} trials", flush=True)
    tuner = tuning.make_tuner("bayesian", hypermodel, max_trials=trials, directory=directory,
                              project_name=f"{name}_search", overwrite=True)
    start = time.perf_counter()
    tuner.search(epochs=epochs, verbose=0)
    result["search_seconds"] = time.perf_counter() - start
    records = tuning.trial_records(tuner)
    result["records"] = [r.to_dict() for r in records]
    front = tuning.pareto_front(records)
    result["front"] = []
    for point in front:
        model = front.model(tuner, point)
        test = domain_accuracies(model, data, split="test")
        result["front"].append({"trial_id": point.trial_id,
                                "validation": point.value("mean_accuracy"),
                                "test": float(np.mean(list(test.values()))),
                                "test_per_domain": test,
                                "parameters": point.value("parameters"),
                                "hyperparameters": point.hyperparameters})
    result["target"] = check_target(result)
    front.plot(os.path.join(directory, f"{name}.png"), title=f"{name}: searched designs",
               reference={
                   "hand design (parallel, full)": (result["hand_design"]["parameters"],
                                                    result["hand_design"]["validation"]),
                   "BN only": (result["bn_only"]["parameters"],
                               result["bn_only"]["validation"]),
               })
    return result


def check_target(result):
    hand = result["hand_design"]
    cheaper = [p for p in result["front"]
               if p["parameters"] <= hand["parameters"] / 2 and p["test"] >= hand["test"] - 0.01]
    better = [p for p in result["front"]
              if p["parameters"] <= hand["parameters"] and p["test"] > hand["test"]]
    return {"passed": bool(cheaper or better),
            "within_1_point_at_half": [p["trial_id"] for p in cheaper],
            "more_accurate_at_no_more": [p["trial_id"] for p in better]}


def time_workers(args, directory):
    """Trials per hour of the digits search with 1 and 2 workers (processes, 127.0.0.1)."""
    trials = args.worker_trials or (4 if args.quick else 12)
    rates = {}
    for workers in (1, 2):
        project = os.path.join(directory, f"workers{workers}")
        command = [sys.executable, os.path.abspath(__file__), "--worker-child", project,
                   str(trials)] + (["--quick"] if args.quick else [])
        run = tuning.run_distributed(command, num_workers=workers,
                                     log_directory=os.path.join(project, "logs"),
                                     timeout=3600, max_restarts=0)
        records = tuning.load_records(project, "search")
        done = sum(r.completed for r in records)
        seconds = [r.value("seconds") for r in records if r.completed]
        rates[workers] = {"trials": done, "wall_seconds": run.seconds,
                          "trials_per_hour": 3600 * done / run.seconds,
                          "mean_trial_seconds": float(np.mean(seconds))}
        print(f"[workers] {workers}: {rates[workers]}", flush=True)
    return rates


def worker_child(args):
    """One process of the distributed timing run (chief or worker, from the environment)."""
    directory, trials = args.worker_child
    data = load_digits_domains()
    base_path = os.path.join(directory, "base.keras")
    if os.environ.get("KERASTUNER_TUNER_ID") == "chief":
        os.makedirs(directory, exist_ok=True)
        settings = SETTINGS["digits"]
        base = pretrained_base(data, settings["source"], 1, settings["batch_size"],
                               args.width_factor, quick=args.quick)
        base.save(base_path + ".tmp.keras")
        os.replace(base_path + ".tmp.keras", base_path)
    deadline = time.monotonic() + 600
    while not os.path.exists(base_path):  # workers wait for the chief's pretrained base
        if time.monotonic() > deadline:
            raise TimeoutError(f"No pretrained base at {base_path} after 600 s")
        time.sleep(1)
    base = keras.saving.load_model(base_path)
    hypermodel = tuning.MultiDomainHyperModel(base, data, search_space(),
                                              learning_rate=LEARNING_RATE,
                                              batch_size=SETTINGS["digits"]["batch_size"],
                                              compile_options=compile_options(args.quick))
    tuner = tuning.make_tuner("random", hypermodel, max_trials=int(trials),
                              directory=directory, project_name="search")
    tuner.search(epochs=1 if args.quick else SETTINGS["digits"]["epochs"], verbose=0)


def loadavg():
    try:
        with open("/proc/loadavg") as file:
            return file.read().strip()
    except OSError:
        return "n/a"


def write(report, prefix):
    with open(prefix + ".json", "w") as file:
        json.dump(report, file, indent=1)
    lines = ["# Adapter placement search benchmark", "",
             "Generated by `benchmarks/search.py` (protocol in its docstring). "
             f"Arguments: `{report['arguments']}`. Load average at start / end: "
             f"`{report['loadavg_start']}` / `{report['loadavg_end']}` (2 shared CPU cores: "
             "seconds are distorted, compare ratios).", ""]
    if "--quick" in report["arguments"]:
        lines += [QUICK_NOTE, ""]
    for name, result in report["datasets"].items():
        lines += [f"## {name}", "", f"{result['dataset']}; {result['epochs']} epochs per "
                  f"method and trial, {result['trials']} trials, batch {result['batch_size']}.",
                  "", "| method | mean test acc | per-domain parameters | seconds |",
                  "|---|---:|---:|---:|"]
        for key, label in (("fine_tuning", "1. fine-tuned networks (a whole network each)"),
                           ("bn_only", "2. per-domain BN only"),
                           ("hand_design", "3. hand design: parallel, every conv, full rank")):
            row = result[key]
            lines.append(f"| {label} | {row['test']:.4f} | {row['parameters']:,.0f} | "
                         f"{row['seconds']:.0f} |")
        for point in result["front"]:
            design = ", ".join(f"{k}={v}" for k, v in sorted(point["hyperparameters"].items()))
            lines.append(f"| 4. front trial {point['trial_id']} ({design}) | "
                         f"{point['test']:.4f} | {point['parameters']:,.0f} | |")
        completed = [r for r in result["records"] if r["status"] == "COMPLETED"]
        seconds = [r["metrics"]["seconds"] for r in completed]
        target = result["target"]
        lines += ["", f"Search: {len(completed)} trials in {result['search_seconds']:.0f} s "
                  f"({np.mean(seconds):.1f} s of training and evaluation per trial). "
                  f"Plot: `{os.path.basename(report['prefix'])}_{name}.png`.", "",
                  f"Target (front point within 1 point of the hand design at <= half its "
                  f"parameters, or more accurate at no more): "
                  f"**{'PASS' if target['passed'] else 'MISS'}** ({target})", ""]
    if report.get("workers"):
        lines += ["## Trials per hour, distributed (digits, chief + workers on 127.0.0.1)", "",
                  "| workers | trials | wall s | trials/hour | mean s per trial |",
                  "|---:|---:|---:|---:|---:|"]
        for workers, row in report["workers"].items():
            lines.append(f"| {workers} | {row['trials']} | {row['wall_seconds']:.0f} | "
                         f"{row['trials_per_hour']:.0f} | {row['mean_trial_seconds']:.1f} |")
        lines += ["", "Wall time includes process start-up (TensorFlow import), the chief's "
                  "pretraining and the chief's 20 s polling before it exits; on 2 shared cores "
                  "two workers compete for the same CPUs.", ""]
    with open(prefix + ".md", "w") as file:
        file.write("\n".join(lines))


def main(argv=None):
    args = parse_args(argv)
    if args.worker_child:
        return worker_child(args)
    prefix = args.output or os.path.join(RESULTS, "search_quick" if args.quick else "search")
    report = {"arguments": " ".join(sys.argv[1:]), "loadavg_start": loadavg(),
              "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "prefix": prefix,
              "datasets": {}}
    with tempfile.TemporaryDirectory() as directory:
        for name in args.datasets:
            report["datasets"][name] = run_dataset(name, args, directory)
            os.replace(os.path.join(directory, f"{name}.png"), f"{prefix}_{name}.png")
        if args.workers:
            report["workers"] = time_workers(args, directory)
    report["loadavg_end"] = loadavg()
    write(report, prefix)
    print(open(prefix + ".md").read())


if __name__ == "__main__":
    main()
