"""Cross-domain SVD compression of residual adapters (an offline transform, in NumPy).

The adapters of one layer over the T domains, `A_t` `(C_in, C_out)`, are stacked side by side
into `M = [A_1 ... A_T]` `(C_in, T * C_out)`. Its truncated SVD `M ~= U_r S_r V_r^T` gives
`A_t ~= beta gamma_t` with `beta = U_r` `(C_in, r)` shared by the domains and
`gamma_t = S_r V_r^T[:, t C_out:(t + 1) C_out]` `(r, C_out)` per domain: the per-domain cost
drops from `C_in C_out` to `r C_out` (Rebuffi et al. 2018, MISSION §1). By Eckart-Young the
relative Frobenius error of the whole stack is `sqrt(sum_{i > r} s_i^2 / sum_i s_i^2)`.
"""

import numpy as np


def stack_adapters(adapters):
    """`(T, C_in, C_out)` adapters -> `M = [A_1 ... A_T]` of shape `(C_in, T * C_out)`."""
    adapters = np.asarray(adapters, dtype=np.float64)
    if adapters.ndim != 3:
        raise ValueError(
            "`adapters` must have shape (num_domains, in_channels, out_channels). "
            f"Received: adapters with shape={adapters.shape}"
        )
    return np.concatenate(list(adapters), axis=1)


def choose_rank(singular_values, rank=None, energy=None, max_rank=None):
    """The rank kept: `rank` capped at `max_rank`, or the smallest reaching `energy`.

    Args:
        singular_values: the SVD's singular values, in decreasing order.
        rank: positive int, or None.
        energy: float in (0, 1]: keep the fewest singular values whose squares sum to at
            least this share of the total, or None. Exactly one of `rank`, `energy`.
        max_rank: optional cap (what the compressed layer can hold). Defaults to the number
            of singular values.

    Returns:
        An int in `[1, max_rank]`.
    """
    check_rank_or_energy(rank, energy)
    s = np.asarray(singular_values, dtype=np.float64)
    cap = len(s) if max_rank is None else min(int(max_rank), len(s))
    if rank is not None:
        return max(1, min(int(rank), cap))
    squares = np.square(s)
    total = squares.sum()
    if total == 0.0:
        return 1
    kept = np.cumsum(squares) / total
    # A small tolerance so that energy=1.0 is reached despite rounding of the cumulative sum.
    needed = int(np.searchsorted(kept, energy - 1e-12) + 1)
    return max(1, min(needed, cap))


def check_rank_or_energy(rank, energy):
    """Validates that exactly one of `rank` (positive int) and `energy` (in (0, 1]) is set."""
    if (rank is None) == (energy is None):
        raise ValueError(
            f"Pass exactly one of `rank` and `energy`. Received: rank={rank!r}, energy={energy!r}"
        )
    if rank is not None and (
        isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or rank < 1
    ):
        raise ValueError(f"`rank` must be a positive int. Received: rank={rank!r}")
    if energy is not None and (
        isinstance(energy, bool)
        or not isinstance(energy, (int, float, np.floating))
        or not 0.0 < energy <= 1.0
    ):
        raise ValueError(f"`energy` must be in (0, 1]. Received: energy={energy!r}")


def compress_stacked(adapters, rank=None, energy=None, max_rank=None):
    """Low-rank cross-domain form of `adapters` `(T, C_in, C_out)`.

    Returns:
        dict with `projection` `(C_in, r)` (orthonormal columns, shared), `kernels`
        `(T, r, C_out)` (per domain), `rank` r, `singular_values`, `relative_error`
        `||M - beta [gamma_1 ... gamma_T]||_F / ||M||_F` (0 for all-zero adapters) and
        `energy` (share of the squared singular values kept).
    """
    stacked = stack_adapters(adapters)
    num_domains, _, out_channels = np.shape(adapters)
    u, s, vt = np.linalg.svd(stacked, full_matrices=False)
    r = choose_rank(s, rank, energy, max_rank)
    projection = u[:, :r]
    gammas = s[:r, None] * vt[:r]
    kernels = np.stack(
        [gammas[:, t * out_channels : (t + 1) * out_channels] for t in range(num_domains)]
    )
    squares = np.square(s)
    total = squares.sum()
    tail = squares[r:].sum()
    return {
        "projection": projection,
        "kernels": kernels,
        "rank": r,
        "singular_values": s,
        "relative_error": float(np.sqrt(tail / total)) if total > 0 else 0.0,
        "energy": float(1.0 - tail / total) if total > 0 else 1.0,
    }
