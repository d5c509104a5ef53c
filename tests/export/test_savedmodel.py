import os

import numpy as np
import pytest

from tests.export.conftest import T, expected_logits
from tests.helpers import tensorflow_only

pytestmark = tensorflow_only


@pytest.fixture(scope="module")
def loaded(exported):
    import tensorflow as tf

    directory, manifest = exported
    return tf.saved_model.load(os.path.join(directory, manifest["saved_model"]))


def test_endpoints(loaded):
    names = set(loaded.signatures.keys())
    assert {f"domain_{d}" for d in range(T)} | {"domain_index"} <= names
    assert "serve" not in names


def test_reloaded_outputs_equal_the_keras_model(model, images, loaded):
    import tensorflow as tf

    for domain in range(T):
        expected = expected_logits(model, images, domain)
        per_domain = getattr(loaded, f"domain_{domain}")(tf.constant(images)).numpy()
        assert per_domain.shape == expected.shape
        assert np.max(np.abs(per_domain - expected)) <= 1e-5
        # The generic endpoint returns the Keras model's padded output.
        generic = loaded.domain_index(tf.constant(images), tf.constant(domain)).numpy()
        full = np.asarray(model({"image": images, "domain": np.full((4,), domain, "int32")}))
        assert np.max(np.abs(generic - full)) <= 1e-5
        signature = loaded.signatures[f"domain_{domain}"](image=tf.constant(images))
        np.testing.assert_allclose(next(iter(signature.values())).numpy(), per_domain, atol=0)


@pytest.mark.parametrize("domain", [-1, T])
def test_generic_endpoint_rejects_a_domain_out_of_range(loaded, images, domain):
    import tensorflow as tf

    with pytest.raises(tf.errors.InvalidArgumentError, match=f"must be in \\[0, {T}\\)"):
        loaded.domain_index(tf.constant(images), tf.constant(domain))
