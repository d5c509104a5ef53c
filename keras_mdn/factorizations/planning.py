"""Forward plans of a factorised weight: how it meets its input, chosen once at build time.

A factorised layer holds a `DensePlan` or a `ConvPlan` made here from its factorisation's
`Network` (static shapes, ranks, batch size hint) and runs it on every call:

- dense: `x @ W_domain` is a contraction of the factors with `x`, its order found by
  `contraction.search_path`; the reconstruct-then-GEMM order is one of the candidates, so the
  cheaper one wins. For a mixed-domain batch the domain operand is first gathered per example
  (`Factorization.example_operands`, labels `(B, ...)`), then contracted like the others.
  Inputs with positions (`(B, ..., D_in)`, several rows per example) may instead build each
  example's weight from its gathered codes and run one batched matmul (`per_example`).
- convolution: the conv kernel is formed by a subset of the factors that holds every factor
  touching the input modes (spatial and `C_in`), never the domain factor of a mixed batch;
  the convolution writes that kernel's open bond labels as channels, and the remaining factors
  (output factor, domain codes) are contracted with its output like a dense layer. The subset
  with the lowest modelled cost is taken; the full kernel (`"reconstruct"`) is one candidate.
  A mixed batch has one more candidate, `PerExampleConv`: each example's kernel from its
  gathered codes, the input's patches, one batched matmul (a uniform batch's conv flops, where
  the other forms multiply them by the code size); in a TF graph not compiled by XLA, one
  grouped convolution instead of the patches (`grouped_conv_wins`).

The form of the domain decides the path while tracing (never a run-time `cond`): an int or 0-d
tensor takes `uniform`, a `keras_mdn.ops.routing.Selection` of a domain vector takes `mixed`.
Per-example selection is a gather of the small domain operand (its codes), never a one-hot
product (which would spread a NaN example to every domain's gradients as `0 * NaN`) and never
a full weight gathered from a stack of every domain's weights.
"""

import itertools
import math
from typing import NamedTuple

from keras import backend as K
from keras import ops

from keras_mdn.ops import contraction, routing

_MODES = ("auto", "flops", "reconstruct")


class DensePlan(NamedTuple):
    """Contraction paths of `x @ W`: `uniform` (one domain) and `mixed` (None: one domain).

    `per_example`: for inputs `(B, positions, ...)` with a domain per example, the path building
    each example's weight `(B, *in, *out)`, then one batched matmul over its positions (the
    uniform flops), when that costs less than `mixed` over every row; else None.
    """

    uniform: contraction.Path
    mixed: object
    per_example: object = None


class FactoredConv(NamedTuple):
    """A convolution with the factors `inner` as kernel, then `post` over the rest.

    Attributes:
        inner: indices of the operands forming the conv kernel.
        outer: indices of the other operands, contracted after the convolution.
        kernel_path: path building the kernel `(*in_dims, width)` from `inner`.
        post: path contracting `outer` (a mixed batch: the domain operand gathered per example)
            with the conv output `(B, P, bonds)`.
        bonds: the kernel's open labels, in channel order.
        cost: modelled cost, in the units of `contraction`.
    """

    inner: tuple
    outer: tuple
    kernel_path: contraction.Path
    post: contraction.Path
    bonds: tuple
    cost: float


class PerExampleConv(NamedTuple):
    """A mixed batch's convolution as one GEMM per example against its own kernel.

    Each example's kernel `(*in_dims, *out_dims)` is contracted from the factors with the domain
    operand gathered per example (`kernel_path`, labels `(B, *in, *out)`); the input's patches
    `(B, P, prod(in_dims))` then meet it in one batched matmul. The convolution's flops are a
    uniform batch's (the coded kernel's are `E` times those), paid for by writing the patches
    and `B` kernels.

    With `project` (Tucker), the input-channel factor `U_in` `(C_in, r_in)` first projects the
    input to `r_in` channels (one 2-D GEMM), each example's kernel maps `r_in` to `r_out`
    channels, and the output factor `U_out` `(filters, r_out)` follows as a 2-D GEMM: patches,
    kernels and the batched GEMM shrink by `r_in / C_in` and `r_out / filters` (XLA on a CPU
    writes patches slowly, about 1 ms per million elements on this machine).

    Attributes:
        kernel_path: path building the per-example kernels from the example operands (all of
            them, or all but `project`'s two factors).
        cost: modelled cost, in the units of `contraction`.
        project: None, or `(input factor index, output factor index)`.
    """

    kernel_path: contraction.Path
    cost: float
    project: object = None


