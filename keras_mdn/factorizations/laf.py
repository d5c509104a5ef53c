"""LAF, last-axis factorisation (low rank over the task axis): `W = L S`."""

import math

from keras_mdn.api import register
from keras_mdn.factorizations.base import TASK, Factorization, Network
from keras_mdn.ops import decomposition


@register
class LAF(Factorization):
    """Last-axis factorisation of a stacked weight (Yang & Hospedales, 2017).

    The stacked weight is reshaped to `(prod(other dims), T)` and factorised as `W = L S`: `L`
    (`"factor_shared"`, shape `(fan_in, fan_out, K)`) is shared, `S` (`"factor_task"`,
    `(K, T)`) holds one code per task. Task i's weight is `sum_k L[..., k] S[k, i]`.

    Args:
        rank: `K`, at most `min(prod(other dims), T)`. Defaults to None (from a decomposition).

    Reference:
        Yang & Hospedales, "Deep Multi-task Representation Learning: A Tensor Factorisation
        Approach", ICLR 2017.
    """

    name = "laf"

    def rank_limits(self, in_dims, out_dims, num_domains):
        return (min(math.prod(in_dims) * math.prod(out_dims), num_domains),)

    def network(self, in_dims, out_dims, num_domains, ranks):
        sizes = {"i": math.prod(in_dims), "o": math.prod(out_dims), "k": ranks[0],
                 TASK: num_domains}
        return Network(["factor_shared", "factor_task"], [("i", "o", "k"), ("k", TASK)], sizes,
                       ("i",), ("o",))

    def decompose(self, stacked, in_dims, out_dims, num_domains, ranks, eps):
        matrix = stacked.reshape(-1, num_domains)
        # Singular values go to S, so the cosines of S's columns are those of the task weights.
        left, right, _ = decomposition.truncated_svd(matrix, ranks[0], eps)
        return (left.shape[1],), [left, right]
