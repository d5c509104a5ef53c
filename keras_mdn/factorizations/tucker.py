"""Tucker factorisation of the stacked weight: `W = S x_1 U_1 ... x_N U_N`."""

import math

from keras_mdn.api import register
from keras_mdn.factorizations.base import TASK, Factorization, Network
from keras_mdn.ops import decomposition


@register
class Tucker(Factorization):
    """Tucker factorisation over every mode of the stacked weight `(*in, *out, T)`.

    Weights: `"core"` (one rank per mode), `"factor_0"`, ... (one `(n_k, r_k)` matrix per
    input/output mode) and `"factor_task"` `(T, r_T)`, whose rows are the task codes.

    Args:
        rank: an int (every mode, capped at the mode's maximum) or one rank per mode.
            Defaults to None (from a decomposition).

    Reference:
        Yang & Hospedales, "Deep Multi-task Representation Learning: A Tensor Factorisation
        Approach", ICLR 2017.
    """

    name = "tucker"

    def rank_limits(self, in_dims, out_dims, num_domains):
        dims = tuple(in_dims) + tuple(out_dims) + (num_domains,)
        total = math.prod(dims)
        return tuple(min(dim, total // dim) for dim in dims)

    def network(self, in_dims, out_dims, num_domains, ranks):
        mode_labels = _mode_labels(in_dims, out_dims)
        dims = tuple(in_dims) + tuple(out_dims) + (num_domains,)
        sizes = dict(zip(mode_labels, dims))
        rank_labels = [f"r{k}" for k in range(len(dims))]
        sizes.update(zip(rank_labels, ranks))
        names = ["core"] + [f"factor_{k}" for k in range(len(dims) - 1)] + ["factor_task"]
        labels = [tuple(rank_labels)] + [
            (mode, rank) for mode, rank in zip(mode_labels, rank_labels)
        ]
        count = len(in_dims)
        return Network(names, labels, sizes, mode_labels[:count],
                       mode_labels[count:-1])

    def decompose(self, stacked, in_dims, out_dims, num_domains, ranks, eps):
        core, factors = decomposition.hosvd(stacked, ranks, eps)
        return tuple(core.shape), [core] + factors


def _mode_labels(in_dims, out_dims):
    return ([f"i{k}" for k in range(len(in_dims))] + [f"o{k}" for k in range(len(out_dims))]
            + [TASK])
