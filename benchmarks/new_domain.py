"""A fair new-domain protocol: leave one domain out, pretrain on the others, add it back.

For every rotation (each domain of a 5-domain set in turn is the new one): a ResNet-26
(width 0.25) is pretrained on the other four domains jointly (shared convs, per-domain
adapters, batch norms and heads, all trained), then the fifth domain is added with
`keras_mdn.surgery.add_domain` and learned by each method. Every training, the pretraining
included, runs to convergence on validation accuracy: SGD (momentum 0.9), learning rate x0.1
when validation accuracy stalls (`ReduceLROnPlateau`), `EarlyStopping` with
`restore_best_weights=True`, and a cap on the epochs. Test accuracy of the new domain, several
seeds of the new-domain training (mean and spread), per-domain parameters that train.

Methods (all from the same pretrained network; `closest` is
`keras_mdn.surgery.closest_domain`, the existing domain whose features separate the new
domain's classes best, the new domain's starting point unless said otherwise):

- `finetune`: every weight of the network trains (shared convs included) on the new domain;
- `frozen`: the closest domain's network frozen (batch norms too), a new head;
- `bn_only`: the new domain's batch norms and head (`train_only_domains(layers=[...])`);
- `parallel`: parallel adapters, batch norms and head of the new domain (`add_domain`'s
  default training state);
- `parallel_fresh`: the same, started from the initializers (zero adapters, unit batch norms)
  instead of the closest domain;
- `parallel_wd`: `parallel` with weight decay on the adapter kernels only (the adapters' own
  weight decay; Keras' `exclude_from_weight_decay` for every other variable);
- `series`: series adapters (a network pretrained with series adapters);
- `parallel_lowrank`: low-rank parallel adapters (`resnet26(rank=...)`, pretrained so).

The recipe variants below all start fresh (`add_domain`'s default, the digits' winner):

- `series_fresh`, `lowrank_fresh`: `series`, `parallel_lowrank` from the initializers;
- `parallel_grouplr`: `parallel_fresh` with the adapter kernels at `--adapter-lr-multiplier`
  (9) times the learning rate (`keras_mdn.optimizers.GroupLearningRates`): under one rate a
  1x1 adapter's output moves about 1/9 as fast per step as the 3x3 conv's it sits beside;
- `parallel_l2`: `parallel_fresh` with the authors' per-group coupled L2 (their README's
  adapter commands: `--wd1x1 1 --wd 5`, i.e. 1e-4 on the 1x1 adapters, 5e-4 on the batch
  norms and the head; `GroupLearningRates(l2=...)`, PyTorch's form: added to the gradient);
- `parallel_dropout`: `parallel_fresh` on a network pretrained with the authors' adapter
  dropout (`resnet26(adapter_dropout=...)`: 2-D dropout of the adapter's input, p 0.5 in
  their code), where this keras_mdn has it;
- `series_grouplr`, `lowrank_grouplr`, `dropout_grouplr`: `series_fresh`, `lowrank_fresh`,
  `parallel_dropout` with the adapter kernels (a low-rank adapter's two factors included) at
  `--adapter-lr-multiplier` times the rate, as `parallel_grouplr`.

Data: the digits domains (native 8x8) and Omniglot small1 (5 alphabets, 32x32). Alphabets outside
small1 are not on this machine, so "new alphabets never seen in any form" is not checked here.

Regenerate (long: every training runs to convergence; digits first, then Omniglot as the time
limit allows; results are saved after every run):

    nice python benchmarks/new_domain.py --time-limit 5400

Omniglot (12 training images per class: an epoch is 8-15 steps, so a longer patience):

    nice python benchmarks/new_domain.py --dataset omniglot --pretrain-max-epochs 60 \
        --max-epochs 80 --patience 10 --methods finetune frozen parallel_fresh \
        --seeds 0 --out benchmarks/results/new_domain_omniglot_s0

Several processes (other seeds, rotations or methods, each with its own `--out`) share the
pretrained networks through `--cache`; `--report --out benchmarks/results/new_domain_omniglot
--merge <their --out>...` writes one table.

`--report` rewrites the .md and .png from the .json.
"""

