"""Search adapter placement and ranks on the digits domains; print the Pareto front.

1. A small CNN (4 conv-BN-ReLU units) is pretrained once on domain "original": the shared
   weights every trial starts from.
2. A KerasTuner search (Bayesian optimisation by default) over two groups of convs (shallow,
   deep): each group takes no per-domain parameters, per-domain batch norms only, parallel or
   series adapters, at full rank or rank 4. Every trial trains only its domain-specific
   parameters on the five domains; designs costing more per domain than `--budget`
   parameters are rejected before they train.
3. The Pareto front (mean validation accuracy against per-domain parameters) is printed,
   plotted, and the most accurate front point within half the hand design's per-domain
   parameters (parallel adapters everywhere, full rank) is saved with its test accuracies.

Run: `python examples/search_digits.py` (about 3 minutes on 2 CPU cores). Writes
`saved_models/search_digits/` (front.png, front.md, chosen.keras, the search state).
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

from keras_mdn import tuning  # noqa: E402
from keras_mdn.datasets import load_digits_domains  # noqa: E402
from keras_mdn.report import parameter_report  # noqa: E402
from keras_mdn.scoring import domain_accuracies  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=3, help="epochs per trial")
    parser.add_argument("--tuner", default="bayesian", choices=sorted(tuning.tuners.TUNERS))
    parser.add_argument("--budget", type=float, default=6_000,
                        help="per-domain parameters above which a design is rejected")
    parser.add_argument("--output", type=Path, default=ROOT / "saved_models" / "search_digits")
    return parser.parse_args()


def pretrained_cnn(data, epochs=4):
    """A plain single-domain Keras CNN trained on the first domain."""
    image = keras.Input(data.image_shape, name="image")
    x = image
    for index, (filters, strides) in enumerate([(16, 1), (32, 2), (32, 1), (64, 2)]):
        x = keras.layers.Conv2D(filters, 3, strides=strides, padding="same", use_bias=False,
                                name=f"conv{index}")(x)
        # momentum 0.9: each domain's moving statistics settle within a short trial.
        x = keras.layers.BatchNormalization(momentum=0.9, name=f"bn{index}")(x)
        x = keras.layers.ReLU(name=f"relu{index}")(x)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    logits = keras.layers.Dense(data.num_classes[0], name="classifier")(x)
    model = keras.Model(image, logits, name="digits_cnn")
    images, labels = data.arrays("train", 0)
    model.compile(keras.optimizers.Adam(3e-3),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(images, labels, epochs=epochs, batch_size=64, verbose=2)
    return model


def main():
    args = parse_args()
    keras.utils.set_random_seed(0)
    data = load_digits_domains()
    print(data)
    print("\n== 1. Pretraining the shared CNN on domain 'original' ==")
    base = pretrained_cnn(data)

    print("\n== 2. Searching placement, kind and rank per group ==")
    space = tuning.SearchSpace(groups="depth", num_groups=2, ranks=("full", 4))
    hypermodel = tuning.MultiDomainHyperModel(
        base, data, space, budget=tuning.Budget("parameters", args.budget)
    )
    print(f"groups: {hypermodel.resolved.groups}")
    tuner = tuning.make_tuner(args.tuner, hypermodel, max_trials=args.trials,
                              directory=args.output, project_name="search", overwrite=True)
    tuner.search(epochs=args.epochs, verbose=0)
    records = tuning.trial_records(tuner)
    rejected = [r for r in records if r.status == "FAILED"]
    completed = [r for r in records if r.completed]
    seconds = sum(r.value("seconds") for r in completed)
    print(f"{len(completed)} trials trained ({seconds:.0f} s, "
          f"{seconds / max(len(completed), 1):.1f} s each), {len(rejected)} rejected:")
    for record in rejected:
        print(f"  trial {record.trial_id}: {record.reason}")

    print("\n== 3. Pareto front: mean validation accuracy vs per-domain parameters ==")
    front = tuning.pareto_front(records, cost="parameters")
    print(front.table())
    hand = tuning.place(tuning.multi_domain_base(base, data.num_classes),
                        tuning.Design.uniform(hypermodel.resolved, "parallel"))
    hand_parameters = parameter_report(hand).domains[0]["parameters"]
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "front.md").write_text(front.table() + "\n")
    front.plot(args.output / "front.png", title="digits: adapter search")
    print(f"plot: {args.output / 'front.png'}")
    try:
        chosen = front.best_within(hand_parameters / 2)
    except ValueError:
        chosen = front.points[-1]
    print(f"\nhand design (parallel everywhere, full rank): {hand_parameters:,} parameters "
          f"per domain; chosen front point: trial {chosen.trial_id}, "
          f"{chosen.value('parameters'):,.0f} parameters per domain, mean validation "
          f"accuracy {chosen.value('mean_accuracy'):.3f}")
    model = front.model(tuner, chosen)
    test = domain_accuracies(model, data, split="test")
    print("test accuracy: " + ", ".join(f"{name} {a:.3f}" for name, a in test.items()))
    path = args.output / "chosen.keras"
    model.save(path)
    print(f"saved {path} (export it with keras_mdn.export.export_all)")


if __name__ == "__main__":
    main()
