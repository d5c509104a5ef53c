"""Decompositions of stacked weights in NumPy: truncated SVD, HOSVD, TT-SVD, TT-matrix SVD.

Ranks are given (an int per slot) or chosen from a threshold `eps` in (0, 1) (the DMTRL
authors' convention: values below 1 are a precision, integers are ranks). What `eps` means is
named by `eps_mode`:

- `"frobenius"` (the default): `eps` bounds the relative Frobenius error of the whole
  decomposition. The budget is split over the truncations: HOSVD and TT-SVD truncate each of
  their `k` steps to `eps / sqrt(k)` (the bounds of De Lathauwer et al. 2000 and Oseledets
  2011), each step keeping the smallest SVD rank within its share.
- `"authors"`: the rule of the DMTRL authors' code (wOOL/DMTRL `tensor_toolbox_yyang.py`,
  which calls `scipy.linalg.interpolative.svd(A, eps, rand=False)` at every step). Every step
  (every Tucker mode, every TT step, the one LAF matrix) gets the full `eps`, unsplit; its rank
  is the number of column-pivoted QR steps after which the largest remaining column norm is at
  most `eps` times the largest column norm of the step's matrix (a per-column, close to
  spectral, test; no bound on the total error), and its factors are the SVD of that pivoted-QR
  approximation, as the interpolative SVD returns them. At eps 0.2-0.5 this keeps more rank
  than `"frobenius"` on matrices whose energy is spread over many columns.

Pass the mode as `eps_mode`, or as a `Tolerance(eps, mode)` wherever a bare `eps` goes (e.g.
`FactorizedDense.from_layers(..., eps=Tolerance(0.3, "authors"))`).
These run once, when a layer is initialised from trained layers, so NumPy on every backend.
"""

import math

import numpy as np

EPS_MODES = ("frobenius", "authors")


class Tolerance:
    """A rank-selection threshold with its semantics named: `eps` in (0, 1) and `mode`.

    Args:
        eps: float in (0, 1).
        mode: one of `"frobenius"` (relative Frobenius error of the whole decomposition) or
            `"authors"` (the DMTRL authors' per-step pivoted-QR precision). Defaults to
            `"frobenius"`.

    Example:

    >>> layer = FactorizedDense.from_layers(dense_layers, "tucker",
    ...                                     eps=Tolerance(0.3, "authors"))
    """

    def __init__(self, eps, mode="frobenius"):
        self.eps = validate_eps(eps)
        self.mode = validate_eps_mode(mode, "mode")

    def __repr__(self):
        return f"Tolerance({self.eps!r}, {self.mode!r})"

    def __eq__(self, other):
        return (isinstance(other, Tolerance)
                and (self.eps, self.mode) == (other.eps, other.mode))

    def __hash__(self):
        return hash((self.eps, self.mode))


def validate_eps_mode(eps_mode, name="eps_mode"):
    """Returns `eps_mode` if it is one of `EPS_MODES`, else raises."""
    if eps_mode not in EPS_MODES:
        raise ValueError(f"`{name}` must be one of {EPS_MODES}. Received: {name}={eps_mode!r}")
    return eps_mode


def validate_eps(eps, name="eps"):
    """Returns `eps` as a float (or a `Tolerance`), or raises if it is not in (0, 1)."""
    if eps is None or isinstance(eps, Tolerance):
        return eps
    if isinstance(eps, bool) or not isinstance(eps, (int, float, np.floating, np.integer)):
        raise TypeError(f"`{name}` must be a float in (0, 1). Received: {name}={eps!r}")
    if not 0.0 < float(eps) < 1.0:
        raise ValueError(
            f"`{name}` is a relative precision and must be in (0, 1). "
            f"Received: {name}={eps!r}"
        )
    return float(eps)


