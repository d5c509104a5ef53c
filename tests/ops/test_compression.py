import numpy as np
import pytest

from keras_mdn.ops import compression
from tests.helpers import rng


def _adapters(num_domains=3, cin=4, cout=5, seed=0):
    return rng(seed).normal(size=(num_domains, cin, cout))


def test_stack_puts_domains_side_by_side():
    adapters = _adapters()
    stacked = compression.stack_adapters(adapters)
    assert stacked.shape == (4, 15)
    np.testing.assert_array_equal(stacked[:, 5:10], adapters[1])


@pytest.mark.parametrize("rank", [1, 2, 4])
def test_factors_match_the_truncated_svd(rank):
    adapters = _adapters()
    result = compression.compress_stacked(adapters, rank=rank)
    beta, gammas = result["projection"], result["kernels"]
    assert beta.shape == (4, rank) and gammas.shape == (3, rank, 5)
    np.testing.assert_allclose(beta.T @ beta, np.eye(rank), atol=1e-12)
    stacked = compression.stack_adapters(adapters)
    u, s, vt = np.linalg.svd(stacked, full_matrices=False)
    truncated = (u[:, :rank] * s[:rank]) @ vt[:rank]
    approx = np.concatenate([beta @ g for g in gammas], axis=1)
    np.testing.assert_allclose(approx, truncated, atol=1e-10)
    error = np.linalg.norm(stacked - approx) / np.linalg.norm(stacked)
    assert result["relative_error"] == pytest.approx(error, abs=1e-12)
    assert result["relative_error"] == pytest.approx(
        np.sqrt(np.sum(s[rank:] ** 2) / np.sum(s**2)), abs=1e-12
    )
    if rank == 4:  # full rank of a 4 x 15 stack: exact
        assert result["relative_error"] < 1e-12


def test_energy_picks_the_smallest_rank_reaching_it():
    s = np.array([4.0, 2.0, 1.0, 1.0])  # squares 16, 4, 1, 1 of 22
    assert compression.choose_rank(s, energy=16 / 22) == 1
    assert compression.choose_rank(s, energy=16 / 22 + 1e-6) == 2
    assert compression.choose_rank(s, energy=0.95) == 3
    assert compression.choose_rank(s, energy=1.0) == 4
    assert compression.choose_rank(s, energy=1.0, max_rank=2) == 2
    assert compression.choose_rank(s, rank=10) == 4
    assert compression.choose_rank(np.zeros(3), energy=0.5) == 1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(rank=0), "rank=0"),
        (dict(rank=2.5), "rank=2.5"),
        (dict(energy=0.0), "energy=0.0"),
        (dict(energy=1.5), "energy=1.5"),
        (dict(), "exactly one"),
        (dict(rank=2, energy=0.5), "exactly one"),
    ],
)
def test_bad_rank_or_energy(kwargs, match):
    with pytest.raises(ValueError, match=match):
        compression.choose_rank(np.ones(3), **kwargs)


def test_bad_adapter_shape():
    with pytest.raises(ValueError, match="shape"):
        compression.stack_adapters(np.ones((3, 4)))
