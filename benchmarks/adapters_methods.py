"""Models, weight transfer, training, compression, parameter counts and timing of the adapter
benchmark (benchmarks/adapters.py). Benchmark code only: the library does the modelling."""

import statistics
import time

import keras
import numpy as np

import keras_mdn
from keras_mdn.layers import DomainBatchNormalization, DomainHead, ResidualAdapter
from keras_mdn.models import resnet26

STATISTICS = ("moving_mean", "moving_variance")


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


def restart(model, steps):
    """Zeroes the optimizer's state (step count, momenta) and sets the schedule's length."""
    for variable in model.optimizer.variables:
        variable.assign(np.zeros(variable.shape, dtype=variable.dtype))
    _SCHEDULES[id(model)].total_steps.assign(float(steps))


def fit(model, data, epochs, batch_size, learning_rate, seed, augment=True, compile=True,
        domains=None):
    """Trains `model` for `epochs` epochs of per-domain batches over `domains` (all by
    default): the same budget for every method."""
    steps = data.steps_per_epoch("train", batch_size, batching="per_domain", domains=domains)
    if compile:
        compile_model(model, steps * epochs, learning_rate)
    else:
        restart(model, steps * epochs)
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
    """Top-1 accuracy per domain name, in batches of one fixed shape (one traced predict)."""
    result = {}
    for d, name in enumerate(data.names):
        if domains is not None and d not in domains:
            continue
        images, labels = data.arrays(split, d)
        classes = data.num_classes[d]
        correct = 0
        for start in range(0, len(labels), batch_size):
            x = images[start : start + batch_size]
            n = len(x)
            if n < batch_size:  # pad, so that the predict function is traced once
                x = np.concatenate([x, np.repeat(x[-1:], batch_size - n, axis=0)])
            inputs = {"image": x, "domain": np.full(batch_size, d, dtype=np.int32)}
            logits = np.asarray(model.predict_on_batch(inputs))[:n]
            predictions = np.argmax(logits[:, :classes], axis=1)
            correct += int(np.sum(predictions == labels[start : start + n]))
        result[name] = correct / len(labels)
    return result


# === Models of the methods, from the pretrained base network ===


def base_network(num_classes, input_shape, width_factor, name="base"):
    """The base network: a one-domain ResNet-26, everything trainable."""
    return resnet26([num_classes], input_shape=input_shape, width_factor=width_factor, name=name)


def transfer(source, target, source_domain=None):
    """Copies a pretrained one-domain ResNet-26 into `target` (any adapter kind, T domains).

    Shared 3x3 convs: copied. Every per-domain BN row: the source's BN (gamma, beta, moving
    statistics). Head: the source's head goes to `source_domain` (the domain it was trained
    on), the other domains keep their fresh initialisation. Adapters stay at their zero
    initialisation, so every domain starts as the pretrained network.
    """
    for layer in source.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _conv_of(target.get_layer(layer.name)).kernel.assign(layer.kernel)
        elif isinstance(layer, DomainBatchNormalization):
            target_bn = target.get_layer(layer.name)
            for variable, source_variable in zip(target_bn.weights, layer.weights, strict=True):
                rows = np.repeat(np.asarray(source_variable), variable.shape[0], axis=0)
                variable.assign(rows)
        elif isinstance(layer, DomainHead) and source_domain is not None:
            head = target.get_layer(layer.name)
            start, n = head.offsets[source_domain], head.num_classes[source_domain]
            if n != layer.num_classes[0]:
                raise ValueError("The source head and the source domain differ in classes")
            kernel = np.array(head.kernel)
            kernel[:, start : start + n] = np.asarray(layer.kernel)
            head.kernel.assign(kernel)
            bias = np.array(head.bias)
            bias[start : start + n] = np.asarray(layer.bias)
            head.bias.assign(bias)


def _width_factor(model):
    return model.get_layer("stem_conv").filters / 32


def _conv_of(layer):
    return layer.layer if isinstance(layer, ResidualAdapter) else layer


def build_method(method, pretrained, num_classes, input_shape, width_factor, source_domain):
    """The multi-domain model of one method (not `finetune`), initialised from `pretrained`."""
    if method == "frozen":
        return frozen_extractor(pretrained, num_classes, input_shape, source_domain)
    adapter = {"bn_only": None, "series": "series", "parallel": "parallel"}[method]
    model = resnet26(
        list(num_classes),
        adapter=adapter,
        input_shape=input_shape,
        width_factor=width_factor,
        freeze_shared=True,
        name=method,
    )
    transfer(pretrained, model, source_domain)
    return model


def frozen_extractor(pretrained, num_classes, input_shape, source_domain):
    """The pretrained network up to its pooled features, frozen (its BN included), shared by
    every domain, with a trainable `DomainHead` on top."""
    # A fresh copy (not clone_model: that recompiles the clone with our optimizer's config).
    copy = base_network(pretrained.get_layer("head").num_classes[0], input_shape,
                        _width_factor(pretrained), name="frozen_base")
    copy.set_weights(pretrained.get_weights())
    features = keras.Model(copy.inputs, copy.get_layer("pool").output, name="frozen_features")
    features.trainable = False
    image = keras.Input(input_shape, name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    pooled = features([image, keras.ops.zeros_like(domain)])
    head = DomainHead(list(num_classes), name="head")
    model = keras.Model([image, domain], head(pooled, domain), name="frozen")
    source_head = pretrained.get_layer("head")
    start, n = head.offsets[source_domain], head.num_classes[source_domain]
    kernel, bias = np.array(head.kernel), np.array(head.bias)
    kernel[:, start : start + n] = np.asarray(source_head.kernel)
    bias[start : start + n] = np.asarray(source_head.bias)
    head.kernel.assign(kernel)
    head.bias.assign(bias)
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
    """Parameters of `model`, BN moving statistics excluded (they are buffers, not weights)."""
    return int(
        sum(
            int(np.prod(v.shape))
            for v in model.weights
            if not any(v.path.endswith(s) for s in STATISTICS)
        )
    )


def parameter_report_total(model):
    """`keras_mdn.report.parameter_report(model).total` when the library has the report."""
    try:
        from keras_mdn.report import parameter_report
    except ImportError:
        return None
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
