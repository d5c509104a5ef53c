"""Decompositions of stacked weights in NumPy: truncated SVD, HOSVD, TT-SVD, TT-matrix SVD.

Ranks are given (an int per slot) or chosen from a relative Frobenius error threshold `eps` in
(0, 1), the convention of the DMTRL authors' code (values below 1 are a relative error,
integers are ranks). The error budget is split over the truncations so that the whole
decomposition stays within `eps`: HOSVD and TT-SVD truncate each of their `k` steps to
`eps / sqrt(k)` (the standard bounds of De Lathauwer et al. 2000 and Oseledets 2011).
These run once, when a layer is initialised from trained layers, so NumPy on every backend.
"""

import math

import numpy as np


def validate_eps(eps, name="eps"):
    """Returns `eps` as a float, or raises if it is not in the open interval (0, 1)."""
    if eps is None:
        return None
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
        raise TypeError(f"`{name}` must be a float in (0, 1). Received: {name}={eps!r}")
    if not 0.0 < float(eps) < 1.0:
        raise ValueError(
            f"`{name}` is a relative Frobenius error and must be in (0, 1). "
            f"Received: {name}={eps!r}"
        )
    return float(eps)


def rank_from_eps(singular_values, eps):
    """Smallest rank whose discarded singular values have relative energy <= `eps`.

    `eps` bounds `||A - A_r||_F / ||A||_F` for the truncated SVD `A_r`.
    """
    s = np.asarray(singular_values, dtype=np.float64)
    total = float(np.sum(s**2))
    if total == 0.0:
        return 1
    # tail[r] = energy discarded when keeping r values.
    tail = np.concatenate([np.cumsum((s**2)[::-1])[::-1], [0.0]])
    ok = np.nonzero(tail <= (eps**2) * total * (1 + 1e-12))[0]
    return max(1, int(ok[0]))


def truncated_svd(matrix, rank=None, eps=None):
    """`matrix ~= left @ right` with `left` `(m, r)` orthonormal and `right` `(r, n)`.

    Args:
        matrix: 2-D array.
        rank: kept rank; None keeps what `eps` allows (or everything).
        eps: relative Frobenius error threshold in (0, 1), used when `rank` is None.

    Returns:
        `(left, right, singular_values)`, with the singular values folded into `right`.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    if rank is None:
        rank = rank_from_eps(s, eps) if eps is not None else len(s)
    rank = min(int(rank), len(s))
    return u[:, :rank], s[:rank, None] * vt[:rank], s


def hosvd(tensor, ranks=None, eps=None):
    """Truncated higher-order SVD: `tensor ~= core x_1 U_1 ... x_N U_N`.

    Args:
        tensor: N-d array.
        ranks: one rank per mode (None entries: chosen by `eps` or kept full).
        eps: relative Frobenius error threshold in (0, 1); each mode gets `eps / sqrt(N)`.

    Returns:
        `(core, factors)`, with `factors[k]` of shape `(tensor.shape[k], ranks[k])`.
    """
    tensor = np.asarray(tensor, dtype=np.float64)
    ndim = tensor.ndim
    ranks = list(ranks) if ranks is not None else [None] * ndim
    mode_eps = eps / math.sqrt(ndim) if eps is not None else None
    factors = []
    for mode in range(ndim):
        unfolded = np.moveaxis(tensor, mode, 0).reshape(tensor.shape[mode], -1)
        left, _, _ = truncated_svd(unfolded, ranks[mode], mode_eps)
        factors.append(left)
    core = tensor
    for mode, factor in enumerate(factors):
        core = np.moveaxis(np.tensordot(factor.T, np.moveaxis(core, mode, 0), axes=1), 0, mode)
    return core, factors


def tt_svd(tensor, ranks=None, eps=None):
    """TT-SVD (Oseledets 2011): cores `(r_{k-1}, n_k, r_k)` with `r_0 = r_d = 1`.

    Args:
        tensor: N-d array.
        ranks: the `N - 1` inner ranks (None entries: chosen by `eps` or kept full).
        eps: relative Frobenius error threshold in (0, 1); each step gets `eps / sqrt(N - 1)`.

    Returns:
        A list of N cores.
    """
    tensor = np.asarray(tensor, dtype=np.float64)
    shape = tensor.shape
    ndim = len(shape)
    ranks = list(ranks) if ranks is not None else [None] * (ndim - 1)
    step_eps = eps / math.sqrt(max(ndim - 1, 1)) if eps is not None else None
    cores = []
    rest = tensor
    left_rank = 1
    for k in range(ndim - 1):
        rest = rest.reshape(left_rank * shape[k], -1)
        left, right, _ = truncated_svd(rest, ranks[k], step_eps)
        cores.append(left.reshape(left_rank, shape[k], left.shape[1]))
        left_rank = left.shape[1]
        rest = right
    cores.append(rest.reshape(left_rank, shape[-1], 1))
    return cores


def tt_matrix_svd(matrix, input_modes, output_modes, ranks=None, eps=None):
    """TT-matrix decomposition of `matrix` `(prod n_k, prod m_k)`: cores `(r, n_k, m_k, r')`."""
    matrix = np.asarray(matrix, dtype=np.float64)
    d = len(input_modes)
    tensor = matrix.reshape(tuple(input_modes) + tuple(output_modes))
    order = [axis for k in range(d) for axis in (k, d + k)]
    tensor = tensor.transpose(order).reshape([n * m for n, m in zip(input_modes, output_modes)])
    cores = tt_svd(tensor, ranks, eps)
    return [
        core.reshape(core.shape[0], n, m, core.shape[-1])
        for core, n, m in zip(cores, input_modes, output_modes)
    ]


def tt_full(cores):
    """The full tensor of TT cores `(r, n_k, r')` (NumPy reference)."""
    result = cores[0]
    for core in cores[1:]:
        result = np.tensordot(result, core, axes=1)
    return result[0, ..., 0]


def tucker_full(core, factors):
    """The full tensor `core x_1 U_1 ... x_N U_N` (NumPy reference)."""
    result = core
    for mode, factor in enumerate(factors):
        result = np.moveaxis(np.tensordot(factor, np.moveaxis(result, mode, 0), axes=1), 0, mode)
    return result


def split_modes(dim, num_modes):
    """Splits `dim` into `num_modes` integer factors, as balanced as possible (largest first).

    Prime factors are dealt to the currently smallest mode, so 1024 -> (16, 8, 8) for 3 modes.
    Missing factors are 1 (a prime `dim` gives `(dim, 1, ...)`).
    """
    primes = []
    rest = dim
    factor = 2
    while factor * factor <= rest:
        while rest % factor == 0:
            primes.append(factor)
            rest //= factor
        factor += 1
    if rest > 1:
        primes.append(rest)
    modes = [1] * num_modes
    for prime in sorted(primes, reverse=True):
        modes[int(np.argmin(modes))] *= prime
    return tuple(sorted(modes, reverse=True))
