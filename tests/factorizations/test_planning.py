"""Forward plans: every conv kernel split and every dense path equals the NumPy reference."""

import numpy as np
import pytest
from keras import ops

from keras_mdn import FactorizedConv2D, FactorizedDense
from keras_mdn.factorizations import planning
from keras_mdn.ops import routing
from tests.helpers import assert_close, rng, to_numpy

KINDS = ["laf", "tucker", "tt", "tt_matrix"]
TASKS = 3


def conv_reference(layer, x, domains):
    stacked = to_numpy(layer.stacked_kernel())
    domains = np.broadcast_to(domains, (x.shape[0],))
    return np.stack([to_numpy(ops.conv(x[b:b + 1], stacked[..., d], padding="same"))[0]
                     for b, d in enumerate(domains)])


def built_conv(kind):
    """A built 3x3 factorised conv (3 -> 4 channels, 5x5 inputs), its factorisation and the
    sizes of a batch of 2."""
    layer = FactorizedConv2D(4, 3, num_domains=TASKS, factorization=kind, rank=2,
                             padding="same", use_bias=False)
    layer.build((None, 5, 5, 3))
    factorization = layer.factorization
    return layer, factorization, dict(factorization.network_.sizes, B=2, P=25)


@pytest.mark.parametrize("kind", KINDS)
def test_every_conv_kernel_split_matches_reference(kind):
    layer, factorization, sizes = built_conv(kind)
    x = rng(0).normal(size=(2, 5, 5, 3)).astype("float32")
    mixed = np.array([2, 0], dtype="int32")
    expected_mixed, expected_one = conv_reference(layer, x, mixed), conv_reference(layer, x, 1)
    count = 0
    selection = routing.select(mixed, TASKS)
    for is_mixed, domain, expected in ((True, selection, expected_mixed),
                                       (False, 1, expected_one)):
        for subset in planning._kernel_subsets(factorization.network_, is_mixed):
            step = planning._factored(factorization, subset, sizes, 50, 27, is_mixed)
            if step is None:
                continue
            plan = planning.ConvPlan(None if is_mixed else step, step if is_mixed else None)
            outputs = planning.conv(plan, factorization, x, domain, layer._conv)
            assert_close(outputs, expected, atol=1e-4)
            count += 1
    assert count >= 2
    # The reconstructed / coded kernels.
    plan = planning.ConvPlan(None, None)
    assert_close(planning.conv(plan, factorization, x, selection, layer._conv), expected_mixed,
                 atol=1e-4)


def test_tucker_conv_mixed_batch_keeps_the_core_in_the_kernel():
    # 32 -> 32 channels, ranks 16: convolving to r_kh*r_kw*r_in = 144 channels (the input-side
    # factors alone) costs more than convolving with the core too, to r_out*r_T channels.
    layer = FactorizedConv2D(32, 3, num_domains=2, factorization="tucker", rank=16,
                             padding="same")
    layer.build((16, 16, 16, 32))
    paths = layer.contraction_paths()
    assert paths["mixed"] == "factored"
    assert "core" in paths["mixed_detail"].split(" to ")[0]


def test_dense_plan_names_and_modes():
    layer = FactorizedDense(8, num_domains=TASKS, factorization="laf", rank=2)
    layer.build((None, 12))
    paths = layer.contraction_paths()
    assert {"uniform", "mixed", "uniform_flops", "mixed_flops"} <= set(paths)
    assert paths["mixed"] == "((factor_shared, x), factor_task)"
    with pytest.raises(ValueError, match="Received: contraction='fast'"):
        planning.plan_dense(layer.factorization, 4, "fast")
    single = FactorizedDense(8, num_domains=1, factorization="tt_matrix", rank=2)
    single.build((None, 12))
    assert "mixed" not in single.contraction_paths()


def test_domain_tensor_slices_like_a_static_domain():
    layer = FactorizedDense(8, num_domains=TASKS, factorization="tucker", rank=2)
    layer.build((None, 12))
    x = rng(1).normal(size=(3, 12)).astype("float32")
    scalar = planning.matmul(layer._plan, layer.factorization, x, ops.convert_to_tensor(2))
    static = planning.matmul(layer._plan, layer.factorization, x, 2)
    assert_close(scalar, static, atol=1e-5)


def test_mixed_batch_gathers_the_domain_operand_per_example():
    layer = FactorizedDense(8, num_domains=TASKS, factorization="tt", rank=2)
    layer.build((None, 12))
    kind = layer.factorization
    tasks = np.array([2, 0, 2, 1], dtype="int32")
    labels = kind.example_labels()
    assert labels[-1][0] == "B" and "t" not in labels[-1]
    gathered = to_numpy(kind.example_operands(routing.select(tasks, TASKS))[-1])
    last = to_numpy(kind.variables[-1])  # (r, t, 1)
    np.testing.assert_array_equal(gathered, np.transpose(last, (1, 0, 2))[tasks])
    x = rng(2).normal(size=(4, 12)).astype("float32")
    mixed = planning.matmul(layer._plan, kind, x, routing.select(tasks, TASKS))
    for b, task in enumerate(tasks):
        assert_close(mixed[b:b + 1], planning.matmul(layer._plan, kind, x[b:b + 1], int(task)),
                     atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_per_example_conv_plan_matches_reference(kind):
    layer, factorization, sizes = built_conv(kind)
    step = planning._per_example(factorization, sizes, 50, 27, 4)
    plan = planning.ConvPlan(None, step)
    assert planning.describe_conv(plan, factorization)["mixed"] == "per_example"
    x = rng(1).normal(size=(2, 5, 5, 3)).astype("float32")
    mixed = np.array([2, 0], dtype="int32")
    outputs = planning.conv(plan, factorization, x, routing.select(mixed, TASKS), layer._conv,
                            layer._patches)
    assert_close(outputs, conv_reference(layer, x, mixed), atol=1e-4)


def test_per_example_conv_plan_chosen_where_the_coded_kernel_multiplies_flops():
    # LAF K = 4, T = 10, 32 -> 32 channels at 16 x 16: the coded kernel convolves to 4 x 32
    # channels (4x a uniform batch's flops); per example kernels keep the flops of one domain.
    layer = FactorizedConv2D(32, 3, num_domains=10, factorization="laf", rank=4,
                             padding="same")
    layer.build((16, 16, 16, 32))
    assert layer.contraction_paths()["mixed"] == "per_example"
    # Three input channels and five output pixels: patches and per-example kernels cost more
    # than the coded kernel's few extra channels.
    small = FactorizedConv2D(4, 3, num_domains=10, factorization="laf", rank=2)
    small.build((16, 7, 7, 3))
    assert small.contraction_paths()["mixed"] != "per_example"
