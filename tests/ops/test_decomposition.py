"""SVD, HOSVD, TT-SVD and TT-matrix SVD: exactness at full rank, eps bounds, t3f agreement."""

import numpy as np
import pytest

from keras_mdn.ops import decomposition
from tests.helpers import rng, skip_unless_tensorflow


def test_rank_from_eps():
    s = np.array([3.0, 2.0, 1.0, 0.1])
    total = np.sqrt(np.sum(s**2))
    assert decomposition.rank_from_eps(s, 0.1 / total * 1.01) == 3
    assert decomposition.rank_from_eps(s, 0.99) == 1
    assert decomposition.rank_from_eps(s, 1e-9) == 4


@pytest.mark.parametrize("eps", [0.0, 1.0, -0.5, 2])
def test_eps_outside_open_interval(eps):
    with pytest.raises(ValueError, match=f"Received: eps={eps}"):
        decomposition.validate_eps(eps)


def test_truncated_svd_full_and_eps():
    matrix = rng(0).normal(size=(7, 5))
    left, right, _ = decomposition.truncated_svd(matrix)
    np.testing.assert_allclose(left @ right, matrix, atol=1e-10)
    left, right, _ = decomposition.truncated_svd(matrix, eps=0.5)
    error = np.linalg.norm(left @ right - matrix) / np.linalg.norm(matrix)
    assert error <= 0.5 and left.shape[1] < 5


def test_hosvd_full_rank_exact_and_eps_bound():
    tensor = rng(1).normal(size=(4, 5, 3))
    core, factors = decomposition.hosvd(tensor)
    np.testing.assert_allclose(decomposition.tucker_full(core, factors), tensor, atol=1e-10)
    core, factors = decomposition.hosvd(tensor, eps=0.6)
    approx = decomposition.tucker_full(core, factors)
    assert np.linalg.norm(approx - tensor) <= 0.6 * np.linalg.norm(tensor)
    assert core.size < tensor.size


def test_tt_svd_full_rank_exact_and_eps_bound():
    tensor = rng(2).normal(size=(3, 4, 5, 2))
    np.testing.assert_allclose(decomposition.tt_full(decomposition.tt_svd(tensor)), tensor,
                               atol=1e-10)
    cores = decomposition.tt_svd(tensor, eps=0.5)
    approx = decomposition.tt_full(cores)
    assert np.linalg.norm(approx - tensor) <= 0.5 * np.linalg.norm(tensor)
    cores = decomposition.tt_svd(tensor, ranks=(2, 2, 2))
    assert [c.shape for c in cores] == [(1, 3, 2), (2, 4, 2), (2, 5, 2), (2, 2, 1)]


def _tt_matrix_full(cores):
    result = cores[0]
    for core in cores[1:]:
        result = np.einsum("...a,aijb->...ijb", result, core)
    d = len(cores)
    result = result[0, ..., 0]  # (n1, m1, n2, m2, ...)
    order = list(range(0, 2 * d, 2)) + list(range(1, 2 * d, 2))
    n = int(np.prod([c.shape[1] for c in cores]))
    return result.transpose(order).reshape(n, -1)


def test_tt_matrix_svd_full_rank_exact():
    matrix = rng(3).normal(size=(12, 8))
    cores = decomposition.tt_matrix_svd(matrix, (3, 4), (2, 4))
    assert [c.shape[1:3] for c in cores] == [(3, 2), (4, 4)]
    np.testing.assert_allclose(_tt_matrix_full(cores), matrix, atol=1e-10)


@pytest.mark.tensorflow_only
def test_tt_matrix_svd_agrees_with_t3f():
    skip_unless_tensorflow()
    import t3f
    import tensorflow as tf

    matrix = rng(4).normal(size=(24, 16)).astype("float32")
    modes = [(2, 3, 4), (2, 4, 2)]
    ours = _tt_matrix_full(decomposition.tt_matrix_svd(matrix, *modes, ranks=(3, 3)))
    theirs = t3f.full(t3f.to_tt_matrix(tf.constant(matrix), shape=modes, max_tt_rank=3)).numpy()
    # The same truncated TT-SVD: the same best-in-sweep approximation.
    np.testing.assert_allclose(ours, theirs, atol=1e-4)


def test_split_modes():
    assert decomposition.split_modes(1024, 3) == (16, 8, 8)
    assert decomposition.split_modes(4096, 3) == (16, 16, 16)
    assert decomposition.split_modes(13, 2) == (13, 1)
    assert np.prod(decomposition.split_modes(784, 3)) == 784