import argparse
import json
import os
import tempfile
import time

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_mdn  # noqa: E402
from keras_mdn import DomainBatchNormalization, DomainHead  # noqa: E402
from keras_mdn.datasets import load_digits_domains, load_omniglot_domains  # noqa: E402
from keras_mdn.models import resnet26  # noqa: E402
from keras_mdn.optimizers import GroupLearningRates  # noqa: E402
from keras_mdn.report import parameter_report  # noqa: E402
from keras_mdn.surgery import add_domain, closest_domain, train_only_domains  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")
OMNIGLOT_ZIP = os.path.normpath(os.path.join(
    os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "data", "omniglot",
    "images_background_small1.zip"))
METHODS = ("finetune", "frozen", "bn_only", "parallel", "parallel_fresh", "parallel_wd",
           "series", "parallel_lowrank", "series_fresh", "lowrank_fresh", "parallel_grouplr",
           "parallel_l2", "parallel_dropout", "series_grouplr", "lowrank_grouplr",
           "dropout_grouplr")
# Methods with the adapter kernels at `--adapter-lr-multiplier` times the learning rate.
GROUPLR = ("parallel_grouplr", "series_grouplr", "lowrank_grouplr", "dropout_grouplr")
# Methods that start the new domain from the closest existing domain (the others: fresh).
FROM_CLOSEST = ("finetune", "frozen", "bn_only", "parallel", "parallel_wd", "series",
                "parallel_lowrank")
ADAPTER_KERNELS = r".*adapter_(kernel|projection)"
LABELS = {"finetune": "full fine-tuning", "frozen": "frozen extractor (new head)",
          "bn_only": "BN + head", "parallel": "parallel adapters (from closest)",
          "parallel_fresh": "parallel adapters (fresh)",
          "parallel_wd": "parallel adapters + adapter weight decay",
          "series": "series adapters (from closest)",
          "parallel_lowrank": "low-rank parallel adapters (from closest)",
          "series_fresh": "series adapters (fresh)",
          "lowrank_fresh": "low-rank parallel adapters (fresh)",
          "parallel_grouplr": "parallel adapters (fresh), adapters at 9x lr",
          "parallel_l2": "parallel adapters (fresh), authors' per-group L2",
          "parallel_dropout": "parallel adapters (fresh), adapter dropout",
          "series_grouplr": "series adapters (fresh), adapters at 9x lr",
          "lowrank_grouplr": "low-rank parallel adapters (fresh), adapters at 9x lr",
          "dropout_grouplr": "parallel adapters (fresh), adapter dropout, adapters at 9x lr"}
# The pretrained network each method starts from: (adapter kind, low rank or None).
PRETRAINED = {"series": ("series", None), "parallel_lowrank": ("parallel", "rank"),
              "series_fresh": ("series", None), "lowrank_fresh": ("parallel", "rank"),
              "parallel_dropout": ("parallel_dropout", None), "series_grouplr": ("series", None),
              "lowrank_grouplr": ("parallel", "rank"),
              "dropout_grouplr": ("parallel_dropout", None)}
SETTINGS = {"digits": {"image_size": None, "batch_size": 64},  # the native 8x8
            "omniglot": {"image_size": 32, "batch_size": 32}}


# === Training to convergence ===


def method_optimizer(method, model, args):
    """SGD + momentum 0.9; the per-group variants through `GroupLearningRates`."""
    decay = args.adapter_weight_decay if method == "parallel_wd" else None
    optimizer = keras.optimizers.SGD(method_learning_rate(method, args), momentum=0.9,
                                     weight_decay=decay)
    if decay:
        optimizer.exclude_from_weight_decay(var_list=[
            v for v in model.trainable_variables if not v.path.endswith("adapter_kernel")
            and not v.path.endswith("adapter_projection")])
    if method in GROUPLR:
        return GroupLearningRates(optimizer,
                                  multipliers={ADAPTER_KERNELS: args.adapter_lr_multiplier})
    if method == "parallel_l2":  # every other trained variable: batch norms and head
        return GroupLearningRates(optimizer, l2={
            ADAPTER_KERNELS: 1e-4, rf"(?!{ADAPTER_KERNELS}$).*": 5e-4})
    return optimizer


