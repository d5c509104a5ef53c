"""Path search and execution of tensor-network contractions."""

import itertools
import math

import numpy as np
import pytest

from keras_mdn.ops import contraction
from tests.helpers import assert_close, rng

TT_LABELS = [("i0", "o0", "r1"), ("r1", "i1", "o1", "r2"), ("r2", "i2", "o2"),
             ("B", "i0", "i1", "i2")]
TT_OUTPUT = ("B", "o0", "o1", "o2")


def tt_sizes(rank, batch, modes=(4, 4, 4)):
    sizes = {f"i{k}": n for k, n in enumerate(modes)}
    sizes.update({f"o{k}": n for k, n in enumerate(modes)})
    sizes.update(r1=rank, r2=rank, B=batch)
    return sizes


def random_operands(labels, sizes, seed=0):
    generator = rng(seed)
    return [generator.normal(size=[sizes[lab] for lab in labs]).astype("float32")
            for labs in labels]


def einsum_reference(labels, output, operands):
    letters = {}
    for lab in itertools.chain(*labels, output):
        letters.setdefault(lab, chr(ord("a") + len(letters)))
    spec = ",".join("".join(letters[lab] for lab in labs) for labs in labels)
    return np.einsum(spec + "->" + "".join(letters[lab] for lab in output), *operands)


@pytest.mark.parametrize("cost", ["model", "flops"])
@pytest.mark.parametrize("rank,batch", [(2, 3), (8, 64)])
def test_contract_matches_einsum(cost, rank, batch):
    sizes = tt_sizes(rank, batch)
    operands = random_operands(TT_LABELS, sizes)
    path = contraction.search_path(TT_LABELS, TT_OUTPUT, sizes, cost=cost)
    assert_close(contraction.contract(path, operands),
                 einsum_reference(TT_LABELS, TT_OUTPUT, operands), atol=1e-3, rtol=1e-4)


def test_every_tree_gives_the_same_result():
    sizes = tt_sizes(3, 5)
    operands = random_operands(TT_LABELS, sizes, seed=1)
    expected = einsum_reference(TT_LABELS, TT_OUTPUT, operands)
    for tree in [(((0, 3), 1), 2), ((0, (1, 2)), 3), ((2, 3), (0, 1)), (((2, 3), 1), 0)]:
        path = contraction.search_path(TT_LABELS, TT_OUTPUT, sizes, forced=tree)
        assert_close(contraction.contract(path, operands), expected, atol=1e-4, rtol=1e-4)


def brute_force_flops(labels, output, sizes):
    """Minimum flops over all pairwise contraction trees (tiny networks only)."""
    def search(items):
        if len(items) == 1:
            return 0
        best = None
        for a, b in itertools.combinations(range(len(items)), 2):
            rest = [items[i] for i in range(len(items)) if i not in (a, b)]
            outside = set(output).union(*rest)
            merged = frozenset((items[a] | items[b]) & outside)
            value = 2 * math.prod(sizes[lab] for lab in items[a] | items[b])
            total = value + search(rest + [merged])
            best = total if best is None else min(best, total)
        return best

    return search([frozenset(labs) for labs in labels])


@pytest.mark.parametrize("rank,batch", [(2, 1), (16, 256), (4, 1024)])
def test_dynamic_programme_finds_the_fewest_flops(rank, batch):
    sizes = tt_sizes(rank, batch)
    path = contraction.search_path(TT_LABELS, TT_OUTPUT, sizes, cost="flops")
    assert path.flops == brute_force_flops(TT_LABELS, TT_OUTPUT, sizes)


def test_greedy_above_the_exhaustive_limit(monkeypatch):
    monkeypatch.setattr(contraction, "EXHAUSTIVE_LIMIT", 2)
    sizes = tt_sizes(3, 4)
    operands = random_operands(TT_LABELS, sizes, seed=2)
    path = contraction.search_path(TT_LABELS, TT_OUTPUT, sizes)
    assert_close(contraction.contract(path, operands),
                 einsum_reference(TT_LABELS, TT_OUTPUT, operands), atol=1e-4, rtol=1e-4)


