"""The base of every factorisation kind: its weights and their reconstruction.

A kind describes the stacked weight `(*in_dims, *out_dims, T)` (T domains, the paper's tasks)
as a small tensor network (its `network` method: operand names, shapes and labels); everything
else is generic and lives here: creating the factors on the owning layer with the
variance-preserving initialisation, reconstructing the full, per-domain or coded weight, and
the per-domain codes used for rho. How the factors meet an input at run time (the contraction
paths chosen at build time) is `keras_mdn.factorizations.planning`. A new kind is one new file
with `rank_limits`, `network` and `decompose`.
"""
import math

import keras
import numpy as np
from keras import ops

from keras_mdn.ops import contraction, routing

TASK = "t"
# Reconstructions above this many elements are not done at build time (variance rescaling).
_RESCALE_LIMIT = 1 << 24


class Network:
    """The static structure of a factorised weight.

    Attributes:
        names: weight name of each operand (stable keys in saved files).
        labels: tuple of labels per operand.
        sizes: dict label -> size.
        in_labels: labels whose row-major product is the flattened input dims.
        out_labels: labels whose row-major product is the flattened output dims.
        task_label: the task label, or None when no operand carries one (a single task).
    """

    def __init__(self, names, labels, sizes, in_labels, out_labels, task_label=TASK):
        self.names = list(names)
        self.labels = [tuple(lab) for lab in labels]
        self.sizes = dict(sizes)
        self.in_labels = tuple(in_labels)
        self.out_labels = tuple(out_labels)
        self.task_label = task_label if any(task_label in lab for lab in self.labels) else None

    def shape(self, index):
        return tuple(self.sizes[lab] for lab in self.labels[index])

    @property
    def task_operand(self):
        for index, labels in enumerate(self.labels):
            if self.task_label is not None and self.task_label in labels:
                return index
        return None

    @property
    def bond_labels(self):
        exposed = set(self.in_labels) | set(self.out_labels) | {self.task_label}
        return sorted({lab for labels in self.labels for lab in labels} - exposed)


