"""Main example: one ResNet-26 with parallel residual adapters serving five digit domains.

The embedded default data (scikit-learn's 8x8 digits, five domains made by fixed transforms,
one of them with a different label space) trains in about a minute on a laptop CPU:

1. a shared network is pretrained on the first domain ("original");
2. the baseline: the pretrained network fine-tuned, all weights, on each domain separately
   (what the Visual Decathlon calls fine-tuning: one full network per domain), with
   `keras_mdn.baselines.fine_tune_each_domain`;
3. the multi-domain network: the pretrained 3x3 convs are shared and frozen, and each domain
   learns only its parallel adapters, batch norms and head, on batches of one domain each;
4. per-domain test accuracy, the decathlon score with fine-tuning as the baseline, the
   parameter cost, and the model saved under `saved_models/` with its SavedModel and its
   phone export (the fold-on-switch TFLite layout and one pack per domain).

Run: `python examples/train_digits.py` (see the README for the set-up command).
"""

import argparse
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

import keras_mdn  # noqa: E402
from keras_mdn.baselines import fine_tune_each_domain  # noqa: E402
from keras_mdn.datasets import load_digits_domains  # noqa: E402
from keras_mdn.models import plain_resnet26, resnet26  # noqa: E402
from keras_mdn.report import parameter_report  # noqa: E402
from keras_mdn.scoring import domain_accuracies  # noqa: E402
from keras_mdn.surgery import transfer_weights  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6, help="epochs of each training phase")
    parser.add_argument("--width-factor", type=float, default=0.25)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--output", type=Path, default=ROOT / "saved_models")
    parser.add_argument("--no-export", action="store_true", help="skip the TFLite exports")
    return parser.parse_args()


def compile_model(model, learning_rate):
    model.compile(
        optimizer=keras.optimizers.SGD(learning_rate, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")],
    )


def train(model, data, domains, args, learning_rate=0.05, with_domain=True):
    compile_model(model, learning_rate)
    train_set = data.dataset("train", domains=domains, batch_size=args.batch_size, repeat=True,
                             with_domain=with_domain)
    steps = data.steps_per_epoch("train", batch_size=args.batch_size, domains=domains)
    model.fit(train_set, epochs=args.epochs, steps_per_epoch=steps, verbose=2)


def main():
    args = parse_args()
    keras.utils.set_random_seed(0)
    data = load_digits_domains()
    print(data)

    print("\n== 1. Pretraining the shared network on domain 'original' ==")
    original = data.select(["original"])
    # A one-domain ResNet-26 of plain Keras layers.
    pretrained = plain_resnet26(original.num_classes[0], input_shape=data.image_shape,
                                width_factor=args.width_factor, name="digits_pretrained")
    train(pretrained, original, None, args, with_domain=False)

    print("\n== 2. Baseline: fine-tuning a full copy of the network per domain ==")
    # One model, every weight trainable, holds the five fine-tuned networks in turn (a domain
    # reads the shared convs and its own batch norms and head): each domain trains alone from
    # the pretrained weights, and one traced training step serves all five.
    baseline = resnet26(data.num_classes, adapter=None, input_shape=data.image_shape,
                        width_factor=args.width_factor, name="digits_finetuned")
    transfer_weights(pretrained, baseline, source_domain=0)  # 'original' keeps its classifier
    compile_model(baseline, learning_rate=0.02)
    finetuned = fine_tune_each_domain(baseline, data, epochs=args.epochs,
                                      batch_size=args.batch_size, verbose=0)
    print("fine-tuned test accuracy: "
          + ", ".join(f"{name} {accuracy:.3f}" for name, accuracy in finetuned.items()))

    print("\n== 3. Parallel residual adapters on the frozen shared network ==")
    model = resnet26(data.num_classes, adapter="parallel", input_shape=data.image_shape,
                     width_factor=args.width_factor, freeze_shared=True, name="digits_parallel")
    transfer_weights(pretrained, model)  # shared convs; every domain's BNs from the pretrained
    train(model, data, None, args)
    adapters = domain_accuracies(model, data)

    print("\n== 4. Results ==")
    score = keras_mdn.decathlon_score(adapters, baseline=finetuned)
    print(f"{'domain':<10} {'fine-tuned':>10} {'adapters':>10} {'score':>7}")
    for name in data.names:
        print(
            f"{name:<10} {finetuned[name]:>10.3f} {adapters[name]:>10.3f} "
            f"{score.per_domain[name]:>7.0f}"
        )
    print(f"decathlon-style score: {score.total:.0f} (fine-tuning scores {250 * len(data.names)})")
    report = parameter_report(model)
    print(report)
    print(
        f"cost for {data.num_domains} domains: {report.cost_multiple:.2f}x one network "
        f"(fine-tuning: {data.num_domains}.00x)"
    )

    args.output.mkdir(parents=True, exist_ok=True)
    path = args.output / "digits_parallel_adapters.keras"
    model.save(path)
    print(f"saved {path}")
    if not args.no_export:
        export(model, data, args.output)


def export(model, data, output):
    """Writes the phone-ready exports and checks one layout on the LiteRT interpreter."""
    try:
        from keras_mdn.export import export_all, load
    except ImportError as error:  # the export extra (TensorFlow, ai-edge-litert) is optional
        print(f"export skipped: {error}")
        return
    directory = output / "digits_parallel_adapters_export"
    # The SavedModel and the phone layout `load` defaults to; `export_all` without `layouts`
    # also writes the folded, multi-signature and swappable TFLite layouts.
    manifest = export_all(model, directory, domains=data.names,
                          layouts=("saved_model", "fold_on_switch"))
    print(f"exported to {directory}: layouts {sorted(manifest['layouts'])}")
    images, labels = data.arrays("test", data.names[-1])
    domain = data.num_domains - 1
    # The default layout, fold-on-switch: one network file plus a small pack per domain; a
    # switch refolds the domain's pack into the network, which then runs at the base speed.
    app = load(directory)
    logits = app.predict(images[:8], domain=domain)
    keras_logits = model.predict_on_batch(
        {"image": images[:8], "domain": keras.ops.full((8,), domain, "int32")}
    )
    classes = data.num_classes[domain]
    error = abs(logits[:, :classes] - keras.ops.convert_to_numpy(keras_logits)[:, :classes]).max()
    print(f"LiteRT fold-on-switch layout, domain {data.names[domain]!r}: max |error| {error:.2e}")


if __name__ == "__main__":
    main()
