"""Tensor-network contraction: path search, cost model and execution as large GEMMs.

Every factorised layer is a small tensor network: the factors of the stacked weight plus the
input `x` (labelled with the batch label `"B"`); for a mixed-task batch the task operand is
gathered per example first (its task label becomes `"B"`). One function, `search_path`, finds
the cheapest order of pairwise contractions once at build time (an exhaustive dynamic
programme over subsets, as opt_einsum's "dp"/"optimal", for up to 10 operands; greedy above).
Reconstruct-then-matmul and core-by-core contraction are both paths of that search, so the
cheaper one is picked from the static shapes, the batch size hint and the ranks. `contract`
executes a path: each step is one transpose-reshape-`matmul` (batched when the two sides
share a kept label), never a Python loop over the batch.

Cost model: seconds ~ flops / F + moved elements / M + steps * overhead, in flop units (see
`plan_pair`): on a CPU one GEMM flop is about 100x cheaper than writing or transposing one
element, so memory-bound skinny steps and transposes weigh as much as the flops.
"""

import itertools
import math

from keras import backend as K
from keras import ops

BATCH = "B"
# Cost model, in GEMM-flop units (one flop ~ 1e-11 s at the ~100 GFLOP/s this CPU reaches on a
# large GEMM; an element written by a GEMM or moved by a transpose ~ 1e-9 s, 1 Gelem/s).
# A skinny GEMM (contracted size 4..64, as in core-by-core TT steps) is memory-bound, which a
# flop count alone misses: timings of (4096x16)@(16x512) and similar fit flops + 100 * output
# elements + 50 * input elements within ~20 %.
OUTPUT_COST = 100.0
INPUT_COST = 50.0
TRANSPOSE_COST = 100.0
# Fixed cost of one step (op dispatch inside a compiled graph, ~10 us).
STEP_COST = 1.0e6
EXHAUSTIVE_LIMIT = 10
# Contracted size up to which a batched matrix-vector step runs as multiply-and-sum.
_MATVEC_LIMIT = 64
# Contracted size up to which an unbatched matrix-vector step runs as a sum of scaled columns.
_UNROLL_LIMIT = 8


class PairPlan:
    """How one pairwise step runs: `left @ right` after at most two transposes.

    `transpose_left` / `transpose_right`: the operand is laid out as the transpose of the
    matrix the product needs, read by the matmul itself (no transpose op).
    """

    def __init__(self, kind, out_labels, flops, cost, swap=False, left=None, right=None,
                 groups=None, transpose_left=False, transpose_right=False):
        self.kind = kind
        self.out_labels = tuple(out_labels)
        self.flops = flops
        self.cost = cost
        self.swap = swap
        self.left = left
        self.right = right
        self.groups = groups
        self.transpose_left = transpose_left
        self.transpose_right = transpose_right


def _size(labels, sizes):
    return math.prod(sizes[label] for label in labels)


def plan_pair(labels_a, labels_b, keep, sizes, target=None):
    """Plans one pairwise step on operands laid out as `labels_a`, `labels_b`.

    The step is a single (batched) matmul; of the two operand orders and two orders of the
    contracted labels it takes the one that transposes the fewest elements, counting the
    result's transpose to `target` (the final step's output layout) when given.
    """
    labels_a, labels_b = tuple(labels_a), tuple(labels_b)
    set_a, set_b = set(labels_a), set(labels_b)
    flops = 2 * _size(set_a | set_b, sizes)
    best = None
    for swap in (False, True):
        left, right = (labels_b, labels_a) if swap else (labels_a, labels_b)
        batch = [lab for lab in left if lab in set_a & set_b and lab in keep]
        free_left = [lab for lab in left if lab not in (set_b if not swap else set_a)]
        free_right = [lab for lab in right if lab not in (set_a if not swap else set_b)]
        for source in (left, right):
            contracted = [lab for lab in source if lab in set_a & set_b and lab not in keep]
            left_order = tuple(batch + free_left + contracted)
            right_order = tuple(batch + contracted + free_right)
            # A GEMM step reads a transposed operand for free (matmul flags on TensorFlow;
            # XLA fuses the transpose); the matrix-vector and outer-product steps do not.
            gemm = contracted and not (batch and not free_right
                                       and _size(contracted, sizes) <= _MATVEC_LIMIT)
            transpose_left = bool(gemm and free_left
                                  and left == tuple(batch + contracted + free_left))
            transpose_right = bool(gemm and free_right
                                   and right == tuple(batch + free_right + contracted))
            if transpose_left:
                left_order = left
            if transpose_right:
                right_order = right
            moved = (_size(left, sizes) if left != left_order else 0) + (
                _size(right, sizes) if right != right_order else 0
            )
            out = tuple(batch + free_left + free_right)
            # The result's own transpose is charged by the search (`final_cost`).
            choice = moved + (_size(out, sizes) if target is not None and out != target else 0)
            # Ties: the batch label first (what the next step or the output wants), then
            # the fewest transposed reads.
            choice = (choice, BATCH in out and out[0] != BATCH, transpose_left + transpose_right)
            if best is None or choice < best[0]:
                groups = (batch, free_left, contracted, free_right)
                best = (choice, moved, swap, left_order, right_order, out, groups,
                        transpose_left, transpose_right)
    (_, moved, swap, left_order, right_order, out, groups, transpose_left,
     transpose_right) = best
    cost = (
        flops
        + OUTPUT_COST * _size(out, sizes)
        + INPUT_COST * (_size(labels_a, sizes) + _size(labels_b, sizes))
        + TRANSPOSE_COST * moved
        + STEP_COST
    )
    return PairPlan("matmul", out, flops, cost, swap, left_order, right_order, groups,
                    transpose_left, transpose_right)


