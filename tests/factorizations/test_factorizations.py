"""The factorisation kinds: registry, config, ranks, init variance, full-rank decomposition."""

import numpy as np
import pytest

from keras_mdn import factorizations
from keras_mdn.factorizations import LAF, TensorTrain, TTMatrix, Tucker
from tests.helpers import rng, to_numpy

KINDS = ["laf", "tucker", "tt", "tt_matrix"]


class Owner:
    """The minimal owner a kind needs: `add_weight` (a Keras layer in real use)."""

    def __init__(self):
        import keras

        self.layer = keras.layers.Layer()

    def add_weight(self, **kwargs):
        return self.layer.add_weight(**kwargs)


def build(kind, rank, in_dims=(12,), out_dims=(8,), tasks=3, variance=0.1):
    factorization = factorizations.get(kind, rank)
    factorization.build(Owner(), in_dims, out_dims, tasks, variance)
    return factorization


def test_get_by_name_instance_and_config():
    assert isinstance(factorizations.get("Tucker", 2), Tucker)
    instance = TTMatrix(rank=3, input_modes=(4, 3), output_modes=(2, 4))
    copy = factorizations.get(instance)
    assert copy is not instance and copy.get_config() == instance.get_config()
    import keras

    config = keras.saving.serialize_keras_object(instance)
    assert factorizations.get(config).get_config() == instance.get_config()


def test_unknown_name_lists_valid_names():
    with pytest.raises(ValueError, match=r"\['laf', 'tt', 'tt_matrix', 'tucker'\].*cp"):
        factorizations.get("cp")


@pytest.mark.parametrize("rank", [0, -2, (2, 0), 1.5, "4"])
def test_rank_must_be_positive(rank):
    with pytest.raises(ValueError, match="Received: rank="):
        LAF(rank=rank)


def test_rank_above_shape_limit_names_maximum():
    with pytest.raises(ValueError, match=r"at most 3 .*Received: rank=4"):
        build("laf", 4)  # K <= T = 3
    with pytest.raises(ValueError, match=r"rank\[1\]` must be at most 3.*Received: rank=\(2, 9\)"):
        build("tt", (2, 9))
    with pytest.raises(ValueError, match="tuple of 3 ranks"):
        build("tucker", (2, 2))


def test_int_rank_is_capped_per_slot():
    tucker = build("tucker", 5)
    assert tucker.rank == (5, 5, 3)  # the task mode has only 3
    assert tuple(tucker.variables[-1].shape) == (3, 3)


def test_rank_required_for_random_init():
    with pytest.raises(ValueError, match="rank=None"):
        build("tt", None)


def test_tt_matrix_mode_split_must_match():
    message = r"input_modes.*12; it is 16. Received: input_modes=\(4, 4\)"
    with pytest.raises(ValueError, match=message):
        TTMatrix(rank=2, input_modes=(4, 4), output_modes=(2, 4)).build(Owner(), (12,), (8,), 1,
                                                                         0.1)
    with pytest.raises(ValueError, match="same length"):
        TTMatrix(rank=2, input_modes=(4, 3), output_modes=(8,))
    automatic = build("tt_matrix", 2, in_dims=(24,), out_dims=(8,), tasks=1)
    assert automatic.input_modes == (3, 4, 2) or np.prod(automatic.input_modes) == 24
    assert np.prod(automatic.output_modes) == 8


@pytest.mark.parametrize("kind", KINDS)
def test_weight_names_are_stable(kind):
    factorization = build(kind, 2)
    names = [v.name for v in factorization.variables]
    expected = {
        "laf": ["factor_shared", "factor_task"],
        "tucker": ["core", "factor_0", "factor_1", "factor_task"],
        "tt": ["core_0", "core_1", "core_2"],
        "tt_matrix": ["core_0", "core_1", "core_2", "core_task"],
    }[kind]
    assert names == expected


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("variance", [2.0 / (128 + 64), 2.0 / 128])
def test_random_init_matches_target_variance(kind, variance):
    factorization = build(kind, 4, in_dims=(128,), out_dims=(64,), tasks=4, variance=variance)
    stacked = to_numpy(factorization.stacked())
    assert stacked.shape == (128, 64, 4)
    np.testing.assert_allclose(np.var(stacked), variance, rtol=0.03)
    # Every task gets about the target, not one task all of it.
    per_task = np.var(stacked.reshape(-1, 4), axis=0)
    assert np.all(per_task > 0.2 * variance)


@pytest.mark.parametrize("kind", ["laf", "tucker", "tt"])
def test_init_formula_alone_gives_the_variance_in_expectation(kind, monkeypatch):
    # Without the exact rescaling, the MISSION §3 std per factor gives the target on average.
    monkeypatch.setattr("keras_mdn.factorizations.base._RESCALE_LIMIT", 0)
    values = [np.var(to_numpy(build(kind, 4, (32,), (32,), 4, 0.02).stacked()))
              for _ in range(6)]
    np.testing.assert_allclose(np.mean(values), 0.02, rtol=0.25)


@pytest.mark.parametrize("kind", KINDS)
def test_full_rank_decomposition_reproduces_stacked(kind):
    stacked = rng(1).normal(size=(6, 4, 3))
    factorization = factorizations.get(kind)
    limits = factorization.rank_limits((6,), (4,), 3)
    ranks, arrays = factorization.decompose(stacked, (6,), (4,), 3, limits, None)
    factorization.rank = ranks
    factorization.build(Owner(), (6,), (4,), 3, 0.1)
    factorization.set_arrays(arrays)
    np.testing.assert_allclose(to_numpy(factorization.stacked()), stacked, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_eps_decomposition_meets_error_bound(kind):
    # A low-rank-ish tensor plus noise: eps picks small ranks and the error stays under eps.
    generator = rng(2)
    base = np.einsum("ik,ok,tk->iot", *(generator.normal(size=(n, 2)) for n in (8, 6, 4)))
    stacked = base + 0.01 * generator.normal(size=base.shape)
    factorization = factorizations.get(kind)
    slots = len(factorization.rank_limits((8,), (6,), 4))
    ranks, arrays = factorization.decompose(stacked, (8,), (6,), 4, (None,) * slots, 0.05)
    factorization.rank = ranks
    factorization.build(Owner(), (8,), (6,), 4, 0.1)
    factorization.set_arrays(arrays)
    approx = to_numpy(factorization.stacked())
    assert np.linalg.norm(approx - stacked) <= 0.05 * np.linalg.norm(stacked) * 1.0001
    assert max(ranks) < max(factorization.rank_limits((8,), (6,), 4))


def test_task_factors_are_the_task_codes():
    laf = build("laf", 2)
    np.testing.assert_allclose(to_numpy(laf.task_factors()), to_numpy(laf.variables[1]).T)
    tucker = build("tucker", 2)
    np.testing.assert_allclose(to_numpy(tucker.task_factors()), to_numpy(tucker.variables[-1]))
    tt = build("tt", 2)
    np.testing.assert_allclose(to_numpy(tt.task_factors()), to_numpy(tt.variables[-1])[:, :, 0].T)


def test_config_round_trip():
    for kind in (LAF(rank=3), Tucker(rank=(2, 3, 1)), TensorTrain(rank=2),
                 TTMatrix(rank=4, input_modes=(2, 8), output_modes=(4, 4), num_modes=2)):
        again = type(kind).from_config(kind.get_config())
        assert again.get_config() == kind.get_config()