class ConvPlan(NamedTuple):
    """`uniform` / `mixed`: a `FactoredConv`, a `PerExampleConv` (mixed only), or None for the
    reconstructed (coded) kernel."""

    uniform: object
    mixed: object


def check_mode(mode, allowed=_MODES):
    if mode not in allowed:
        raise ValueError(f"`contraction` must be one of {allowed}. Received: contraction={mode!r}")
    return mode


# === Dense ===


def plan_dense(factorization, batch_size, mode="auto", positions=1):
    """The `DensePlan` of a built factorisation for a batch of `batch_size` rows.

    `positions`: rows per example (inputs `(B, ..., D_in)`: the product of the middle
    dimensions; None when unknown), `batch_size` counting every row.
    """
    check_mode(mode)
    net = factorization.network_
    sizes = dict(net.sizes)
    sizes[contraction.BATCH] = max(int(batch_size), 1)
    x_labels = (contraction.BATCH,) + net.in_labels
    output = (contraction.BATCH,) + net.out_labels
    uniform = _search(net, factorization.sliced_labels() + [x_labels], output, sizes, mode)
    mixed = per_example = None
    if net.task_label is not None:
        labels = factorization.example_labels() + [x_labels]
        mixed = _search(net, labels, output, sizes, mode)
        if mode == "auto" and positions is not None and positions > 1:
            per_example = _per_example_dense(factorization, sizes, positions, mixed.cost)
    return DensePlan(uniform, mixed, per_example)