def _tolerance(eps, eps_mode):
    """`(eps, mode)` from a bare `eps` and `eps_mode`, or from a `Tolerance`."""
    if isinstance(eps, Tolerance):
        if eps_mode is not None and eps_mode != eps.mode:
            raise ValueError(
                f"`eps_mode` contradicts the mode of `eps`. Received: eps={eps!r}, "
                f"eps_mode={eps_mode!r}"
            )
        return eps.eps, eps.mode
    mode = validate_eps_mode("frobenius" if eps_mode is None else eps_mode)
    return validate_eps(eps), mode


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


def pivoted_qr(matrix, eps):
    """Column-pivoted QR stopped at the DMTRL authors' precision `eps` (their per-step rule).

    The rule of `scipy.linalg.interpolative`'s fixed-precision QR (`iddp_qrpiv`, which the
    authors' `my_svd` reaches through `svd(A, eps, rand=False)`): take the column of largest
    remaining norm, project it out of every column, and stop after the first step at which the
    largest remaining column norm is at most `eps` times the largest column norm of `matrix`.

    Args:
        matrix: 2-D array `(m, n)`.
        eps: precision in (0, 1).

    Returns:
        `(q, r)`: `q` `(m, k)` orthonormal, `r = q.T @ matrix` `(k, n)`, so that `q @ r` is the
        rank-`k` pivoted-QR approximation of `matrix` (`k >= 1`).
    """
    residual = np.array(matrix, dtype=np.float64)
    norms = np.sum(residual**2, axis=0)
    largest = float(np.max(norms)) if norms.size else 0.0
    basis = []
    for _ in range(min(residual.shape)):
        pivot = int(np.argmax(norms))
        if norms[pivot] <= 0.0:
            break
        q = residual[:, pivot] / math.sqrt(norms[pivot])
        if basis:  # one re-orthogonalisation keeps q orthonormal to working precision
            previous = np.stack(basis, axis=1)
            q = q - previous @ (previous.T @ q)
            q /= np.linalg.norm(q)
        basis.append(q)
        residual -= np.outer(q, q @ residual)
        norms = np.sum(residual**2, axis=0)
        if np.max(norms) <= eps**2 * largest:
            break
    if not basis:  # an all-zero matrix: one (arbitrary) unit direction
        basis.append(np.eye(residual.shape[0], 1)[:, 0])
    q = np.stack(basis, axis=1)
    return q, q.T @ np.asarray(matrix, dtype=np.float64)


def rank_from_pivoted_qr(matrix, eps):
    """The rank the DMTRL authors' code keeps for `matrix` at precision `eps` (`pivoted_qr`)."""
    return pivoted_qr(matrix, eps)[0].shape[1]


def truncated_svd(matrix, rank=None, eps=None, eps_mode=None):
    """`matrix ~= left @ right` with `left` `(m, r)` orthonormal and `right` `(r, n)`.

    Args:
        matrix: 2-D array.
        rank: kept rank; None keeps what `eps` allows (or everything).
        eps: precision in (0, 1) (or a `Tolerance`), used when `rank` is None.
        eps_mode: `"frobenius"` (`eps` bounds the relative Frobenius error) or `"authors"`
            (the DMTRL authors' pivoted-QR precision; see the module docstring). Defaults to
            None: `"frobenius"`, or the mode of a `Tolerance`.

    Returns:
        `(left, right, singular_values)`, with the singular values folded into `right`;
        `singular_values` are those of `matrix` (`"frobenius"`) or of its pivoted-QR
        approximation (`"authors"`).
    """
    eps, eps_mode = _tolerance(eps, eps_mode)
    matrix = np.asarray(matrix, dtype=np.float64)
    if rank is None and eps is not None and eps_mode == "authors":
        # As `scipy.linalg.interpolative.svd(matrix, eps, rand=False)`: the SVD of Q R.
        q, r = pivoted_qr(matrix, eps)
        u, s, vt = np.linalg.svd(r, full_matrices=False)
        return q @ u, s[:, None] * vt, s
    u, s, vt = np.linalg.svd(matrix, full_matrices=False)
    if rank is None:
        rank = rank_from_eps(s, eps) if eps is not None else len(s)
    rank = min(int(rank), len(s))
    return u[:, :rank], s[:rank, None] * vt[:rank], s


