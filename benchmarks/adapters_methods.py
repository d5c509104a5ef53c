"""Models, weight transfer, training, compression, parameter counts and timing of the adapter
benchmark (benchmarks/adapters.py). Benchmark code only: the library does the modelling."""

import statistics
import time

import keras
import numpy as np

import keras_mdn
from keras_mdn.models import resnet26
from keras_mdn.report import parameter_report
from keras_mdn.surgery import batch_norms_only, frozen_features, transfer_weights

# === Training ===


class CosineSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Cosine decay to 0 over `total_steps`, held in a variable so that one traced train step
    serves several runs of different lengths (the fine-tuned networks)."""

    def __init__(self, learning_rate, total_steps):
        self.learning_rate = float(learning_rate)
        self.total_steps = keras.Variable(float(total_steps), trainable=False, name="total_steps")

    def __call__(self, step):
        progress = keras.ops.minimum(
            keras.ops.cast(step, "float32") / keras.ops.maximum(self.total_steps, 1.0), 1.0
        )
        return self.learning_rate * 0.5 * (1.0 + keras.ops.cos(np.pi * progress))

    def get_config(self):
        return {"learning_rate": self.learning_rate, "total_steps": float(self.total_steps)}


_SCHEDULES = {}


def compile_model(model, steps, learning_rate):
    """SGD + momentum 0.9 with a cosine decay to zero over `steps`: the same for every method."""
    schedule = _SCHEDULES[id(model)] = CosineSchedule(learning_rate, steps)
    model.compile(
        optimizer=keras.optimizers.SGD(schedule, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


class ScheduleLength(keras.callbacks.Callback):
    """Sets the model's `CosineSchedule` to the length of each `fit` (steps x epochs) when it
    starts: the fine-tuned networks share one model and one traced step
    (`keras_mdn.baselines.fine_tune_each_domain`), and their domains differ in size."""

    def on_train_begin(self, logs=None):
        steps = self.params["steps"] * self.params["epochs"]
        _SCHEDULES[id(self.model)].total_steps.assign(float(steps))


def fit(model, data, epochs, batch_size, learning_rate, seed, augment=True, domains=None):
    """Trains `model` for `epochs` epochs of per-domain batches over `domains` (all by
    default): the same budget for every method."""
    steps = data.steps_per_epoch("train", batch_size, batching="per_domain", domains=domains)
    compile_model(model, steps * epochs, learning_rate)
    dataset = data.dataset(
        "train",
        domains=domains,
        batch_size=batch_size,
        seed=seed,
        batching="per_domain",
        repeat=True,
        training_augmentation=augment,
    )
    model.fit(dataset, epochs=epochs, steps_per_epoch=steps, verbose=0)
    return steps * epochs


def accuracies(model, data, split="test", domains=None, batch_size=128):
    """`keras_mdn.domain_accuracies` (batches of one shape: one traced predict)."""
    return keras_mdn.domain_accuracies(model, data, split, batch_size=batch_size, domains=domains)


# === Models of the methods, from the pretrained base network ===


def base_network(num_classes, input_shape, width_factor, name="base"):
    """The base network: a one-domain ResNet-26, everything trainable."""
    return resnet26([num_classes], input_shape=input_shape, width_factor=width_factor, name=name)


def build_method(method, pretrained, num_classes, input_shape, width_factor, source_domain):
    """The multi-domain model of one method (not `finetune`), initialised from `pretrained`:
    library baselines for "frozen" and "bn_only", `resnet26` + `transfer_weights` for the
    adapters (shared convs frozen, every domain's BN from the pretrained network, the source
    domain's head from its head)."""
    num_classes = list(num_classes)
    if method == "frozen":
        return frozen_features(pretrained, num_classes, source_domain=source_domain,
                               name="frozen")
    if method == "bn_only":
        return batch_norms_only(pretrained, num_classes, source_domain=source_domain,
                                name="bn_only")
    model = resnet26(num_classes, adapter=method, input_shape=input_shape,
                     width_factor=width_factor, freeze_shared=True, name=method)
    transfer_weights(pretrained, model, source_domain=source_domain)
    return model


# === Cross-domain SVD compression ===


def compress(model, rank):
    """`keras_mdn.surgery.compress_adapters(model, rank=rank)`: the compressed model, the
    per-layer rows of its report (rank kept, relative reconstruction error, ...) and the name
    of the implementation."""
    from keras_mdn.surgery import compress_adapters

    compressed, layers = compress_adapters(model, rank=rank)
    return compressed, [dict(row) for row in layers], "keras_mdn.surgery.compress_adapters"


# === Parameter counts ===


def parameter_count(model):
    """Parameters of `model`, BN moving statistics excluded: `parameter_report(model).total`."""
    return int(parameter_report(model).total)


def parameter_report_total(model):
    """`keras_mdn.report.parameter_report(model).total` when the library has the report."""
    try:
        return int(parameter_report(model).total)
    except Exception as error:  # a report that fails is a library problem we record
        return f"error: {type(error).__name__}: {error}"


# === Training-step timing ===


def time_train_steps(models, batches, steps=10, rounds=7, warmup=3):
    """Median seconds per training step of each model, measured interleaved.

    `models` maps a key to a compiled model, `batches` a key to `(inputs, labels)`. Every
    round times `steps` consecutive `train_on_batch` calls of each model in turn (so load
    changes on a shared machine hit every model alike); the result is the median over rounds.
    """
    for key, model in models.items():
        for _ in range(warmup):
            model.train_on_batch(*batches[key])
    per_round = {key: [] for key in models}
    for _ in range(rounds):
        for key, model in models.items():
            inputs, labels = batches[key]
            start = time.perf_counter()
            for _ in range(steps):
                model.train_on_batch(inputs, labels)
            per_round[key].append((time.perf_counter() - start) / steps)
    return {key: statistics.median(values) for key, values in per_round.items()}


def version_note():
    backend = keras.backend.backend()
    return f"keras {keras.__version__}, backend {backend}, keras_mdn {keras_mdn.__version__}"