class Path:
    """A contraction tree over the operands `0..n-1`: a leaf index or a pair of subtrees."""

    def __init__(self, tree, operand_labels, output_labels, sizes, cost, flops):
        self.tree = tree
        self.operand_labels = [tuple(labels) for labels in operand_labels]
        self.output_labels = tuple(output_labels)
        self.sizes = dict(sizes)
        self.cost = cost
        self.flops = flops

    def describe(self, names=None):
        """The path as nested parentheses, e.g. `((core_0, x), core_1)`."""
        names = names or [f"op{i}" for i in range(len(self.operand_labels))]

        def render(node):
            if isinstance(node, int):
                return names[node]
            return f"({render(node[0])}, {render(node[1])})"

        return render(self.tree)

    def __repr__(self):
        return f"Path({self.describe()}, flops={self.flops:.3g}, cost={self.cost:.3g})"


class _Network:
    """Label bookkeeping shared by the search and the executor."""

    def __init__(self, operand_labels, output_labels, sizes):
        self.labels = [tuple(lab) for lab in operand_labels]
        self.output = tuple(output_labels)
        self.sizes = sizes
        self.count = len(self.labels)
        self._kept = {}

    def kept(self, mask):
        """Labels of the contraction of the operands in `mask` still needed outside it."""
        if mask not in self._kept:
            inside, outside = set(), set(self.output)
            for i in range(self.count):
                (inside if mask >> i & 1 else outside).update(self.labels[i])
            self._kept[mask] = inside & outside
        return self._kept[mask]

    def leaf_layout(self, index):
        keep = self.kept(1 << index)
        return tuple(lab for lab in self.labels[index] if lab in keep)

    def final_cost(self, layout):
        if tuple(layout) == self.output:
            return 0.0
        return TRANSPOSE_COST * _size(layout, self.sizes)


def search_path(operand_labels, output_labels, sizes, cost="model", forced=None):
    """Finds the cheapest pairwise contraction order of a tensor network.

    Args:
        operand_labels: one tuple of labels per operand (its memory layout).
        output_labels: labels of the result, in order.
        sizes: dict label -> size (the batch label gets the batch size hint).
        cost: `"model"` (flops + memory traffic + transposes + per-step overhead, see
            `plan_pair`) or `"flops"`.
        forced: optional tree to evaluate instead of searching.

    Returns:
        A `Path`.
    """
    net = _Network(operand_labels, output_labels, sizes)
    n = net.count
    full = (1 << n) - 1
    use_flops = cost == "flops"

    def step(entry_a, entry_b):
        mask = entry_a[0] | entry_b[0]
        target = net.output if mask == full else None
        plan = plan_pair(entry_a[4], entry_b[4], net.kept(mask), sizes, target)
        price = plan.flops if use_flops else plan.cost
        return (mask, entry_a[1] + entry_b[1] + price, entry_a[2] + entry_b[2] + plan.flops,
                (entry_a[3], entry_b[3]), plan.out_labels)

    leaves = [(1 << i, 0.0, 0.0, i, net.leaf_layout(i)) for i in range(n)]

    def finish(entry):
        total = entry[1] + (0.0 if use_flops else net.final_cost(entry[4]))
        return Path(entry[3], operand_labels, output_labels, sizes, total, entry[2])

    if forced is not None:
        def evaluate(node):
            if isinstance(node, int):
                return leaves[node]
            return step(evaluate(node[0]), evaluate(node[1]))

        return finish(evaluate(forced))
    if n == 1:
        return finish(leaves[0])
    if n <= EXHAUSTIVE_LIMIT:
        best = {1 << i: leaves[i] for i in range(n)}
        for size in range(2, n + 1):
            for combo in itertools.combinations(range(n), size):
                mask = sum(1 << i for i in combo)
                found = None
                # Splits with the lowest operand in the first half: each split once.
                low = mask & -mask
                rest = mask ^ low
                sub = rest
                while True:
                    mask_a = low | sub
                    mask_b = mask ^ mask_a
                    if mask_b:
                        entry = step(best[mask_a], best[mask_b])
                        if mask == full and not use_flops:
                            key = entry[1] + net.final_cost(entry[4])
                        else:
                            key = entry[1]
                        if found is None or key < found[0]:
                            found = (key, entry)
                    if sub == 0:
                        break
                    sub = (sub - 1) & rest
                best[mask] = found[1]
        return finish(best[full])
    # Greedy above the exhaustive limit: repeatedly take the cheapest pairwise step.
    nodes = list(leaves)
    while len(nodes) > 1:
        choice = None
        for a, b in itertools.combinations(range(len(nodes)), 2):
            entry = step(nodes[a], nodes[b])
            if choice is None or entry[1] - nodes[a][1] - nodes[b][1] < choice[0]:
                choice = (entry[1] - nodes[a][1] - nodes[b][1], a, b, entry)
        _, a, b, entry = choice
        nodes = [node for i, node in enumerate(nodes) if i not in (a, b)] + [entry]
    return finish(nodes[0])