def _step_eps(eps, eps_mode, steps):
    """The precision of each of `steps` truncations: split (`"frobenius"`) or not."""
    if eps is None or eps_mode == "authors":
        return eps
    return eps / math.sqrt(max(steps, 1))


def hosvd(tensor, ranks=None, eps=None, eps_mode=None):
    """Truncated higher-order SVD: `tensor ~= core x_1 U_1 ... x_N U_N`.

    Args:
        tensor: N-d array.
        ranks: one rank per mode (None entries: chosen by `eps` or kept full).
        eps: precision in (0, 1) (or a `Tolerance`). `"frobenius"`: each mode gets
            `eps / sqrt(N)`, so the whole error is within `eps`; `"authors"`: each mode
            unfolding `(n_k, prod of the others)` gets `eps` in the authors' rule.
        eps_mode: `"frobenius"` or `"authors"`, as in `truncated_svd`. Defaults to None.

    Returns:
        `(core, factors)`, with `factors[k]` of shape `(tensor.shape[k], ranks[k])`.
    """
    eps, eps_mode = _tolerance(eps, eps_mode)
    tensor = np.asarray(tensor, dtype=np.float64)
    ndim = tensor.ndim
    ranks = list(ranks) if ranks is not None else [None] * ndim
    mode_eps = _step_eps(eps, eps_mode, ndim)
    factors = []
    for mode in range(ndim):
        unfolded = np.moveaxis(tensor, mode, 0).reshape(tensor.shape[mode], -1)
        left, _, _ = truncated_svd(unfolded, ranks[mode], mode_eps, eps_mode)
        factors.append(left)
    core = tensor
    for mode, factor in enumerate(factors):
        core = np.moveaxis(np.tensordot(factor.T, np.moveaxis(core, mode, 0), axes=1), 0, mode)
    return core, factors


def tt_svd(tensor, ranks=None, eps=None, eps_mode=None):
    """TT-SVD (Oseledets 2011): cores `(r_{k-1}, n_k, r_k)` with `r_0 = r_d = 1`.

    Args:
        tensor: N-d array.
        ranks: the `N - 1` inner ranks (None entries: chosen by `eps` or kept full).
        eps: precision in (0, 1) (or a `Tolerance`). `"frobenius"`: each step gets
            `eps / sqrt(N - 1)`; `"authors"`: each step's matrix `(r_{k-1} n_k, rest)` gets
            `eps` in the authors' rule.
        eps_mode: `"frobenius"` or `"authors"`, as in `truncated_svd`. Defaults to None.

    Returns:
        A list of N cores.
    """
    eps, eps_mode = _tolerance(eps, eps_mode)
    tensor = np.asarray(tensor, dtype=np.float64)
    shape = tensor.shape
    ndim = len(shape)
    ranks = list(ranks) if ranks is not None else [None] * (ndim - 1)
    step_eps = _step_eps(eps, eps_mode, ndim - 1)
    cores = []
    rest = tensor
    left_rank = 1
    for k in range(ndim - 1):
        rest = rest.reshape(left_rank * shape[k], -1)
        left, right, _ = truncated_svd(rest, ranks[k], step_eps, eps_mode)
        cores.append(left.reshape(left_rank, shape[k], left.shape[1]))
        left_rank = left.shape[1]
        rest = right
    cores.append(rest.reshape(left_rank, shape[-1], 1))
    return cores


def tt_matrix_svd(matrix, input_modes, output_modes, ranks=None, eps=None, eps_mode=None):
    """TT-matrix decomposition of `matrix` `(prod n_k, prod m_k)`: cores `(r, n_k, m_k, r')`."""
    matrix = np.asarray(matrix, dtype=np.float64)
    d = len(input_modes)
    tensor = matrix.reshape(tuple(input_modes) + tuple(output_modes))
    order = [axis for k in range(d) for axis in (k, d + k)]
    tensor = tensor.transpose(order).reshape([n * m for n, m in zip(input_modes, output_modes)])
    cores = tt_svd(tensor, ranks, eps, eps_mode)
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
