"""Tensor-Train factorisation of the stacked weight over its modes, the task mode last."""

import math

from keras_mdn.api import register
from keras_mdn.factorizations.base import Factorization, Network
from keras_mdn.factorizations.tucker import _mode_labels
from keras_mdn.ops import decomposition


@register
class TensorTrain(Factorization):
    """Tensor Train over the modes `(*in, *out, T)` of the stacked weight.

    `W[d_1, ..., d_N] = U_1[d_1] U_2[:, d_2, :] ... U_N[:, d_N]`; weights `"core_0"`, ...,
    `"core_{N-1}"` of shape `(r_{k-1}, n_k, r_k)` with `r_0 = r_N = 1`. The last core is indexed
    by the task: its slices are the task codes.

    Args:
        rank: an int (every bond, capped at the bond's maximum) or the `N - 1` inner ranks.
            Defaults to None (from a decomposition).

    Reference:
        Oseledets, "Tensor-Train Decomposition", SIAM J. Sci. Comput. 2011; Yang & Hospedales,
        ICLR 2017.
    """

    name = "tt"

    def rank_limits(self, in_dims, out_dims, num_domains):
        return _tt_limits(tuple(in_dims) + tuple(out_dims) + (num_domains,))

    def network(self, in_dims, out_dims, num_domains, ranks):
        mode_labels = _mode_labels(in_dims, out_dims)
        dims = tuple(in_dims) + tuple(out_dims) + (num_domains,)
        count = len(dims)
        bond_labels = [f"r{k}" for k in range(count + 1)]
        sizes = dict(zip(mode_labels, dims))
        sizes.update(zip(bond_labels, (1,) + tuple(ranks) + (1,)))
        labels = [(bond_labels[k], mode_labels[k], bond_labels[k + 1]) for k in range(count)]
        names = [f"core_{k}" for k in range(count)]
        return Network(names, labels, sizes, mode_labels[: len(in_dims)],
                       mode_labels[len(in_dims) : -1])

    def decompose(self, stacked, in_dims, out_dims, num_domains, ranks, eps):
        cores = decomposition.tt_svd(stacked, ranks, eps)
        return tuple(core.shape[-1] for core in cores[:-1]), cores


def _tt_limits(dims):
    return tuple(
        min(math.prod(dims[: k + 1]), math.prod(dims[k + 1 :])) for k in range(len(dims) - 1)
    )
