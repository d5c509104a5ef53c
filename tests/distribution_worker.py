"""Multi-device runs for tests/test_distribution.py, each in a fresh process.

`python -m tests.distribution_worker tensorflow|jax DEVICES` sets up DEVICES virtual CPU
devices (before the backend is imported, which is why this runs in a subprocess), trains the
same tiny model with every keras_mdn layer on one device and on all of them, and prints one
JSON line `RESULT {...}` of case name -> maximum absolute difference (or an error text).
"""

import json
import os
import sys

T = 4
CLASSES = [3] * T
SHAPE = (6, 6, 3)
# A global batch of 8 over 4 replicas (2 examples each): domain 0 only on replica 0, domain 1
# split over replicas 1 and 2, domain 2 only on replica 3, domain 3 absent.
MIXED = [0, 0, 1, 1, 1, 2, 2, 2]
UNIFORM = [1] * 8


def build(keras, momentum=0.5):
    from keras_mdn import (
        DomainBatchNormalization,
        DomainHead,
        FactorizedConv2D,
        FactorizedDense,
        ResidualAdapter,
    )

    keras.utils.set_random_seed(0)

    def conv(name):
        return keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name=name)

    def norm(name):
        return DomainBatchNormalization(T, momentum=momentum, name=name)

    image = keras.Input(SHAPE, name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    x = ResidualAdapter(conv("conv1"), T, adapter_initializer="random_normal",
                        name="conv1")(image, domain)
    x = keras.layers.ReLU()(norm("bn1")(x, domain))
    series = ResidualAdapter(conv("conv2"), T, mode="series", norm_momentum=momentum,
                             adapter_initializer="random_normal", name="conv2")
    x = norm("bn2")(series(x, domain), domain)
    x = FactorizedConv2D(4, 3, num_tasks=T, rank=2, padding="same", name="fconv")(x, task=domain)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = FactorizedDense(8, num_tasks=T, factorization="laf", rank=2, activation="relu",
                        name="fdense")(x, task=domain)
    logits = DomainHead(CLASSES, name="head")(x, domain)
    model = keras.Model([image, domain], logits)
    model.compile(
        optimizer=keras.optimizers.SGD(0.1, momentum=0.9),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def data(batches):
    """Images, domains and labels of consecutive global batches with the given domains."""
    import numpy as np

    r = np.random.default_rng(1)
    d = np.concatenate([np.asarray(b, "int32") for b in batches])
    x = r.normal(size=(len(d), *SHAPE)).astype("float32")
    y = r.integers(0, 3, size=len(d))
    return x, d, y


def weights(model):
    import numpy as np

    return {w.path: np.asarray(w.numpy() if hasattr(w, "numpy") else w) for w in model.weights}


def max_difference(a, b):
    import numpy as np

    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def fit(model, batches=(MIXED, UNIFORM, MIXED)):
    """Trains on one mixed, one one-domain and one mixed global batch; the weights after."""
    x, d, y = data(batches)
    model.fit([x, d], y, batch_size=len(batches[0]), epochs=1, shuffle=False, verbose=0)
    return weights(model)


def absent_unchanged(keras, trained, domain=3):
    """Moving statistics of a domain in no batch: exactly their initial values."""
    fresh = weights(build(keras))
    keys = [k for k in trained if "moving" in k]
    return max(float(abs(trained[k][domain] - fresh[k][domain]).max()) for k in keys)


def run_tensorflow(devices):
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * devices
    )
    import keras
    import numpy as np

    names = [f"/cpu:{i}" for i in range(devices)]
    strategy = tf.distribute.MirroredStrategy(names)
    results = {}
    single = fit(build(keras))
    with strategy.scope():
        model = build(keras)
    multi = fit(model)
    results["fit"] = max_difference(single, multi)
    results["absent_domain_unchanged"] = absent_unchanged(keras, multi)
    # Every replica's copy of the moving statistics holds the same values.
    results["replica_copies"] = max(
        float(np.abs(np.asarray(copy) - np.asarray(w.value.values[0])).max())
        for w in model.non_trainable_weights for copy in w.value.values
    )

    # The layer on its own: a Python-int domain, shares of unequal sizes, an empty share,
    # and without synchronisation (each replica's own statistics: not the one-device ones).
    r = np.random.default_rng(2)
    x = r.normal(size=(7, 3, 3, 5)).astype("float32")
    mixed = np.array([0, 2, 0, 1, 2, 2, 0], "int32")
    cases = {
        "int_domain": (2, None, [4, 3] + [0] * (devices - 2)),
        "uneven_shares": (mixed, None, [5, 2] + [0] * (devices - 2) if devices == 2
                          else [2, 3, 1, 1] + [0] * (devices - 4)),
        "empty_share": (mixed, None, [7] + [0] * (devices - 1)),
        "unsynchronized_differs": (mixed, False, [4, 3] + [0] * (devices - 2)),
    }
    for case, (domain, synchronized, sizes) in cases.items():
        try:
            results[case] = _layer_case(tf, strategy, x, domain, synchronized, sizes)
        except Exception as error:
            results[case] = f"{type(error).__name__}: {error}"[:500]
    return results


def _layer_case(tf, strategy, x, domain, synchronized, sizes):
    """Max difference of the moving statistics: layer on `strategy` vs on one device."""
    import numpy as np

    from keras_mdn import DomainBatchNormalization

    reference = DomainBatchNormalization(T, momentum=0.0)
    reference(x, domain=domain, training=True)
    with strategy.scope():
        layer = DomainBatchNormalization(T, momentum=0.0, synchronized=synchronized)
        layer.build(x.shape)
    starts = np.cumsum([0] + list(sizes))

    def share(context):
        replica = context.replica_id_in_sync_group
        lo, hi = starts[replica], starts[replica + 1]
        # A Python int domain stays one (static); a vector is split like the images.
        return x[lo:hi], np.zeros((0,), "int32") if isinstance(domain, int) else domain[lo:hi]

    values = strategy.experimental_distribute_values_from_function(share)

    def replica_step(v, d):
        # An unknown batch size, as in `fit` (a static 0 trips Keras' bias-add heuristic).
        v = tf.raw_ops.PlaceholderWithDefault(input=v, shape=[None, *v.shape[1:]])
        if isinstance(domain, int):
            d = domain
        else:
            d = tf.raw_ops.PlaceholderWithDefault(input=d, shape=[None])
        return layer(v, domain=d, training=True)

    @tf.function
    def step(values):
        return strategy.run(replica_step, args=values)

    step(values)
    return max(
        float(np.abs(np.asarray(a) - np.asarray(b)).max())
        for a, b in ((reference.moving_mean, layer.moving_mean),
                     (reference.moving_variance, layer.moving_variance))
    )


def run_jax(devices):
    os.environ["KERAS_BACKEND"] = "jax"
    os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
    import jax
    import keras

    from keras_mdn.distribution import check_layout_map

    assert len(jax.devices()) == devices, jax.devices()
    results = {}
    single = fit(build(keras))
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices()))
    model = build(keras)
    results["fit"] = max_difference(single, fit(model))
    results["absent_domain_unchanged"] = absent_unchanged(keras, weights(model))
    x, d, y = data([MIXED])
    try:
        model.fit([x[:6], d[:6]], y[:6], batch_size=6, epochs=1, verbose=0)
        results["uneven_batch"] = "no error"
    except Exception as error:  # JAX's IndivisibleError
        results["uneven_batch"] = f"{type(error).__name__}: {error}"[:500]

    mesh = keras.distribution.DeviceMesh((devices // 2, 2), ("batch", "model"), jax.devices())
    layout = keras.distribution.LayoutMap(mesh)
    layout["conv\\d/conv\\d/kernel"] = (None, None, None, "model")  # shared: output channels
    layout[".*adapter_kernel"] = (None, None, "model")  # per domain: output channels
    layout["(bn\\d|conv2/adapter_norm)/.*"] = (None, "model")  # per domain: channels
    layout["fdense/factor_shared"] = (None, "model", None)
    keras.distribution.set_distribution(None)
    results["layout_checked"] = len(check_layout_map(layout, build(keras)))
    keras.distribution.set_distribution(
        keras.distribution.ModelParallel(layout_map=layout, batch_dim_name="batch")
    )
    model = build(keras)
    results["model_parallel_sharded"] = str(
        model.get_layer("conv1").adapter_kernel.value.sharding.spec
    )
    results["fit_model_parallel"] = max_difference(single, fit(model))
    return results


def main():
    backend, devices = sys.argv[1], int(sys.argv[2])
    results = run_tensorflow(devices) if backend == "tensorflow" else run_jax(devices)
    print("RESULT " + json.dumps(results))


if __name__ == "__main__":
    main()