def test_choice_depends_on_batch_and_rank():
    # Small batch, low rank: contract x core by core. Large batch, high rank: reconstruct.
    modes = (16, 8, 8)
    small = contraction.search_path(TT_LABELS, TT_OUTPUT, tt_sizes(4, 32, modes))
    large = contraction.search_path(TT_LABELS, TT_OUTPUT, tt_sizes(32, 1024, modes))
    x = 3

    def x_depth(tree):  # how many steps involve x
        if isinstance(tree, int):
            return 0
        inside = any(_contains(child, x) for child in tree)
        return inside + sum(x_depth(child) for child in tree)

    assert x_depth(small.tree) >= 2
    assert x_depth(large.tree) == 1


def _contains(tree, leaf):
    if isinstance(tree, int):
        return tree == leaf
    return any(_contains(child, leaf) for child in tree)


def test_per_example_operand_matches_einsum():
    # A task operand gathered per example carries the batch label: (B, k) with (i, k).
    labels = [("i", "k"), ("B", "k"), ("B", "i")]
    sizes = {"i": 5, "k": 3, "B": 6}
    operands = random_operands(labels, sizes)
    expected = einsum_reference(labels, ("B",), operands)
    path = contraction.search_path(labels, ("B",), sizes)
    assert_close(contraction.contract(path, operands), expected, atol=1e-5)
    forced = contraction.search_path(labels, ("B",), sizes, forced=((0, 1), 2))
    assert_close(contraction.contract(forced, operands), expected, atol=1e-5)


def test_closed_form_flops_match_the_searched_path():
    sizes = tt_sizes(4, 32, (16, 8, 8))
    core_by_core = contraction.search_path(TT_LABELS, TT_OUTPUT, sizes, forced=(((0, 3), 1), 2))
    assert core_by_core.flops == contraction.tt_matrix_core_by_core_flops(
        32, (16, 8, 8), (16, 8, 8), (1, 4, 4, 1))
    assert contraction.dense_flops(32, 1024, 1024) == 2 * 32 * 1024 * 1024


def test_outer_product_step_matches_einsum():
    # (B, i) and (B, k) share only the kept batch label: a broadcast product, then a GEMM.
    labels = [("B", "i"), ("B", "k"), ("i", "k", "o")]
    sizes = {"B": 5, "i": 3, "k": 4, "o": 2}
    operands = random_operands(labels, sizes, seed=3)
    path = contraction.search_path(labels, ("B", "o"), sizes, forced=((0, 1), 2))
    assert_close(contraction.contract(path, operands),
                 einsum_reference(labels, ("B", "o"), operands), atol=1e-5)


def test_reshape_is_skipped_only_when_the_static_shape_matches():
    x = np.zeros((4, 3), "float32")
    assert contraction.reshape(x, (-1, 3)) is x
    assert contraction.reshape(x, (4, 3)) is x
    assert tuple(contraction.reshape(x, (2, 6)).shape) == (2, 6)
    assert tuple(contraction.reshape(x, (-1,)).shape) == (12,)


def test_transposed_operands_are_read_by_the_matmul():
    # (o, r) and (r, B) laid out as the transposes of the GEMM's operands: no transpose op,
    # the matmul reads them transposed; the result lands in output order (B, o).
    labels = [("o", "r"), ("r", "B")]
    sizes = {"o": 6, "r": 3, "B": 5}
    plan = contraction.plan_pair(labels[0], labels[1], {"B", "o"}, sizes, target=("B", "o"))
    assert plan.transpose_left and plan.transpose_right
    assert plan.out_labels == ("B", "o")
    operands = random_operands(labels, sizes, seed=4)
    path = contraction.search_path(labels, ("B", "o"), sizes)
    assert_close(contraction.contract(path, operands),
                 einsum_reference(labels, ("B", "o"), operands), atol=1e-5)


@pytest.mark.parametrize("labels", [[("i", "o", "k"), ("k",)], [("k", "i", "o"), ("k",)],
                                    [("k",), ("i", "k")]])
def test_matrix_times_short_vector_matches_einsum(labels):
    # A domain code (k) meeting its factor: on JAX a sum of scaled columns, elsewhere a GEMV;
    # the factor laid out with k last, first, or the vector given first.
    sizes = {"i": 5, "o": 3, "k": 4}
    output = tuple(lab for labs in labels for lab in labs if lab != "k")
    operands = random_operands(labels, sizes, seed=5)
    path = contraction.search_path(labels, output, sizes)
    assert_close(contraction.contract(path, operands),
                 einsum_reference(labels, output, operands), atol=1e-5)