def reconstruct_first_tree(weight_operands, other_operands):
    """The tree that contracts all weight operands first (left to right), then the others."""
    tree = weight_operands[0]
    for index in weight_operands[1:]:
        tree = (tree, index)
    for index in other_operands:
        tree = (tree, index)
    return tree


def contract(path, tensors):
    """Executes `path` on `tensors` (one per operand); returns the result in output order."""
    net = _Network(path.operand_labels, path.output_labels, path.sizes)
    sizes = path.sizes
    full = (1 << net.count) - 1

    def run(node):
        if isinstance(node, int):
            tensor, labels = tensors[node], net.labels[node]
            layout = net.leaf_layout(node)
            if layout != labels:
                dropped = [lab for lab in labels if lab not in layout]
                if all(sizes[lab] == 1 for lab in dropped):
                    tensor = reshape(tensor, _shape(layout, sizes))
                else:
                    axes = tuple(labels.index(lab) for lab in dropped)
                    tensor = ops.sum(tensor, axis=axes)
            return 1 << node, tensor, layout
        mask_a, a, la = run(node[0])
        mask_b, b, lb = run(node[1])
        mask = mask_a | mask_b
        target = path.output_labels if mask == full else None
        out, labels = contract_pair(a, la, b, lb, net.kept(mask), sizes, target)
        return mask, out, labels

    _, result, labels = run(path.tree)
    return _transpose_to(result, labels, path.output_labels)


def contract_pair(a, labels_a, b, labels_b, keep, sizes, target=None):
    """Runs one step as planned by `plan_pair`; returns `(tensor, labels)`."""
    plan = plan_pair(labels_a, labels_b, keep, sizes, target)
    left, labels_left, right, labels_right = (b, labels_b, a, labels_a) if plan.swap else (
        a, labels_a, b, labels_b)
    left = _transpose_to(left, labels_left, plan.left)
    right = _transpose_to(right, labels_right, plan.right)
    batch, free_left, contracted, free_right = plan.groups
    if not contracted:
        # An outer product (batched over shared kept labels): a broadcast multiply, not a
        # matmul with an inner size of 1.
        dims_b = (_group_size(batch, sizes),) if batch else ()
        left = reshape(left, dims_b + (_group_size(free_left, sizes), 1))
        right = reshape(right, dims_b + (1, _group_size(free_right, sizes)))
        out = matmul(left, right) if batch and _BROADCAST_IS_SLOW() else left * right
        return reshape(out, _shape(plan.out_labels, sizes)), plan.out_labels
    dims_c = _group_size(contracted, sizes)
    if batch and not free_right and dims_c <= _MATVEC_LIMIT:
        # A batched matrix-vector product with a short vector: a broadcast multiply and a sum
        # (one fused pass) instead of a batch of tiny GEMMs, slow on CPU backends.
        dims_b = _group_size(batch, sizes)
        left = reshape(left, (dims_b, _group_size(free_left, sizes), dims_c))
        return reshape(matvec(left, reshape(right, (dims_b, dims_c))),
                       _shape(plan.out_labels, sizes)), plan.out_labels
    dims_b = (_group_size(batch, sizes),) if batch else ()
    rows, cols = _group_size(free_left, sizes), _group_size(free_right, sizes)
    if not batch and not free_right and dims_c <= _UNROLL_LIMIT and K.backend() == "jax":
        # A matrix times a short vector (a LAF or TT domain code meeting its factor): XLA on a
        # CPU runs it as a GEMV with an inner size of 2-8, 1.5-2x slower than the fused sum of
        # the matrix's columns scaled by the vector's entries.
        left = reshape(left, (dims_c, rows) if plan.transpose_left else (rows, dims_c))
        right = reshape(right, (dims_c,))
        columns = [left[c] if plan.transpose_left else left[:, c] for c in range(dims_c)]
        out = columns[0] * right[0]
        for c in range(1, dims_c):
            out = out + columns[c] * right[c]
        return reshape(out, _shape(plan.out_labels, sizes)), plan.out_labels
    left = reshape(left, dims_b + ((dims_c, rows) if plan.transpose_left else (rows, dims_c)))
    right = reshape(right, dims_b + ((cols, dims_c) if plan.transpose_right else (dims_c, cols)))
    out = matmul(left, right, plan.transpose_left, plan.transpose_right)
    return reshape(out, _shape(plan.out_labels, sizes)), plan.out_labels


