import keras
import numpy as np
import pytest

from keras_mdn.ops import routing
from tests.helpers import to_numpy


def test_python_int_is_static_and_checked():
    assert routing.canonicalize_domain(2, 3) == 2
    assert routing.canonicalize_domain(np.int64(1), 3) == 1
    with pytest.raises(ValueError, match="domain=3"):
        routing.canonicalize_domain(3, 3)
    with pytest.raises(ValueError, match="domain=-1"):
        routing.canonicalize_domain(-1, 3)


@pytest.mark.parametrize("bad", [1.0, True, np.float32(2.0)])
def test_non_integer_domains_are_rejected(bad):
    with pytest.raises(TypeError, match="domain"):
        routing.canonicalize_domain(bad, 3)


def test_tensor_domains():
    vector = routing.canonicalize_domain(np.array([0, 2, 1]), 3)
    assert not routing.is_uniform(vector)
    scalar = routing.canonicalize_domain(keras.ops.convert_to_tensor(1, "int32"), 3)
    assert routing.is_uniform(scalar)
    with pytest.raises(ValueError, match="domain=5"):
        routing.canonicalize_domain(np.array([0, 5]), 3)
    with pytest.raises(ValueError, match="domain=-2"):
        routing.canonicalize_domain(keras.ops.convert_to_tensor([0, -2]), 3)
    with pytest.raises(TypeError, match="dtype=float32"):
        routing.canonicalize_domain(np.array([0.0, 1.0], "float32"), 3)
    with pytest.raises(ValueError, match="shape"):
        routing.canonicalize_domain(np.zeros((2, 2), "int32"), 3)
    with pytest.raises(TypeError, match="num_domains"):
        routing.check_num_domains(2.5)
    with pytest.raises(ValueError, match="num_domains=0"):
        routing.check_num_domains(0)


def test_gather_and_route_agree_for_uniform_and_mixed():
    table = np.arange(12, dtype="float32").reshape(3, 4)
    assert to_numpy(routing.gather_domain(table, 1)).tolist() == table[1].tolist()
    mixed = routing.canonicalize_domain(np.array([2, 0, 2]), 3)
    np.testing.assert_array_equal(to_numpy(routing.gather_domain(table, mixed)), table[[2, 0, 2]])

    def uniform(d):
        return keras.ops.broadcast_to(routing.gather_domain(table, d), (3, 4)) + 100.0

    def mixed_fn(d):
        return routing.gather_domain(table, d) + 100.0

    same = routing.canonicalize_domain(np.array([1, 1, 1]), 3)
    np.testing.assert_array_equal(
        to_numpy(routing.route(same, uniform, mixed_fn)), table[[1] * 3] + 100
    )
    np.testing.assert_array_equal(
        to_numpy(routing.route(mixed, uniform, mixed_fn)), table[[2, 0, 2]] + 100
    )
