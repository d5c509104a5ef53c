"""Tensor-network contraction: path search, cost model and execution as large GEMMs.

Every factorised layer is a small tensor network: the factors of the stacked weight plus the
input `x` (labelled with the batch label `"B"`), and for a mixed-task batch a one-hot selector
`(B, T)`. One function, `search_path`, finds the cheapest order of pairwise contractions once
at build time (an exhaustive dynamic programme over subsets, as opt_einsum's "dp"/"optimal",
for up to 10 operands; greedy above). Reconstruct-then-matmul and core-by-core contraction are
both paths of that search, so the cheaper one is picked from the static shapes, the batch size
hint and the ranks. `contract` executes a path: each step is one transpose-reshape-`matmul`
(batched when the two sides share a kept label), never a Python loop over the batch.

Cost model: seconds ~ flops / F + moved elements / M + steps * overhead. The constants are
expressed in flop units (`MEMORY_COST`, `STEP_COST`); they were set from timings on a 2-core
AVX-512 CPU, where one GEMM flop is far cheaper than moving an element through a transpose.
"""

import itertools
import math

from keras import ops

BATCH = "B"
# One element read or written by a step costs about as much as this many GEMM flops.
MEMORY_COST = 8.0
# Fixed cost of one op (launch, reshape bookkeeping) in flop units.
STEP_COST = 2.0e5
EXHAUSTIVE_LIMIT = 10


def pair_flops(labels_a, labels_b, keep, sizes):
    """Flops of contracting two operands, keeping the labels in `keep`."""
    del keep
    return 2 * math.prod(sizes[label] for label in set(labels_a) | set(labels_b))


def pair_cost(labels_a, labels_b, keep, sizes, selector=None):
    """Cost-model estimate (flop units) and flops of one pairwise step.

    `selector` is the label of a one-hot operand `(B, t)`: contracting it with an operand that
    has `t` but not `B` is a gather, whose cost is its output size.
    """
    union = set(labels_a) | set(labels_b)
    out = [label for label in union if label in keep]
    out_size = math.prod(sizes[label] for label in out)
    size_a = math.prod(sizes[label] for label in labels_a)
    size_b = math.prod(sizes[label] for label in labels_b)
    if selector is not None and _is_gather(labels_a, labels_b, selector):
        flops = 0
        return MEMORY_COST * 2 * out_size + STEP_COST, flops
    flops = 2 * math.prod(sizes[label] for label in union)
    return flops + MEMORY_COST * (size_a + size_b + out_size) + STEP_COST, flops


def _is_gather(labels_a, labels_b, selector):
    for sel, other in ((labels_a, labels_b), (labels_b, labels_a)):
        if tuple(sel) == (BATCH, selector) and selector in other and BATCH not in other:
            return True
    return False


class Path:
    """A contraction tree over the operands `0..n-1`: a leaf index or a pair of subtrees."""

    def __init__(self, tree, operand_labels, output_labels, sizes, cost, flops, selector=None):
        self.tree = tree
        self.operand_labels = [tuple(labels) for labels in operand_labels]
        self.output_labels = tuple(output_labels)
        self.sizes = dict(sizes)
        self.cost = cost
        self.flops = flops
        self.selector = selector

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