def _per_example_dense(factorization, sizes, positions, mixed_cost):
    """The per-example weights' path when cheaper than `mixed_cost` (every row), else None."""
    net = factorization.network_
    sizes = dict(sizes)
    rows = sizes[contraction.BATCH]
    sizes[contraction.BATCH] = max(rows // positions, 1)
    in_size = math.prod(factorization.in_dims)
    out_size = math.prod(factorization.out_dims)
    kernel_path = contraction.search_path(factorization.example_labels(),
                                          (contraction.BATCH,) + net.in_labels + net.out_labels,
                                          sizes)
    cost = (kernel_path.cost + contraction.INPUT_COST * sizes[contraction.BATCH] * in_size
            * out_size + _conv_cost(rows, in_size, out_size))
    return kernel_path if cost < mixed_cost else None


def _search(net, labels, output, sizes, mode):
    if mode != "reconstruct":
        return contraction.search_path(labels, output, sizes,
                                       cost="flops" if mode == "flops" else "model")
    count = len(net.labels)
    weight_output = set(output) | {lab for labs in labels[count:] for lab in labs}
    weights = contraction.search_path(
        labels[:count], [lab for labs in labels[:count] for lab in labs
                         if lab in weight_output], sizes, cost="flops")
    tree = contraction.reconstruct_first_tree([weights.tree], range(count, len(labels)))
    return contraction.search_path(labels, output, sizes, forced=tree)


def _route(factorization, domain, uniform, mixed):
    """`mixed(selection)` for a domain vector, else `uniform(domain)` (an int or a
    `Selection` of a 0-d tensor); a tensor domain is prepared by routing's `select`."""
    if isinstance(domain, int):
        return uniform(domain)
    selection = routing.select(domain, factorization.num_domains)
    if routing.is_uniform(selection.ids):
        return uniform(selection)
    return mixed(selection)


def matmul(plan, factorization, x, domain):
    """`x @ W_domain` for `x` `(batch, prod(in_dims))`.

    `domain`: a Python int, or the `keras_mdn.ops.routing.Selection` of a 0-d domain tensor or
    of a domain vector, as the layer's routing prepared it. Invalid traced ids give NaN
    outputs (for their examples).
    """
    net = factorization.network_
    x = contraction.reshape(x, (-1,) + tuple(net.sizes[lab] for lab in net.in_labels))

    def uniform(d):
        return contraction.contract(plan.uniform, factorization.sliced_operands(d) + [x])

    def mixed(selection):
        return contraction.contract(plan.mixed,
                                    factorization.example_operands(selection) + [x])

    if net.task_label is None:
        result = contraction.contract(plan.uniform, list(factorization.variables) + [x])
    else:
        result = _route(factorization, domain, uniform, mixed)
    return contraction.reshape(result, (-1, math.prod(factorization.out_dims)))


def per_example_matmul(plan, factorization, x, selection):
    """`x[b] @ W_domain[b]` for `x` `(B, positions, prod(in_dims))` and the `Selection` of a
    domain vector, by `plan.per_example`: each example's weight, then one batched matmul."""
    weights = contraction.contract(plan.per_example, factorization.example_operands(selection))
    weights = contraction.reshape(weights, (-1, math.prod(factorization.in_dims),
                                            math.prod(factorization.out_dims)))
    return contraction.matmul(x, ops.cast(weights, x.dtype))


def describe_dense(plan, factorization):
    """`{"uniform": "((core_0, x), core_1)", "uniform_flops": ..., "mixed": ...}`.

    In the mixed path the domain operand's name stands for its per-example gather;
    `per_example` is the path of each example's weight (inputs with positions)."""
    names = list(factorization.network_.names) + ["x"]
    summary = {}
    for key, path in plan._asdict().items():
        if path is not None:
            summary[key] = path.describe(names)
            summary[f"{key}_flops"] = path.flops
    return summary


# === Convolution ===


def plan_conv(factorization, batch_size, positions, mode="auto"):
    """The `ConvPlan` of a built factorisation; `positions`: output pixels (None: unknown)."""
    check_mode(mode, ("auto", "reconstruct"))
    net = factorization.network_
    if mode == "reconstruct" or positions is None:
        return ConvPlan(None, None)
    sizes = dict(net.sizes)
    sizes[contraction.BATCH] = max(int(batch_size), 1)
    sizes["P"] = int(positions)
    calls = sizes[contraction.BATCH] * sizes["P"]
    in_size = math.prod(factorization.in_dims)
    out_size = math.prod(factorization.out_dims)
    code_size = min(factorization.code_size(), factorization.num_domains)
    baselines = {
        "uniform": _conv_cost(calls, in_size, out_size),
        # The coded kernel: one conv to `filters * E` channels, then a per-example mix.
        "mixed": _conv_cost(calls, in_size, out_size * code_size)
        + contraction.OUTPUT_COST * calls * out_size * code_size,
    }
    plans = {}
    for key in ("uniform", "mixed"):
        if key == "mixed" and net.task_label is None:
            continue
        best = None
        for candidate in _kernel_subsets(net, mixed=key == "mixed"):
            found = _factored(factorization, candidate, sizes, calls, in_size, key == "mixed")
            if found is not None and (best is None or found.cost < best.cost):
                best = found
        if key == "mixed":
            for project in (False, True):
                candidate = _per_example(factorization, sizes, calls, in_size, out_size,
                                         project)
                if candidate is not None and (best is None or candidate.cost < best.cost):
                    best = candidate
        plans[key] = best if best is not None and best.cost < baselines[key] else None
    return ConvPlan(plans.get("uniform"), plans.get("mixed"))


def _per_example(factorization, sizes, calls, in_size, out_size, project=False):
    """The `PerExampleConv` of a mixed batch and its modelled cost (`project`: the form with
    the channel factors as 2-D GEMMs; None when the kind has no such factors)."""
    net = factorization.network_
    batch = sizes[contraction.BATCH]
    labels = factorization.example_labels()
    kernel_in, kernel_out = net.in_labels, net.out_labels
    operands = list(range(len(labels)))
    extra = 0.0
    pair = _channel_factors(net) if project else None
    if project and pair is None:
        return None
    if pair is not None:
        (first, first_bond), (last, last_bond) = pair
        operands = [i for i in operands if i not in (first, last)]
        kernel_in = net.in_labels[:-1] + (first_bond,)
        kernel_out = (last_bond,)
        channels_in, channels_out = sizes[net.in_labels[-1]], sizes[net.out_labels[-1]]
        in_size = in_size // channels_in * sizes[first_bond]
        out_size = sizes[last_bond]
        # The input projection (at the input's positions, ~ the output's at stride 1) and the
        # output factor, each one 2-D GEMM.
        extra = (_conv_cost(calls, channels_in, sizes[first_bond])
                 + _conv_cost(calls, out_size, channels_out))
    output = (contraction.BATCH,) + kernel_in + kernel_out
    kernel_path = contraction.search_path([labels[i] for i in operands], output, sizes)
    # Patches written once and read by the GEMM (a convolution packs its input the same way,
    # inside the kernel), the kernels read by the GEMM, then the convolution's own cost.
    cost = (kernel_path.cost + extra
            + (contraction.OUTPUT_COST + contraction.INPUT_COST) * calls * in_size
            + contraction.INPUT_COST * batch * in_size * out_size
            + _conv_cost(calls, in_size, out_size))
    return PerExampleConv(kernel_path, cost, None if pair is None else (pair[0][0], pair[1][0]))


def _channel_factors(net):
    """`((index, bond), (index, bond))` of the factors `(C_in, r_in)` and `(filters, r_out)`
    when each is the only operand on its mode (Tucker's), else None."""
    if len(net.out_labels) != 1:
        return None
    found = []
    for mode in (net.in_labels[-1], net.out_labels[0]):
        users = [i for i, labels in enumerate(net.labels) if mode in labels]
        if len(users) != 1 or len(net.labels[users[0]]) != 2 or net.labels[users[0]][0] != mode:
            return None
        found.append((users[0], net.labels[users[0]][1]))
    return tuple(found)


def _conv_cost(calls, in_size, width):
    return 2 * calls * in_size * width + contraction.OUTPUT_COST * calls * width


def _kernel_subsets(net, mixed):
    """Operand subsets that can form the conv kernel: every input-side operand, plus any of the
    others (the domain operand only when the batch has one domain), leaving at least one out."""
    in_set = set(net.in_labels)
    inner = tuple(i for i, labels in enumerate(net.labels) if in_set & set(labels))
    task = net.task_operand
    optional = [i for i in range(len(net.labels)) if i not in inner
                and not (mixed and i == task)]
    for count in range(len(optional) + 1):
        for extra in itertools.combinations(optional, count):
            subset = tuple(sorted(inner + extra))
            if len(subset) < len(net.labels):
                yield subset


def _factored(factorization, inner, sizes, calls, in_size, mixed):
    net = factorization.network_
    labels = factorization.example_labels() if mixed else factorization.sliced_labels()
    outer = tuple(i for i in range(len(labels)) if i not in inner)
    outer_labels = {lab for i in outer for lab in labels[i]} | set(net.out_labels)
    bonds = tuple(dict.fromkeys(lab for i in inner for lab in labels[i]
                                if lab in outer_labels and lab not in net.in_labels))
    if not bonds:
        return None
    width = math.prod(sizes[lab] for lab in bonds)
    kernel_path = contraction.search_path([labels[i] for i in inner], net.in_labels + bonds,
                                          net.sizes, cost="flops")
    z_labels = (contraction.BATCH, "P") + bonds
    output = (contraction.BATCH, "P") + net.out_labels
    post_labels = [labels[i] for i in outer] + [z_labels]
    post = contraction.search_path(post_labels, output, sizes)
    cost = _conv_cost(calls, in_size, width) + post.cost
    return FactoredConv(inner, outer, kernel_path, post, bonds, cost)


def conv(plan, factorization, inputs, domain, conv_fn, patches_fn=None, grouped_fn=None):
    """`conv_fn(inputs, kernel)` with domain `domain`'s weights, by `plan`.

    `patches_fn(inputs)`: `(patches, spatial)`, the convolution's input patches
    `(B, P, prod(in_dims))` (kernel positions, then input channels) and its static output
    spatial shape (needed by a `PerExampleConv` plan). `grouped_fn(inputs, kernels)`: the
    same per-example convolution as one grouped convolution, kernels `(B, prod(in_dims), out)`
    (used instead of the patches where `grouped_conv_wins`).
    """
    net = factorization.network_
    out_channels = math.prod(factorization.out_dims)

    def factored(step, operands):
        kernel = contraction.contract(step.kernel_path, [operands[i] for i in step.inner])
        width = math.prod(net.sizes[lab] for lab in step.bonds)
        z = conv_fn(inputs, contraction.reshape(kernel, factorization.in_dims + (width,)))
        shape = ops.shape(z)
        z = contraction.reshape(z, (-1, step.post.sizes["P"]) + tuple(net.sizes[lab]
                                                               for lab in step.bonds))
        result = contraction.contract(step.post, [operands[i] for i in step.outer] + [z])
        return contraction.reshape(result, tuple(shape[:-1]) + (out_channels,))

    def uniform(d):
        if plan.uniform is not None:
            return factored(plan.uniform, factorization.sliced_operands(d))
        return conv_fn(inputs, factorization.task_weight(d))

    def per_example(step, operands):
        x, kernel_operands, channels = inputs, operands, out_channels
        if step.project is not None:
            first, last = step.project
            projection = ops.cast(operands[first], inputs.dtype)  # (C_in, r_in)
            x = contraction.matmul(ops.reshape(inputs, (-1, inputs.shape[-1])), projection)
            x = ops.reshape(x, tuple(ops.shape(inputs)[:-1]) + (projection.shape[-1],))
            kernel_operands = [op for i, op in enumerate(operands) if i not in step.project]
            channels = operands[last].shape[-1]
        kernels = contraction.contract(step.kernel_path, kernel_operands)
        if grouped_fn is not None and grouped_conv_wins():
            in_size = math.prod(factorization.in_dims[:-1]) * x.shape[-1]
            kernels = contraction.reshape(kernels, (-1, in_size, channels))
            outputs = grouped_fn(x, ops.cast(kernels, x.dtype))
            spatial = outputs.shape[1:-1]
        else:
            patches, spatial = patches_fn(x)
            kernels = contraction.reshape(kernels, (-1, patches.shape[-1], channels))
            outputs = contraction.matmul(patches, ops.cast(kernels, patches.dtype))
        if step.project is not None:  # (B, P, r_out) by U_out (filters, r_out)
            outputs = contraction.matmul(ops.reshape(outputs, (-1, channels)),
                                         ops.cast(operands[last], outputs.dtype),
                                         transpose_right=True)
        return ops.reshape(outputs, (-1,) + tuple(spatial) + (out_channels,))

    def mixed(selection):
        if isinstance(plan.mixed, PerExampleConv):
            return per_example(plan.mixed, factorization.example_operands(selection))
        if plan.mixed is not None:
            return factored(plan.mixed, factorization.example_operands(selection))
        kernel, codes = factorization.coded_weight()
        code_size = codes.shape[-1]
        kernel = contraction.reshape(kernel, factorization.in_dims + (out_channels * code_size,))
        outputs = conv_fn(inputs, kernel)
        shape = ops.shape(outputs)
        mix = routing.take_domains(ops.cast(codes, outputs.dtype), selection)  # (B, E)
        mixed_outputs = contraction.matvec(ops.reshape(outputs, (shape[0], -1, code_size)), mix)
        return ops.reshape(mixed_outputs, tuple(shape[:-1]) + (out_channels,))

    if net.task_label is None:
        return uniform(0)
    return _route(factorization, domain, uniform, mixed)


def grouped_conv_wins():
    """Whether a mixed batch's per-example convolution runs as one grouped convolution.

    The batch folded into the channels (`B` groups, each example's kernel its group's) keeps
    a uniform batch's conv flops without writing the input's patches. In a TensorFlow graph
    (CPU) it was measured faster than patches and a batched matmul, conv LAF T10 (3x3,
    32 -> 32 channels, 16x16 px, batch 16) mixed / uniform forward 1.9 -> 1.35-1.43 and
    forward+backward 1.7-2.0 -> 1.26-1.43 (`results/factorized_speed_floors.md`). Under XLA
    (TF `jit_compile`, JAX) a grouped convolution's gradient runs 25-90x slower on a CPU:
    patches there. Whether a TF graph is compiled by XLA is read from TensorFlow's XLA context (a
    private TF function: if it is missing, the patches are used).
    """
    if K.backend() != "tensorflow":
        return False
    try:
        import tensorflow as tf
        from tensorflow.python.ops import control_flow_util

        return not control_flow_util.GraphOrParentsInXlaContext(tf.compat.v1.get_default_graph())
    except Exception:  # noqa: BLE001 - any failure of the private probe: the safe form
        return False


def describe_conv(plan, factorization):
    """`{"uniform": "factored" | "reconstruct", "mixed": ... | "per_example",
    "<key>_detail": text}`."""
    names = list(factorization.network_.names)
    summary = {}
    for key, step in plan._asdict().items():
        if isinstance(step, PerExampleConv):
            summary[key] = "per_example"
            kernel_names = [name for i, name in enumerate(names)
                            if step.project is None or i not in step.project]
            detail = (f"each example's kernel {step.kernel_path.describe(kernel_names)}, then "
                      "one GEMM per example with the input's patches")
            if step.project is not None:
                detail = (f"input channels projected by {names[step.project[0]]}, {detail}, "
                          f"then {names[step.project[1]]}")
            summary[f"{key}_detail"] = detail
            continue
        summary[key] = "reconstruct" if step is None else "factored"
        if step is not None:
            kernel = ", ".join(names[i] for i in step.inner)
            summary[f"{key}_detail"] = (f"conv with ({kernel}) to {' x '.join(step.bonds)} "
                                        f"channels, then {step.post.describe()}")
    return summary
