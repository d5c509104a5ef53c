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


# === eps_mode="authors": the DMTRL authors' per-step pivoted-QR precision ===


def _authors_rank(matrix, eps):
    """Reference of the authors' rule by Householder QR with column pivoting (as `iddp_qrpiv`):
    after step k, stop when the largest remaining column norm is <= eps * the largest one."""
    a = np.array(matrix, dtype=np.float64)
    m, n = a.shape
    norms = np.sum(a**2, axis=0)
    largest = norms.max()
    for k in range(min(m, n)):
        pivot = k + int(np.argmax(norms[k:]))
        a[:, [k, pivot]] = a[:, [pivot, k]]
        x = a[k:, k]
        v = x.copy()
        v[0] += np.copysign(np.linalg.norm(x), x[0])
        if np.linalg.norm(v) > 0:
            v /= np.linalg.norm(v)
            a[k:, k:] -= 2.0 * np.outer(v, v @ a[k:, k:])
        norms = np.concatenate([np.zeros(k + 1), np.sum(a[k + 1:, k + 1:] ** 2, axis=0)])
        if norms.max() <= eps**2 * largest:
            return k + 1
    return min(m, n)


def _test_matrices():
    r = rng(5)
    low_rank = r.normal(size=(12, 3)) @ r.normal(size=(3, 9)) + 0.05 * r.normal(size=(12, 9))
    decaying = r.normal(size=(20, 8)) * (0.6 ** np.arange(8))
    return [low_rank, low_rank.T, decaying, r.normal(size=(6, 15)), r.normal(size=(10, 1))]


@pytest.mark.parametrize("eps", [0.05, 0.1, 0.2, 0.3, 0.5])
def test_authors_rank_matches_reference(eps):
    for matrix in _test_matrices():
        left, right, _ = decomposition.truncated_svd(matrix, eps=eps, eps_mode="authors")
        assert left.shape[1] == _authors_rank(matrix, eps)
        assert decomposition.rank_from_pivoted_qr(matrix, eps) == left.shape[1]
        np.testing.assert_allclose(left.T @ left, np.eye(left.shape[1]), atol=1e-10)
        # The rule's guarantee: every column is within eps * (largest column norm).
        residual = np.linalg.norm(matrix - left @ right, axis=0)
        assert residual.max() <= eps * np.linalg.norm(matrix, axis=0).max() * (1 + 1e-9)


@pytest.mark.parametrize("eps", [0.1, 0.3, 0.5])
def test_authors_mode_agrees_with_scipy_interpolative(eps):
    """The authors' own call: `scipy.linalg.interpolative.svd(A, eps, rand=False)`."""
    interpolative = pytest.importorskip("scipy.linalg.interpolative")
    for matrix in _test_matrices():
        u, s, v = interpolative.svd(matrix.copy(), eps, rand=False)
        left, right, values = decomposition.truncated_svd(matrix, eps=eps, eps_mode="authors")
        assert left.shape[1] == u.shape[1]
        np.testing.assert_allclose(left @ right, u @ np.diag(s) @ v.T, atol=1e-9)
        np.testing.assert_allclose(values, s, atol=1e-9)


def test_authors_mode_is_per_step_and_unsplit():
    tensor = rng(6).normal(size=(6, 5, 4)) * np.array([1.0, 0.5, 0.3, 0.1])
    eps = 0.3
    core, factors = decomposition.hosvd(tensor, eps=eps, eps_mode="authors")
    for mode, factor in enumerate(factors):
        unfolded = np.moveaxis(tensor, mode, 0).reshape(tensor.shape[mode], -1)
        assert factor.shape[1] == _authors_rank(unfolded, eps)
    cores = decomposition.tt_svd(tensor, eps=eps, eps_mode="authors")
    rest, left_rank = tensor, 1
    for k, core in enumerate(cores[:-1]):
        rest = rest.reshape(left_rank * tensor.shape[k], -1)
        assert core.shape[-1] == _authors_rank(rest, eps)
        left, right, _ = decomposition.truncated_svd(rest, eps=eps, eps_mode="authors")
        rest, left_rank = right, left.shape[1]
    # Full precision still reproduces the tensor in both modes.
    np.testing.assert_allclose(decomposition.tucker_full(*decomposition.hosvd(
        tensor, eps=1e-9, eps_mode="authors")), tensor, atol=1e-8)


def test_modes_differ_where_energy_is_spread():
    """Flat spectrum: the Frobenius rule must keep most of it, the per-column rule less."""
    matrix = rng(7).normal(size=(40, 40))
    frobenius = decomposition.truncated_svd(matrix, eps=0.5)[0].shape[1]
    authors = decomposition.truncated_svd(matrix, eps=0.5, eps_mode="authors")[0].shape[1]
    assert frobenius != authors
    assert frobenius == decomposition.rank_from_eps(np.linalg.svd(matrix)[1], 0.5)
    assert authors == _authors_rank(matrix, 0.5)


def test_tolerance_carries_the_mode():
    tensor = rng(8).normal(size=(5, 4, 3))
    tolerance = decomposition.Tolerance(0.4, "authors")
    for a, b in zip(decomposition.tt_svd(tensor, eps=tolerance),
                    decomposition.tt_svd(tensor, eps=0.4, eps_mode="authors")):
        np.testing.assert_array_equal(a, b)
    assert decomposition.validate_eps(tolerance) is tolerance
    assert tolerance == decomposition.Tolerance(0.4, "authors")
    with pytest.raises(ValueError, match="Received: eps=Tolerance"):
        decomposition.hosvd(tensor, eps=tolerance, eps_mode="frobenius")


def test_bad_eps_mode():
    with pytest.raises(ValueError, match="Received: eps_mode='spectral'"):
        decomposition.truncated_svd(np.eye(3), eps=0.1, eps_mode="spectral")
    with pytest.raises(ValueError, match="Received: mode='svd'"):
        decomposition.Tolerance(0.1, "svd")
    with pytest.raises(ValueError, match="Received: eps=1.5"):
        decomposition.Tolerance(1.5)


def test_tolerance_reaches_from_layers():
    """`from_layers(eps=Tolerance(...))` picks the authors' ranks (no layer change needed)."""
    import keras

    from keras_mdn import FactorizedDense

    r = rng(9)
    layers = []
    for _ in range(4):
        layer = keras.layers.Dense(6)
        layer.build((None, 5))
        layer.set_weights([r.normal(size=(5, 6)), np.zeros(6)])
        layers.append(layer)
    stacked = np.stack([lay.get_weights()[0] for lay in layers], axis=-1)
    for eps in (0.2, 0.5):
        built = FactorizedDense.from_layers(layers, factorization="tucker",
                                            eps=decomposition.Tolerance(eps, "authors"))
        _, factors = decomposition.hosvd(stacked, eps=eps, eps_mode="authors")
        assert tuple(built.factorization.rank) == tuple(f.shape[1] for f in factors)
        by_keyword = FactorizedDense.from_layers(layers, factorization="tucker", eps=eps,
                                                 eps_mode="authors")
        assert by_keyword.factorization.rank == built.factorization.rank
    with pytest.raises(ValueError, match="eps_mode='authors'"):
        FactorizedDense.from_layers(layers, factorization="tucker", eps_mode="authors")
    with pytest.raises(ValueError, match="eps_mode"):
        FactorizedDense.from_layers(layers, factorization="tucker", eps=0.3, eps_mode="spectral")