def search_path(operand_labels, output_labels, sizes, selector=None, cost="model", forced=None):
    """Finds the cheapest pairwise contraction order of a tensor network.

    Args:
        operand_labels: one tuple of labels per operand.
        output_labels: labels of the result, in order.
        sizes: dict label -> size (the batch label gets the batch size hint).
        selector: the task label when one operand is the one-hot selector `(B, t)`.
        cost: `"model"` (flops + memory traffic + per-step overhead) or `"flops"`.
        forced: optional tree to evaluate instead of searching.

    Returns:
        A `Path`.
    """
    n = len(operand_labels)
    labels = [frozenset(lab) for lab in operand_labels]
    output = frozenset(output_labels)
    full = (1 << n) - 1

    def kept(mask):
        inside = set().union(*(labels[i] for i in range(n) if mask >> i & 1))
        outside = set(output).union(*(labels[i] for i in range(n) if not mask >> i & 1))
        return frozenset(inside & outside)

    kept_cache = {}

    def result_labels(mask):
        if mask not in kept_cache:
            kept_cache[mask] = kept(mask)
        return kept_cache[mask]

    def step(mask_a, mask_b):
        la, lb = result_labels(mask_a), result_labels(mask_b)
        keep = result_labels(mask_a | mask_b)
        total, flops = pair_cost(la, lb, keep, sizes, selector)
        return (flops if cost == "flops" else total), flops

    if forced is not None:
        def evaluate(node):
            if isinstance(node, int):
                return 1 << node, 0.0, 0.0
            ma, ca, fa = evaluate(node[0])
            mb, cb, fb = evaluate(node[1])
            c, f = step(ma, mb)
            return ma | mb, ca + cb + c, fa + fb + f

        _, total, flops = evaluate(forced)
        return Path(forced, operand_labels, output_labels, sizes, total, flops, selector)

    if n == 1:
        return Path(0, operand_labels, output_labels, sizes, 0.0, 0.0, selector)

    best = {1 << i: (0.0, 0.0, i) for i in range(n)}
    if n <= EXHAUSTIVE_LIMIT:
        for size in range(2, n + 1):
            for combo in itertools.combinations(range(n), size):
                mask = sum(1 << i for i in combo)
                found = None
                # Enumerate splits with the lowest operand in the first half (each split once).
                low = mask & -mask
                rest = mask ^ low
                sub = rest
                while True:
                    mask_a = low | sub
                    mask_b = mask ^ mask_a
                    if mask_b:
                        ca, fa, ta = best[mask_a]
                        cb, fb, tb = best[mask_b]
                        c, f = step(mask_a, mask_b)
                        total = ca + cb + c
                        if found is None or total < found[0]:
                            found = (total, fa + fb + f, (ta, tb))
                    if sub == 0:
                        break
                    sub = (sub - 1) & rest
                best[mask] = found
        total, flops, tree = best[full]
        return Path(tree, operand_labels, output_labels, sizes, total, flops, selector)

    # Greedy: repeatedly contract the pair with the lowest step cost.
    nodes = [(1 << i, 0.0, 0.0, i) for i in range(n)]
    while len(nodes) > 1:
        choice = None
        for a, b in itertools.combinations(range(len(nodes)), 2):
            c, f = step(nodes[a][0], nodes[b][0])
            if choice is None or c < choice[0]:
                choice = (c, f, a, b)
        c, f, a, b = choice
        na, nb = nodes[a], nodes[b]
        merged = (na[0] | nb[0], na[1] + nb[1] + c, na[2] + nb[2] + f, (na[3], nb[3]))
        nodes = [node for i, node in enumerate(nodes) if i not in (a, b)] + [merged]
    _, total, flops, tree = nodes[0]
    return Path(tree, operand_labels, output_labels, sizes, total, flops, selector)


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
    n = len(tensors)
    labels = path.operand_labels
    output = set(path.output_labels)
    sizes = path.sizes

    def mask_of(node):
        if isinstance(node, int):
            return 1 << node
        return mask_of(node[0]) | mask_of(node[1])

    def outside_labels(mask):
        found = set(output)
        for i in range(n):
            if not mask >> i & 1:
                found.update(labels[i])
        return found

    def run(node):
        if isinstance(node, int):
            tensor, labs = tensors[node], labels[node]
            drop = [lab for lab in labs if lab not in outside_labels(1 << node)]
            if drop and all(sizes[lab] == 1 for lab in drop):
                labs = tuple(lab for lab in labs if lab not in drop)
                tensor = ops.reshape(tensor, tuple(-1 if lab == BATCH else sizes[lab]
                                                   for lab in labs))
            elif drop:
                axes = tuple(labs.index(lab) for lab in drop)
                tensor = ops.sum(tensor, axis=axes)
                labs = tuple(lab for lab in labs if lab not in drop)
            return tensor, labs
        a, la = run(node[0])
        b, lb = run(node[1])
        keep = outside_labels(mask_of(node))
        return contract_pair(a, la, b, lb, keep, sizes, path.selector)

    result, result_labels = run(path.tree)
    return _transpose_to(result, result_labels, path.output_labels)


def contract_pair(a, labels_a, b, labels_b, keep, sizes, selector=None):
    """One contraction step as a single (batched) matmul, or a gather for a one-hot selector.

    Returns `(tensor, labels)`; the result's labels are ordered batch, a-free, b-free.
    """
    if selector is not None and _is_gather(labels_a, labels_b, selector):
        if tuple(labels_a) == (BATCH, selector):
            a, labels_a, b, labels_b = b, labels_b, a, labels_a
        indices = b if len(b.shape) == 1 else ops.argmax(b, axis=-1)
        axis = labels_a.index(selector)
        gathered = ops.take(a, indices, axis=axis)
        rest = list(labels_a[:axis]) + [BATCH] + list(labels_a[axis + 1 :])
        return gathered, tuple(rest)

    if selector is not None:
        # The selector operand may arrive as task indices `(B,)`: expand to one-hot here.
        if tuple(labels_a) == (BATCH, selector) and len(a.shape) == 1:
            a = ops.one_hot(a, sizes[selector], dtype=b.dtype)
        if tuple(labels_b) == (BATCH, selector) and len(b.shape) == 1:
            b = ops.one_hot(b, sizes[selector], dtype=a.dtype)
    set_b = set(labels_b)
    set_a = set(labels_a)
    batch = [lab for lab in labels_a if lab in set_b and lab in keep]
    contracted = [lab for lab in labels_a if lab in set_b and lab not in keep]
    free_a = [lab for lab in labels_a if lab not in set_b]
    free_b = [lab for lab in labels_b if lab not in set_a]
    a = _transpose_to(a, labels_a, batch + free_a + contracted)
    b = _transpose_to(b, labels_b, batch + contracted + free_b)
    dims_batch = _group_size(batch, sizes)
    dims_free_a = _group_size(free_a, sizes)
    dims_free_b = _group_size(free_b, sizes)
    dims_contracted = _group_size(contracted, sizes)
    if batch:
        a = ops.reshape(a, (dims_batch, dims_free_a, dims_contracted))
        b = ops.reshape(b, (dims_batch, dims_contracted, dims_free_b))
    else:
        a = ops.reshape(a, (dims_free_a, dims_contracted))
        b = ops.reshape(b, (dims_contracted, dims_free_b))
    out = ops.matmul(a, b)
    out_labels = batch + free_a + free_b
    out = ops.reshape(out, tuple(-1 if lab == BATCH else sizes[lab] for lab in out_labels))
    return out, tuple(out_labels)


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