def _BROADCAST_IS_SLOW():
    # TensorFlow runs a broadcast over a middle axis ((b, n, c) * (b, 1, c)) element by
    # element outside XLA: 2.4-3.3x slower than a batched matmul for (256, 512, 4) and
    # (4096, 32, 4) in a TF graph (within 15 % under XLA). XLA backends fuse the broadcast.
    return K.backend() == "tensorflow"


def matvec(matrices, vectors):
    """Batched matrix-vector product: `(b, n, c)` with `(b, c)` -> `(b, n)`.

    A multiply and a sum over `c` (one fused pass under XLA) or, on TensorFlow, a batched
    matmul (see `_BROADCAST_IS_SLOW`).
    """
    if _BROADCAST_IS_SLOW():
        return ops.squeeze(matmul(matrices, ops.expand_dims(vectors, -1)), -1)
    return ops.sum(matrices * ops.expand_dims(vectors, -2), axis=-1)


def matmul(left, right, transpose_left=False, transpose_right=False):
    """`left @ right` of (batched) matrices, either given transposed (swapped last two axes).

    On TensorFlow the flags go to the matmul kernel (a TF graph runs each transpose as an op
    of its own); elsewhere XLA fuses the transposes into the dot.
    """
    if K.backend() == "tensorflow" and left.dtype == right.dtype:
        import tensorflow as tf

        return tf.linalg.matmul(left, right, transpose_a=transpose_left,
                                transpose_b=transpose_right)
    if transpose_left:
        left = ops.swapaxes(left, -1, -2)
    if transpose_right:
        right = ops.swapaxes(right, -1, -2)
    return ops.matmul(left, right)


def reshape(tensor, shape):
    """`ops.reshape`, skipped when the static shape already is `shape` (-1: any size).

    Each skipped reshape is one op less in a TF graph, where op dispatch, not flops, bounds
    the small steps of a factorised layer.
    """
    current = tuple(tensor.shape)
    if len(current) == len(shape) and all(
            want == -1 or have == want for have, want in zip(current, shape)):
        return tensor
    return ops.reshape(tensor, shape)


def _shape(labels, sizes):
    return tuple(-1 if lab == BATCH else sizes[lab] for lab in labels)


def _group_size(group, sizes):
    if BATCH in group:
        return -1
    return math.prod(sizes[lab] for lab in group)


def _transpose_to(tensor, labels, target):
    labels, target = tuple(labels), tuple(target)
    if labels == target:
        return tensor
    return ops.transpose(tensor, tuple(labels.index(lab) for lab in target))


# === MISSION §3 closed forms for the TT-matrix layer (used by the benchmarks and tests) ===


def dense_flops(batch, n, m):
    """Flops of `x @ W` with `x` `(batch, n)` and `W` `(n, m)`."""
    return 2 * batch * n * m


def tt_matrix_core_by_core_flops(batch, input_modes, output_modes, ranks):
    """Flops of t3f-style core-by-core contraction; `ranks` are `(1, r_1, ..., r_{d-1}, 1)`."""
    d = len(input_modes)
    total = 0
    for k in range(d):
        left = math.prod(input_modes[:k])
        right = math.prod(output_modes[k + 1 :])
        total += ranks[k] * ranks[k + 1] * input_modes[k] * output_modes[k] * left * right
    return 2 * batch * total


def tt_matrix_reconstruct_flops(batch, input_modes, output_modes, ranks):
    """Approximate flops of reconstruct-then-GEMM: `2 N M r_{d-1} + 2 B N M`."""
    n, m = math.prod(input_modes), math.prod(output_modes)
    return 2 * n * m * ranks[-2] + 2 * batch * n * m
