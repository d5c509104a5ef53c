"""TT-matrix: input and output dimensions split into modes, one 4-D core per mode pair."""

import math

import numpy as np

from keras_mdn.api import register
from keras_mdn.factorizations.base import TASK, Factorization, Network, _is_int
from keras_mdn.factorizations.tensor_train import _tt_limits
from keras_mdn.ops import decomposition


@register
class TTMatrix(Factorization):
    """TT-matrix (tensorised dense) factorisation, for compressing one big layer.

    The `N x M` weight with `N = prod n_k`, `M = prod m_k` is stored as cores `"core_k"` of
    shape `(r_{k-1}, n_k, m_k, r_k)`. With `num_domains > 1` a task core `"core_task"`
    `(r_d, T)` closes the train, so tasks share all matrix cores.

    Args:
        rank: an int (every bond, capped at its maximum) or one rank per bond. Defaults to None
            (from a decomposition).
        input_modes: the `n_k`, product the flattened input dimension. Defaults to None (split
            automatically into `num_modes` balanced factors).
        output_modes: the `m_k`, product the flattened output dimension. Defaults to None.
        num_modes: number of modes when splitting automatically. Defaults to 3.

    Reference:
        Novikov et al., "Tensorizing Neural Networks", NeurIPS 2015.
    """

    name = "tt_matrix"

    def __init__(self, rank=None, input_modes=None, output_modes=None, num_modes=3):
        super().__init__(rank)
        if not _is_int(num_modes) or num_modes < 1:
            raise ValueError(
                f"`num_modes` must be a positive int. Received: num_modes={num_modes!r}"
            )
        self.num_modes = int(num_modes)
        self.input_modes = _validate_modes(input_modes, "input_modes")
        self.output_modes = _validate_modes(output_modes, "output_modes")
        if self.input_modes and self.output_modes and len(self.input_modes) != len(
            self.output_modes
        ):
            raise ValueError(
                "`input_modes` and `output_modes` must have the same length. Received: "
                f"input_modes={self.input_modes}, output_modes={self.output_modes}"
            )

    def get_config(self):
        config = super().get_config()
        config.update(
            input_modes=list(self.input_modes) if self.input_modes else None,
            output_modes=list(self.output_modes) if self.output_modes else None,
            num_modes=self.num_modes,
        )
        return config

    def modes(self, in_dims, out_dims):
        """The resolved `(input_modes, output_modes)` for these dims (checked)."""
        n, m = math.prod(in_dims), math.prod(out_dims)
        count = len(self.input_modes or self.output_modes or ()) or self.num_modes
        input_modes = self.input_modes or decomposition.split_modes(n, count)
        output_modes = self.output_modes or decomposition.split_modes(m, count)
        checks = ((input_modes, n, "input_modes"), (output_modes, m, "output_modes"))
        for modes, dim, name in checks:
            if math.prod(modes) != dim:
                side = "input" if name == "input_modes" else "output"
                raise ValueError(
                    f"The product of `{name}` must equal the layer's {side} dimension {dim}; "
                    f"it is {math.prod(modes)}. Received: {name}={tuple(modes)}"
                )
        return tuple(input_modes), tuple(output_modes)

    def _dims(self, in_dims, out_dims, num_domains):
        input_modes, output_modes = self.modes(in_dims, out_dims)
        pairs = tuple(n * m for n, m in zip(input_modes, output_modes))
        return input_modes, output_modes, pairs + ((num_domains,) if num_domains > 1 else ())

    def rank_limits(self, in_dims, out_dims, num_domains):
        return _tt_limits(self._dims(in_dims, out_dims, num_domains)[2])

    def network(self, in_dims, out_dims, num_domains, ranks):
        input_modes, output_modes, dims = self._dims(in_dims, out_dims, num_domains)
        self.input_modes, self.output_modes = input_modes, output_modes
        d = len(input_modes)
        bonds = (1,) + tuple(ranks) + ((1,) if num_domains == 1 else ())
        sizes = {f"r{k}": size for k, size in enumerate(bonds)}
        sizes.update({f"i{k}": n for k, n in enumerate(input_modes)})
        sizes.update({f"o{k}": m for k, m in enumerate(output_modes)})
        labels = [(f"r{k}", f"i{k}", f"o{k}", f"r{k + 1}") for k in range(d)]
        names = [f"core_{k}" for k in range(d)]
        if num_domains > 1:
            sizes[TASK] = num_domains
            labels.append((f"r{d}", TASK))
            names.append("core_task")
        return Network(names, labels, sizes, [f"i{k}" for k in range(d)],
                       [f"o{k}" for k in range(d)])

    def decompose(self, stacked, in_dims, out_dims, num_domains, ranks, eps):
        input_modes, output_modes, dims = self._dims(in_dims, out_dims, num_domains)
        d = len(input_modes)
        tensor = stacked.reshape(input_modes + output_modes + (num_domains,))
        order = [axis for k in range(d) for axis in (k, d + k)] + [2 * d]
        tensor = tensor.transpose(order).reshape(dims)
        cores = decomposition.tt_svd(tensor, ranks, eps)
        arrays = [
            core.reshape(core.shape[0], n, m, core.shape[-1])
            for core, n, m in zip(cores[:d], input_modes, output_modes)
        ]
        if num_domains > 1:
            arrays.append(cores[-1][..., 0])
        ranks = tuple(core.shape[-1] for core in cores[:-1])
        return ranks, arrays


def _validate_modes(modes, name):
    if modes is None:
        return None
    values = tuple(np.atleast_1d(modes).tolist()) if not isinstance(modes, (list, tuple)) else (
        tuple(modes))
    if not values or not all(_is_int(v) and v > 0 for v in values):
        raise ValueError(f"`{name}` must be a tuple of positive ints. Received: {name}={modes!r}")
    return tuple(int(v) for v in values)