class Factorization:
    """Base class of the factorisation kinds of a stacked weight `(*in_dims, *out_dims, T)`.

    Args:
        rank: an int (the same rank for every rank slot, capped at what each slot allows), a
            tuple with one rank per slot, or None when the ranks come from a decomposition with
            a threshold `eps`. Defaults to None.
    """

    name = None

    def __init__(self, rank=None):
        self.rank = _validate_rank(rank)
        self.network_ = None
        self.variables = []
        self._paths = {}  # reconstruction paths, found on first use

    # --- kind-specific ---

    def rank_limits(self, in_dims, out_dims, num_domains):
        """The largest meaningful rank of each rank slot (a tuple)."""
        raise NotImplementedError

    def network(self, in_dims, out_dims, num_domains, ranks):
        """The `Network` for resolved `ranks`."""
        raise NotImplementedError

    def decompose(self, stacked, in_dims, out_dims, num_domains, ranks, eps):
        """Decomposes a NumPy stacked weight; returns `(ranks, arrays in operand order)`."""
        raise NotImplementedError

    # --- configuration ---

    def get_config(self):
        rank = list(self.rank) if isinstance(self.rank, tuple) else self.rank
        return {"rank": rank}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def copy(self):
        return self.__class__.from_config(self.get_config())

    def __repr__(self):
        args = ", ".join(f"{key}={value!r}" for key, value in self.get_config().items())
        return f"{self.__class__.__name__}({args})"

    def resolve_ranks(self, in_dims, out_dims, num_domains, allow_none=False):
        """Per-slot ranks from `self.rank`, checked against `rank_limits`."""
        limits = tuple(self.rank_limits(in_dims, out_dims, num_domains))
        shape = tuple(in_dims) + tuple(out_dims) + (num_domains,)
        where = f"the {self.name} factorisation of a stacked weight of shape {shape}"
        if self.rank is None:
            if allow_none:
                return (None,) * len(limits)
            raise ValueError(
                f"`rank` is required for {where} (or initialise the layer with `from_layers` "
                f"and a threshold `eps`). Received: rank=None"
            )
        if isinstance(self.rank, int):
            if self.rank > max(limits):
                raise ValueError(
                    f"`rank` must be at most {max(limits)} for {where} (per-slot maxima "
                    f"{limits}). Received: rank={self.rank}"
                )
            return tuple(min(self.rank, limit) for limit in limits)
        if len(self.rank) != len(limits):
            raise ValueError(
                f"`rank` must be an int or a tuple of {len(limits)} ranks for {where}. "
                f"Received: rank={self.rank}"
            )
        for index, (value, limit) in enumerate(zip(self.rank, limits)):
            if value > limit:
                raise ValueError(
                    f"`rank[{index}]` must be at most {limit} for {where} (per-slot maxima "
                    f"{limits}). Received: rank={self.rank}"
                )
        return tuple(self.rank)

    # --- weights ---

    def build(self, layer, in_dims, out_dims, num_domains, variance, regularizer=None,
              constraint=None):
        """Creates the factors on `layer` so the reconstructed weight has variance `variance`.

        Each of the `n` factors is drawn with std `(variance / prod(bond sizes))^(1/(2n))`
        (MISSION §3: the TT, Tucker and LAF formulas are this one rule), then all factors are
        rescaled by one common factor so the reconstruction's second moment is exactly
        `variance` (skipped for weights above 16 M elements).
        """
        self.in_dims, self.out_dims = tuple(in_dims), tuple(out_dims)
        self.num_domains = int(num_domains)
        ranks = self.resolve_ranks(in_dims, out_dims, num_domains)
        self.rank = ranks
        net = self.network(in_dims, out_dims, num_domains, ranks)
        self.network_ = net
        bonds = math.prod(net.sizes[lab] for lab in net.bond_labels)
        count = len(net.labels)
        std = (variance / bonds) ** (1.0 / (2 * count))
        self.variables = [
            layer.add_weight(
                name=name,
                shape=net.shape(index),
                initializer=keras.initializers.RandomNormal(stddev=std),
                regularizer=regularizer,
                constraint=constraint,
                trainable=True,
            )
            for index, name in enumerate(net.names)
        ]
        full_size = math.prod(self.in_dims) * math.prod(self.out_dims) * self.num_domains
        if full_size <= _RESCALE_LIMIT:
            self._rescale(variance)

    def _rescale(self, variance):
        """Scales the factors so every task's weight has second moment `variance` exactly.

        A product of few random factors has a spread-out norm (a TT task slice of rank 4 is a
        chi-square with 4 degrees of freedom), so some tasks would start 10x smaller than
        others. The task operand enters each task's weight linearly: scaling its slice `t`
        fixes task `t` alone, leaving the task codes' directions (and rho) unchanged.
        """
        try:
            stacked = ops.convert_to_numpy(self.stacked())
        except Exception:  # built while tracing: values unknown, keep the formula's std
            return
        moments = np.mean(np.square(stacked.reshape(-1, self.num_domains)), axis=0)
        if np.any(moments <= 0):
            return
        scales = np.sqrt(variance / moments)
        net = self.network_
        index = net.task_operand
        if index is None:
            for variable in self.variables:
                variable.assign(variable * float(scales[0]) ** (1.0 / len(self.variables)))
            return
        variable = self.variables[index]
        shape = [1] * len(variable.shape)
        shape[net.labels[index].index(net.task_label)] = self.num_domains
        variable.assign(variable * ops.cast(np.reshape(scales, shape), variable.dtype))

    def set_arrays(self, arrays):
        """Assigns NumPy factor values (operand order), e.g. from `decompose`."""
        for variable, array in zip(self.variables, arrays):
            variable.assign(np.asarray(array, dtype=variable.dtype).reshape(variable.shape))

    # --- reconstruction ---

    def stacked(self):
        """The full stacked weight, shape `(*in_dims, *out_dims, num_domains)`."""
        net = self.network_
        output = net.in_labels + net.out_labels + ((net.task_label,) if net.task_label else ())
        path = self._path("stacked", lambda: contraction.search_path(net.labels, output,
                                                                     net.sizes, cost="flops"))
        full = contraction.contract(path, self.variables)
        return ops.reshape(full, self.in_dims + self.out_dims + (self.num_domains,))

    def task_weight(self, task):
        """Task `task`'s weight (int or 0-d tensor), shape `(*in_dims, *out_dims)`."""
        net = self.network_
        operands, labels = self.sliced_operands(task), self.sliced_labels()
        output = net.in_labels + net.out_labels
        path = self._path("task", lambda: contraction.search_path(labels, output, net.sizes,
                                                                  cost="flops"))
        return ops.reshape(contraction.contract(path, operands), self.in_dims + self.out_dims)

    def coded_weight(self):
        """`(kernel, codes)` with `W[..., t] = kernel @ codes[t]`, the code size `E` minimal.

        Used for mixed-task convolutions: one convolution with `E * out` channels, then a
        per-example mix. `E` is the task operand's other labels (LAF: K, Tucker: r_T, TT:
        the last rank) when smaller than `T`; otherwise the stacked weight with one-hot codes.
        """
        net = self.network_
        index = net.task_operand
        flat_in, flat_out = math.prod(self.in_dims), math.prod(self.out_dims)
        if index is not None:
            task_labels = net.labels[index]
            rest_labels = [lab for i, labels in enumerate(net.labels) if i != index
                           for lab in labels]
            code_labels = tuple(lab for lab in task_labels if lab != net.task_label
                                and lab in rest_labels)
            code_size = math.prod(net.sizes[lab] for lab in code_labels)
            if code_size < self.num_domains:
                others = [i for i in range(len(net.labels)) if i != index]
                output = net.in_labels + net.out_labels + code_labels
                path = self._path("coded", lambda: contraction.search_path(
                    [net.labels[i] for i in others], output, net.sizes, cost="flops"))
                kernel = contraction.contract(path, [self.variables[i] for i in others])
                kernel = ops.reshape(kernel, (flat_in, flat_out, code_size))
                codes = self._task_codes(index, code_labels)
                return kernel, codes
        kernel = ops.reshape(self.stacked(), (flat_in, flat_out, self.num_domains))
        return kernel, ops.eye(self.num_domains, dtype=kernel.dtype)

    def task_factors(self):
        """The per-task codes `(T, E)` whose pairwise cosines define the sharing strength."""
        net = self.network_
        index = net.task_operand
        if index is None:
            return ops.ones((1, 1))
        labels = net.labels[index]
        code_labels = tuple(lab for lab in labels if lab != net.task_label)
        return self._task_codes(index, code_labels)

    def _task_codes(self, index, code_labels):
        net = self.network_
        labels = net.labels[index]
        tensor = contraction._transpose_to(self.variables[index], labels,
                                           (net.task_label,) + tuple(
                                               lab for lab in labels if lab != net.task_label))
        return ops.reshape(tensor, (self.num_domains, -1))

    def sliced_operands(self, domain):
        """The factors with the domain operand sliced at `domain`.

        `domain`: a Python int, or a `keras_mdn.ops.routing.Selection` of a 0-d domain tensor.
        A tensor domain selects by `where` and a sum over the domain axis, not by a one-hot
        product: the gradient stays dense (fast under XLA with momentum optimizers) and the
        other domains' slices get exact zeros, never `0 * NaN` from a NaN example. An invalid
        traced id slices NaN, so the whole batch's outputs are NaN (routing's rule).
        """
        net = self.network_
        index = net.task_operand
        operands = list(self.variables)
        if index is None:
            return operands
        axis = net.labels[index].index(net.task_label)
        if isinstance(domain, int):
            operands[index] = ops.take(operands[index], domain, axis=axis)
            return operands
        selection = routing.select(domain, self.num_domains)
        operand = ops.convert_to_tensor(operands[index])
        shape = [1] * len(operand.shape)
        shape[axis] = self.num_domains
        positions = np.broadcast_to(np.arange(self.num_domains, dtype="int32").reshape(shape),
                                    operand.shape)
        # Same-shape operands and scalars only: a broadcasting `where` is slow in a TF graph.
        # `segments` is -1 for an invalid id: no slice selected, no gradient to any domain.
        mask = ops.equal(positions, selection.segments)
        sliced = ops.sum(ops.where(mask, operand, ops.zeros_like(operand)), axis=axis)
        nan = ops.where(selection.valid, ops.cast(0.0, sliced.dtype),
                        ops.cast(float("nan"), sliced.dtype))
        operands[index] = sliced + nan
        return operands

    def example_operands(self, selection):
        """The factors with the domain operand gathered per example (`example_labels`).

        `selection` is a `keras_mdn.ops.routing.Selection` of a domain vector. A gather, whose
        gradient adds each example into its own domain's slice only: a NaN example changes no
        other domain's weights or gradients (a one-hot product would spread `0 * NaN`). An
        invalid traced id gathers NaN, so that example's outputs are NaN, and its gradient
        reaches no domain's slice.
        """
        net = self.network_
        index = net.task_operand
        operands = list(self.variables)
        if index is not None:
            labels = net.labels[index]
            rest = tuple(lab for lab in labels if lab != net.task_label)
            table = contraction._transpose_to(operands[index], labels, (net.task_label,) + rest)
            operands[index] = routing.take_domains(table, selection)
        return operands

    def example_labels(self):
        """The operands' labels with the domain label of the domain operand replaced by the
        batch label, moved first (as `example_operands`)."""
        net = self.network_
        return [
            (contraction.BATCH,) + tuple(lab for lab in labels if lab != net.task_label)
            if net.task_label in labels else labels
            for labels in net.labels
        ]

    def sliced_labels(self):
        """The operands' labels with the domain label removed (as `sliced_operands`)."""
        net = self.network_
        return [tuple(lab for lab in labels if lab != net.task_label) for labels in net.labels]

    def code_size(self):
        """Size `E` of a domain's code: the domain operand's labels shared with the rest."""
        net = self.network_
        index = net.task_operand
        if index is None:
            return 1
        rest = {lab for i, labels in enumerate(net.labels) if i != index for lab in labels}
        return math.prod(net.sizes[lab] for lab in net.labels[index]
                         if lab != net.task_label and lab in rest)

    def _path(self, key, make):
        if key not in self._paths:
            self._paths[key] = make()
        return self._paths[key]


def _validate_rank(rank):
    if rank is None:
        return None
    if isinstance(rank, (list, tuple)):
        values = tuple(rank)
        if not values or not all(_is_int(value) and value > 0 for value in values):
            raise ValueError(
                f"`rank` must be a positive int or a non-empty tuple of positive ints. "
                f"Received: rank={rank!r}"
            )
        return tuple(int(value) for value in values)
    if not _is_int(rank) or rank <= 0:
        raise ValueError(
            f"`rank` must be a positive int or a tuple of positive ints. Received: rank={rank!r}"
        )
    return int(rank)


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