def method_learning_rate(method, args):
    """`--method-learning-rate method=rate`, else `--learning-rate`."""
    rates = dict(pair.split("=") for pair in args.method_learning_rate or [])
    return float(rates.get(method, args.learning_rate))


def train(model, data, domains, seed, args, max_epochs, patience, optimizer=None):
    """SGD + momentum until validation accuracy stops improving; the best epoch's weights.

    Returns `(epochs run, best epoch, best validation accuracy)`.
    """
    batch_size = SETTINGS[args.dataset]["batch_size"]
    if optimizer is None:
        optimizer = keras.optimizers.SGD(args.learning_rate, momentum=0.9)
    model.compile(optimizer=optimizer, metrics=["accuracy"],
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    steps = data.steps_per_epoch("train", batch_size, batching="per_domain", domains=domains)
    train_data = data.dataset("train", domains=domains, batch_size=batch_size, seed=seed,
                              batching="per_domain", repeat=True)
    validation = data.dataset("validation", domains=domains, batch_size=256)
    callbacks = [
        keras.callbacks.ReduceLROnPlateau("val_accuracy", factor=0.1, mode="max",
                                          patience=max(1, patience // 2), min_lr=1e-5),
        keras.callbacks.EarlyStopping("val_accuracy", mode="max", patience=patience,
                                      restore_best_weights=True),
    ]
    history = model.fit(train_data, epochs=max_epochs, steps_per_epoch=steps,
                        validation_data=validation, callbacks=callbacks, verbose=0)
    accuracy = history.history["val_accuracy"]
    return len(accuracy), int(np.argmax(accuracy)) + 1, float(np.max(accuracy))


def pretrained_model(data, kind, rank, args):
    """The (untrained) ResNet-26 with `kind` adapters on domains 0..T-2."""
    extra = {}
    if kind == "parallel_dropout":
        kind, extra = "parallel", {"adapter_dropout": args.adapter_dropout}
    return resnet26([data.num_classes[d] for d in range(data.num_domains - 1)], adapter=kind,
                    rank=rank, input_shape=data.image_shape, width_factor=args.width_factor,
                    name=f"pretrained_{kind}{rank or ''}", **extra)


def pretrained_path(args, name, kind, rank):
    """Where a pretrained network and its info are kept between processes (`--cache`)."""
    key = (f"{args.dataset}_{name}_{kind}{rank or ''}_w{args.width_factor}_s{args.pretrain_seed}"
           f"_lr{args.learning_rate}_e{args.pretrain_max_epochs}p{args.pretrain_patience}")
    if kind == "parallel_dropout":
        key += f"_d{args.adapter_dropout}"
    return os.path.join(args.cache, key.replace(" ", "_").replace("/", "_"))


def pretrain(data, kind, rank, args):
    """A ResNet-26 with `kind` adapters trained from scratch on domains 0..T-2 (all weights)."""
    keras.utils.set_random_seed(args.pretrain_seed)
    old = list(range(data.num_domains - 1))
    model = pretrained_model(data, kind, rank, args)
    start = time.perf_counter()
    epochs, best, validation = train(model, data, old, args.pretrain_seed, args,
                                     args.pretrain_max_epochs, args.pretrain_patience)
    accuracy = keras_mdn.domain_accuracies(model, data, "test", domains=old)
    return model, {"kind": kind, "rank": rank, "epochs": epochs, "best_epoch": best,
                   "validation": validation, "test": accuracy,
                   "seconds": round(time.perf_counter() - start, 1)}


# === The methods ===


def method_model(method, pretrained, closest, data, seed):
    """The new-domain model of `method` with its training state (library calls only)."""
    new = data.num_domains - 1
    classes = data.num_classes[new]
    keras.utils.set_random_seed(seed)
    init_from = closest if method in FROM_CLOSEST else None
    model = add_domain(pretrained, num_classes=classes, init_from=init_from,
                       freeze_existing=method != "finetune")
    if method == "frozen":
        train_only_domains(model, [new], layers=[DomainHead])
    elif method == "bn_only":
        train_only_domains(model, [new], layers=[DomainHead, DomainBatchNormalization])
    return model


def trained_parameters(model, new):
    """Parameters the new domain trains: shared ones that train plus its own entries."""
    report = parameter_report(model)
    return int(report.shared_trainable + report.domains[new]["trainable"])


# === Runs ===


def rotations(data, names):
    """`{new domain name: data re-ordered so that it is the last domain}`."""
    out = {}
    for name in names:
        others = [n for n in data.names if n != name]
        out[name] = data.select(others + [name])
    return out


def run(args):
    if args.dataset == "digits":
        data = load_digits_domains(image_size=SETTINGS["digits"]["image_size"])
        if args.rotations is None:  # the domain unlike the others (a new label space) first
            args.rotations = ["parity", "rotated", "inverted", "mirrored", "original"]
    else:
        data = load_omniglot_domains(args.omniglot, image_size=SETTINGS["omniglot"]["image_size"])
    names = args.rotations or list(data.names)
    rotated = rotations(data, names)
    results = load_results(args.out)
    results.setdefault("runs", [])
    results.setdefault("pretrained", {})
    results.setdefault("loadavg", []).append(loadavg("start"))
    done = {(r["dataset"], r["new_domain"], r["method"], r["seed"]) for r in results["runs"]}
    cache = {}

    def pretrained_for(name, method):
        kind, rank = PRETRAINED.get(method, ("parallel", None))
        rank = args.rank if rank == "rank" else None
        key = (name, kind, rank)
        if key not in cache:
            rot = rotated[name]
            stored = pretrained_path(args, name, kind, rank)
            if os.path.isfile(stored + ".json"):  # pretrained by an earlier process
                with open(stored + ".json") as f:
                    info = json.load(f)
                model = pretrained_model(rot, kind, rank, args)
                model.load_weights(stored + ".weights.h5")
                print(f"pretrained {kind}{rank or ''} without {name}: loaded {stored}",
                      flush=True)
            else:
                model, info = pretrain(rot, kind, rank, args)
                new = rot.num_domains - 1
                images, labels = rot.arrays("train", new)
                closest = closest_domain(model, images, labels)
                info.update(closest=rot.names[closest.domain],
                            closest_scores={rot.names[d]: s for d, s in closest.scores.items()})
                os.makedirs(os.path.dirname(stored), exist_ok=True)
                model.save_weights(stored + ".weights.h5")
                with open(stored + ".json", "w") as f:
                    json.dump(info, f)
                print(f"pretrained {kind}{rank or ''} without {name}: {info['epochs']} epochs, "
                      f"test {info['test']}, closest {info['closest']}", flush=True)
            results["pretrained"][f"{args.dataset}/{name}/{kind}{rank or ''}"] = info
            save_results(args.out, results)
            cache[key] = (model, rot.names.index(info["closest"]))
        return cache[key]

    for name in names:  # rotation-major: a time limit leaves whole rotations, all seeds
        for seed in args.seeds:
            for method in args.methods:
                if (args.dataset, name, method, seed) in done:
                    continue
                if args.time_limit and time.perf_counter() - START > args.time_limit:
                    print(f"time limit: not starting {name} {method} seed {seed}", flush=True)
                    continue
                rot = rotated[name]
                new = rot.num_domains - 1
                pretrained, closest = pretrained_for(name, method)
                model = method_model(method, pretrained, closest, rot, seed)
                start = time.perf_counter()
                epochs, best, validation = train(model, rot, [new], seed, args,
                                                 args.max_epochs, args.patience,
                                                 method_optimizer(method, model, args))
                accuracy = keras_mdn.domain_accuracies(model, rot, "test", domains=[new])[name]
                results["runs"].append({
                    "dataset": args.dataset, "new_domain": name, "method": method,
                    "seed": seed, "test_accuracy": accuracy, "validation_accuracy": validation,
                    "epochs": epochs, "best_epoch": best, "init_from": (
                        rot.names[closest] if method in FROM_CLOSEST else None),
                    "trained_parameters": trained_parameters(model, new),
                    "learning_rate": method_learning_rate(method, args),
                    "seconds": round(time.perf_counter() - start, 1)})
                save_results(args.out, results)
                print(f"{args.dataset} new={name} seed={seed} {method}: test {accuracy:.4f} "
                      f"({epochs} epochs, best {best})", flush=True)
                keras.backend.clear_session()
    results["loadavg"].append(loadavg("end"))
    results["settings"] = {k: v for k, v in vars(args).items() if k not in ("report", "merge")}
    save_results(args.out, results)


def loadavg(when):
    with open("/proc/loadavg") as f:
        return {"when": when, "time": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
                "loadavg": f.read().split()[:3]}


def load_results(prefix):
    if os.path.isfile(prefix + ".json"):
        with open(prefix + ".json") as f:
            return json.load(f)
    return {}


def save_results(prefix, results):
    os.makedirs(os.path.dirname(prefix) or ".", exist_ok=True)
    with open(prefix + ".json.tmp", "w") as f:
        json.dump(results, f, indent=1)
    os.replace(prefix + ".json.tmp", prefix + ".json")


# === Report ===


def summary(runs, dataset):
    """{method: {"per_domain": {name: (mean, std, n)}, "mean", "std_seeds", ...}}.

    "mean" is the mean over the new domains the method ran on of its per-domain seed means;
    "std_seeds" the mean of its per-domain seed spreads.
    """
    runs = [r for r in runs if r["dataset"] == dataset]
    methods = [m for m in METHODS if any(r["method"] == m for r in runs)]
    domains = sorted({r["new_domain"] for r in runs})
    table = {}
    for method in methods:
        per_domain = {}
        for d in domains:
            values = [r["test_accuracy"] for r in runs
                      if r["new_domain"] == d and r["method"] == method]
            if values:
                per_domain[d] = (float(np.mean(values)), float(np.std(values)), len(values))
        params = [r["trained_parameters"] for r in runs if r["method"] == method]
        table[method] = {
            "per_domain": per_domain,
            "mean": float(np.mean([v[0] for v in per_domain.values()])),
            "std_seeds": float(np.mean([v[1] for v in per_domain.values()])),
            "trained_parameters": int(np.median(params)),
            "epochs": float(np.mean([r["epochs"] for r in runs if r["method"] == method])),
        }
    return table, domains


def report(args):
    results = load_results(args.out)
    for prefix in args.merge or []:  # runs of other processes (other rotations)
        other = load_results(prefix)
        results.setdefault("runs", []).extend(other.get("runs", []))
        results.setdefault("pretrained", {}).update(other.get("pretrained", {}))
        results.setdefault("loadavg", []).extend(other.get("loadavg", []))
    unique = {}
    for r in results.get("runs", []):  # one run per (domain, method, seed): the first one
        unique.setdefault((r["dataset"], r["new_domain"], r["method"], r["seed"]), r)
    results["runs"] = list(unique.values())
    runs = results.get("runs", [])
    lines = ["# New domains: adapters against fine-tuning, to convergence", "",
             "Protocol and methods: the docstring of `benchmarks/new_domain.py`. Written by "
             f"the script from `{os.path.basename(args.out)}.json`"
             + "".join(f", `{os.path.basename(m)}.json`" for m in args.merge or [])
             + "; load average at the start and end of each "
             "run: " + "; ".join(f"{x['when']} {x['time']}: {' '.join(x['loadavg'])}"
                                 for x in results.get("loadavg", [])) + ".", ""]
    for prefix in [args.out] + (args.merge or []):
        lines += [f"Note ({os.path.basename(prefix)}): {note}"
                  for note in load_results(prefix).get("notes", [])]
    settings = results.get("settings") or next(
        (load_results(p)["settings"] for p in args.merge or [] if "settings" in load_results(p)),
        {})
    if settings:
        lines += [f"Settings: max {settings.get('max_epochs')} epochs (patience "
                  f"{settings.get('patience')}) for a new domain, max "
                  f"{settings.get('pretrain_max_epochs')} (patience "
                  f"{settings.get('pretrain_patience')}) for pretraining; SGD lr "
                  f"{settings.get('learning_rate')}, momentum 0.9; width factor "
                  f"{settings.get('width_factor')}; adapter weight decay "
                  f"{settings.get('adapter_weight_decay')}; adapter lr multiplier "
                  f"{settings.get('adapter_lr_multiplier')}; adapter dropout "
                  f"{settings.get('adapter_dropout')}; low rank "
                  f"{settings.get('rank')}; new-domain seeds {settings.get('seeds')}, "
                  f"pretraining seed {settings.get('pretrain_seed')}.", ""]
    verdicts = []
    for dataset in ("digits", "omniglot"):
        if not any(r["dataset"] == dataset for r in runs):
            continue
        table, domains = summary(runs, dataset)
        lines += [f"## {dataset}", "",
                  "Test accuracy (%) of the new domain: mean ± std over seeds (n seeds). "
                  "Mean: over the new domains the method ran on (compare rows on the same "
                  "domains: the target lines below do). Parameters: trained for the new domain "
                  "(median over runs; heads differ with the class count).", "",
                  "| method | " + " | ".join(domains) + " | mean | std (seeds) | parameters "
                  "| % of fine-tuning | epochs |",
                  "|" + "---|" * (len(domains) + 6)]
        finetune = table.get("finetune", {}).get("trained_parameters")
        for method, row in table.items():
            cells = []
            for d in domains:
                if d in row["per_domain"]:
                    mean, std, n = row["per_domain"][d]
                    cells.append(f"{100 * mean:.1f} ± {100 * std:.1f} ({n})")
                else:
                    cells.append("-")
            mean = "-" if row["mean"] is None else f"{100 * row['mean']:.1f}"
            spread = "-" if row["std_seeds"] is None else f"{100 * row['std_seeds']:.1f}"
            share = (f"{100 * row['trained_parameters'] / finetune:.1f}"
                     if finetune else "-")
            lines.append(f"| {LABELS[method]} | " + " | ".join(cells)
                         + f" | {mean} | {spread} | {row['trained_parameters']:,} | {share} "
                         f"| {row['epochs']:.1f} |")
        lines.append("")
        pretrained = {k: v for k, v in results.get("pretrained", {}).items()
                      if k.startswith(dataset + "/")}
        if pretrained:
            lines += ["Pretrained networks (four domains), and the closest domain chosen for "
                      "the new one:", "", "| new domain / adapters | epochs | test accuracy "
                      "(old domains) | closest (scores) |", "|---|---|---|---|"]
            for key, info in pretrained.items():
                test = ", ".join(f"{k} {100 * v:.1f}" for k, v in info["test"].items())
                scores = ", ".join(f"{k} {v:.2f}" for k, v in info["closest_scores"].items())
                lines.append(f"| {key.split('/', 1)[1]} | {info['epochs']} | {test} | "
                             f"{info['closest']} ({scores}) |")
            lines.append("")
        verdicts.append(target_lines(dataset, table) + paired_lines(dataset, runs))
    for verdict in verdicts:
        lines += verdict
    lines += [f"Plot: `{os.path.basename(args.out)}.png` (mean test accuracy per method and "
              "new domain).", ""]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines))
    plot(runs, args.out + ".png")
    print(f"wrote {args.out}.md/.png")


def target_lines(dataset, table):
    """The issue's target, checked on the numbers: within 2 points of fine-tuning at <= 12 %
    of its parameters, >= 5 points above the frozen extractor, on the new domains all three
    methods ran on (seed means)."""
    lines = [f"Target on {dataset} (mean over the new domains where the method, fine-tuning "
             "and the frozen extractor all ran):", ""]
    if any(m not in table for m in ("finetune", "frozen")):
        return lines + ["- not enough runs to check", ""]
    for method in [m for m in table if m not in ("finetune", "frozen", "bn_only")]:
        row = table[method]
        common = [d for d in row["per_domain"] if d in table["finetune"]["per_domain"]
                  and d in table["frozen"]["per_domain"]]
        if not common:
            continue

        def mean(m, common=common):
            return 100 * np.mean([table[m]["per_domain"][d][0] for d in common])

        gap = mean("finetune") - mean(method)
        lead = mean(method) - mean("frozen")
        share = 100 * row["trained_parameters"] / table["finetune"]["trained_parameters"]
        held = gap <= 2 and share <= 12 and lead >= 5
        seeds = min(row["per_domain"][d][2] for d in common)
        lines.append(f"- {LABELS[method]} on {', '.join(common)} (>= {seeds} seeds each): "
                     f"{gap:+.1f} points behind fine-tuning, {share:.1f} % of its parameters, "
                     f"{lead:+.1f} points above the frozen extractor: "
                     f"{'met' if held else 'missed'}")
    return lines + [""]


def paired_lines(dataset, runs, reference="parallel_fresh"):
    """Each method against `reference` on the (new domain, seed) pairs both ran."""
    runs = [r for r in runs if r["dataset"] == dataset]
    accuracy = {(r["method"], r["new_domain"], r["seed"]): r["test_accuracy"] for r in runs}
    lines = []
    for method in [m for m in METHODS if m != reference]:
        pairs = [(d, s) for (m, d, s) in accuracy if m == method
                 and (reference, d, s) in accuracy]
        if pairs:
            diff = [100 * (accuracy[(method, *p)] - accuracy[(reference, *p)]) for p in pairs]
            lines.append(f"- {LABELS[method]} minus {LABELS[reference]}, paired over "
                         f"{len(pairs)} (new domain, seed) runs: {np.mean(diff):+.1f} points "
                         f"(std {np.std(diff):.1f}, {sum(d > 0 for d in diff)} higher, "
                         f"{sum(d < 0 for d in diff)} lower)")
    if lines:
        lines = [f"Paired with {LABELS[reference]} (same new domain, pretrained network and "
                 "seed):", ""] + lines + [""]
    return lines


def plot(runs, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = [d for d in ("digits", "omniglot") if any(r["dataset"] == d for r in runs)]
    if not datasets:
        return
    fig, axes = plt.subplots(1, len(datasets), figsize=(7 * len(datasets), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], datasets):
        table, domains = summary(runs, dataset)
        width = 0.8 / len(table)
        for i, (method, row) in enumerate(table.items()):
            xs = [j + i * width for j, d in enumerate(domains) if d in row["per_domain"]]
            means = [100 * row["per_domain"][d][0] for d in domains if d in row["per_domain"]]
            stds = [100 * row["per_domain"][d][1] for d in domains if d in row["per_domain"]]
            ax.bar(xs, means, width, yerr=stds, label=LABELS[method], capsize=2)
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(domains))])
        ax.set_xticklabels(domains, rotation=20, fontsize=8)
        ax.set_ylabel("new-domain test accuracy (%)")
        ax.set_title(f"{dataset}: leave one domain out, added with add_domain")
        low = min(100 * r["test_accuracy"] for r in runs if r["dataset"] == dataset)
        ax.set_ylim(max(0, low - 10), 100)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", choices=("digits", "omniglot"), default="digits")
    parser.add_argument("--omniglot", default=OMNIGLOT_ZIP)
    parser.add_argument("--rotations", nargs="+", default=None,
                        help="new domains to run (default: every domain in turn)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--pretrain-seed", type=int, default=0)
    parser.add_argument("--width-factor", type=float, default=0.25)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--patience", type=int, default=5)
    parser.add_argument("--pretrain-max-epochs", type=int, default=30)
    parser.add_argument("--pretrain-patience", type=int, default=4)
    parser.add_argument("--adapter-weight-decay", type=float, default=5e-4)
    parser.add_argument("--rank", type=int, default=4, help="rank of the low-rank adapters")
    parser.add_argument("--adapter-lr-multiplier", type=float, default=9.0)
    parser.add_argument("--method-learning-rate", nargs="+", default=None, metavar="METHOD=LR",
                        help="a new domain's learning rate for some methods (pretraining and "
                             "the others: --learning-rate)")
    parser.add_argument("--adapter-dropout", type=float, default=0.5)
    parser.add_argument("--time-limit", type=float, default=None,
                        help="seconds after which no new run starts (seed-major order)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "new_domain"))
    parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(),
                                                        "keras_mdn_new_domain"),
                        help="folder of the pretrained networks, shared between processes")
    parser.add_argument("--merge", nargs="+", default=None,
                        help="with --report: result prefixes of other processes to merge")
    parser.add_argument("--report", action="store_true",
                        help="only rewrite the .md and .png from the .json")
    return parser.parse_args(argv)


START = time.perf_counter()


def main(argv=None):
    args = parse_args(argv)
    if not args.report:
        import tensorflow as tf

        tf.config.threading.set_inter_op_parallelism_threads(1)
        run(args)
    report(args)


if __name__ == "__main__":
    main()
