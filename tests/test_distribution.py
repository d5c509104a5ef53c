"""Multi-device training: N virtual CPU devices give the one-device result.

The equivalence runs need their devices configured before the backend starts, so each backend
runs in a subprocess (`tests/distribution_worker.py`): TensorFlow `MirroredStrategy` on 2
logical CPUs, JAX `DataParallel` and `ModelParallel` on 4 host devices. Both run from the
suite on either backend (CI runs them once, in the TensorFlow pass).
"""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from keras_mdn import DomainBatchNormalization
from keras_mdn import distribution as dist
from tests.helpers import rng, to_numpy

ROOT = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5
DEVICES = {"tensorflow": 2, "jax": 4}


def _run_worker(backend):
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": backend}
    env.pop("XLA_FLAGS", None)
    command = [sys.executable, "-m", "tests.distribution_worker", backend,
               str(DEVICES[backend])]
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert done.returncode == 0 and lines, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(lines[-1][len("RESULT "):])


@pytest.fixture(scope="module")
def tensorflow_results():
    return _run_worker("tensorflow")


@pytest.fixture(scope="module")
def jax_results():
    return _run_worker("jax")


# === TensorFlow, MirroredStrategy ===


def test_mirrored_training_equals_one_device(tensorflow_results):
    # Adapters (parallel and series), domain BNs, factorised conv and dense, head: weights
    # and moving statistics after a mixed, a one-domain and a mixed global batch, with domains
    # present on one replica only and one split over both.
    assert tensorflow_results["fit"] < TOLERANCE
    assert tensorflow_results["replica_copies"] == 0.0
    assert tensorflow_results["absent_domain_unchanged"] == 0.0


@pytest.mark.parametrize("case", ["int_domain", "uneven_shares", "empty_share"])
def test_mirrored_statistics_equal_one_device(tensorflow_results, case):
    assert tensorflow_results[case] < TOLERANCE, tensorflow_results[case]


def test_unsynchronized_statistics_are_per_replica(tensorflow_results):
    # What `synchronized=False` opts into (and what the equivalence test would catch).
    assert tensorflow_results["unsynchronized_differs"] > 1e-2


# === JAX, keras.distribution ===


def test_data_parallel_training_equals_one_device(jax_results):
    assert jax_results["fit"] < TOLERANCE
    assert jax_results["absent_domain_unchanged"] == 0.0


def test_model_parallel_layout_equals_one_device(jax_results):
    assert jax_results["layout_checked"] == 17
    assert jax_results["model_parallel_sharded"] == "P(None, None, 'model')"
    assert jax_results["fit_model_parallel"] < TOLERANCE


def test_data_parallel_rejects_a_batch_the_devices_do_not_divide(jax_results):
    assert jax_results["uneven_batch"].startswith("IndivisibleError")
    assert "dimension size is 6" in jax_results["uneven_batch"]


# === One process, no distribution ===


def test_not_distributed_by_default():
    assert not dist.is_distributed()
    assert dist.num_replicas() == 1
    assert not any(dist.should_synchronize(s) for s in (None, True, False))
    a, b = np.ones((2, 3)), np.zeros((3,))
    assert dist.cross_replica_sum(a) is a
    assert dist.cross_replica_sum(a, b) == (a, b)


def test_synchronized_without_a_distribution_is_one_device_training():
    x = rng(0).normal(size=(6, 3, 3, 4)).astype("float32")
    domain = np.array([0, 2, 2, 1, 0, 2], "int32")
    outputs = {}
    for synchronized in (None, True, False):
        layer = DomainBatchNormalization(3, momentum=0.5, synchronized=synchronized)
        y = layer(x, domain=domain, training=True)
        y_int = layer(x, domain=1, training=True)
        outputs[synchronized] = [to_numpy(v) for v in
                                 (y, y_int, layer.moving_mean, layer.moving_variance)]
    for synchronized in (None, True):
        for got, expected in zip(outputs[synchronized], outputs[False]):
            np.testing.assert_allclose(got, expected, atol=1e-6, rtol=1e-6)


def test_synchronized_argument_is_validated_and_serialized():
    with pytest.raises(TypeError, match="synchronized='yes'"):
        DomainBatchNormalization(2, synchronized="yes")
    layer = DomainBatchNormalization(2, synchronized=True)
    config = layer.get_config()
    assert config["synchronized"] is True
    assert DomainBatchNormalization.from_config(config).synchronized is True


def _layout(shape, axis_names, rules):
    mesh = keras.distribution.DeviceMesh(shape, axis_names, ["cpu:0"] * int(np.prod(shape)))
    layout = keras.distribution.LayoutMap(mesh)
    for key, axes in rules.items():
        layout[key] = axes
    return layout


def test_check_layout_map_names_the_weight_an_axis_does_not_divide():
    layer = DomainBatchNormalization(3, name="bn")
    layer.build((None, 4))
    good = _layout((2, 2), ("batch", "model"), {"bn/.*": (None, "model")})
    assert dist.check_layout_map(good, layer) == {
        f"bn/{name}": (None, "model")
        for name in ("gamma", "beta", "moving_mean", "moving_variance")
    }
    domains = _layout((2, 2), ("batch", "model"), {"bn/gamma": ("model", None)})
    with pytest.raises(ValueError, match=r"'bn/gamma' of shape \(3, 4\) cannot shard its axis 0"):
        dist.check_layout_map(domains, layer)
    rank = _layout((2, 2), ("batch", "model"), {"bn/beta": ("model",)})
    with pytest.raises(ValueError, match="has 1 axes, the weight 2"):
        dist.check_layout_map(rank, layer)
