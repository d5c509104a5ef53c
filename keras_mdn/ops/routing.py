"""Domain routing: the one place where a `domain` argument selects per-domain parameters.

A domain is given at call time in one of three forms, and the form alone decides the path,
while tracing (never a run-time `cond`, which XLA compiles into a slow program):

- a Python int: the whole batch is one domain, known while tracing. The parameters are sliced
  statically, so an exported per-domain endpoint holds that domain's weights as constants and
  an adapter lowers to a plain 1x1 convolution.
- a 0-d integer tensor: the whole batch is one domain, chosen at run time (one row of the
  parameter table, then a single kernel for the batch).
- an integer tensor of shape `(batch,)`: a per-example domain, the form a functional model gets
  from `keras.Input(shape=(), dtype="int32")`. Always the per-example ("mixed") path, also when
  every example happens to share one domain.

Per-example selection is a gather (`take_domains`), whose gradient adds each example into its
own domain's row only, so a NaN in one example reaches only its own domain (a one-hot product
would spread `0 * NaN` to every domain). Per-domain reductions (`domain_sums`) are segment sums
for the same reason. On JAX, a batch norm's per-domain rows (asked for with
`by_mask="auto"`) are selected and summed by masked reductions instead,
`sum(where(mask, table, 0))`: a select, so a NaN stays in its domain just as with a
gather, and one fused loop for XLA, which compiles gathers and the scatters of their
gradients slowly (`masked`). `domain_matmul` (each example times its
domain's matrix) writes its gradient out as a batched GEMM and one segment sum: automatic
differentiation of a gather builds several times the graph ops, and graph ops are most of a
multi-domain network's trace and compile time. A tensor domain is prepared once
(`select`): the layers of one model call, which all receive the same domain tensor, share
one `Selection`.

Bad domain ids, one behaviour on every backend and compile path:

- a Python int, a NumPy array, or a tensor whose values are known (eager) is checked here:
  an id outside `[0, num_domains)`, a float with a fractional part, or a bool raises.
- inside a compiled function (TF graph, TF XLA, JAX jit) the values are unknown while tracing:
  an example whose id is outside `[0, num_domains)` (or, for float ids, not a whole number)
  selects a row of NaNs, so its output and loss are NaN (`keras.callbacks.TerminateOnNaN` stops
  `fit`), it adds nothing to any domain's statistics or gradients, and no example ever gets
  another domain's answer.
- a domain vector whose length differs from the batch raises (at trace time when both are
  static, else from the reshape that lays the per-example rows out along the batch).
"""

import math
import threading

import numpy as np
from keras import KerasTensor, ops
from keras import backend as K


def check_num_domains(num_domains, name="num_domains"):
    """Validates a constructor's number of domains (or tasks) and returns it as an int."""
    if isinstance(num_domains, (bool, np.bool_)) or not isinstance(num_domains, (int, np.integer)):
        raise TypeError(f"`{name}` must be a positive integer. Received: {name}={num_domains!r}")
    if num_domains < 1:
        raise ValueError(f"`{name}` must be a positive integer. Received: {name}={num_domains}")
    return int(num_domains)


def canonicalize_domain(domain, num_domains, name="domain"):
    """Validates a domain argument and returns a Python int or a tensor of rank 0 or 1.

    Integer tensors come back as int32. A float tensor is accepted when its values are whole
    numbers (a functional model's domain input may be declared float so that fractional ids
    reach the layers instead of being truncated by Keras' input cast); it comes back float, and
    `valid_domains` marks its fractional entries invalid. Bools are rejected.

    Args:
        domain: Python int, 0-d tensor, or tensor of shape `(batch,)`.
        num_domains: number of domains the caller owns parameters for.
        name: argument name used in error messages.

    Returns:
        A Python int for static domains, otherwise a tensor of rank 0 or 1.
    """
    if domain is None:
        raise ValueError(f"`{name}` is required: pass a domain index. Received: {name}=None")
    if isinstance(domain, (bool, np.bool_)):
        raise TypeError(f"`{name}` must be an integer, not a bool. Received: {name}={domain!r}")
    if isinstance(domain, (int, np.integer)):
        domain = int(domain)
        _check_values(np.asarray(domain), num_domains, name)
        return domain
    if isinstance(domain, (float, np.floating)):
        raise TypeError(f"`{name}` must be an integer. Received: {name}={domain!r}")
    if isinstance(domain, (list, tuple)):
        domain = np.asarray(domain)
    dtype = K.standardize_dtype(domain.dtype)
    if "int" not in dtype and "float" not in dtype:
        raise TypeError(
            f"`{name}` must have an integer dtype. Received: {name} with dtype={dtype}"
        )
    if len(domain.shape) > 1:
        raise ValueError(
            f"`{name}` must be a scalar or have shape (batch,). "
            f"Received: {name} with shape={tuple(domain.shape)}"
        )
    values = _concrete_values(domain)
    if values is not None:
        _check_values(values, num_domains, name)
    if "int" in dtype:
        return ops.cast(domain, "int32")
    return domain if isinstance(domain, KerasTensor) else ops.convert_to_tensor(domain)


def is_uniform(domain):
    """True when `domain` names one domain for the whole batch (int or 0-d tensor)."""
    return isinstance(domain, int) or len(domain.shape) == 0


def valid_domains(domain, num_domains):
    """Boolean tensor (shape of `domain`): True where the id is a domain of `[0, num_domains)`."""
    domain = ops.convert_to_tensor(domain)
    if "float" in K.standardize_dtype(domain.dtype):
        whole = ops.equal(domain, ops.floor(domain))
        return ops.logical_and(whole, _in_range(domain, num_domains))
    if K.backend() == "torch":  # torch's uint32 casts do not wrap negative ids
        return _in_range(domain, num_domains)
    # One comparison: a negative id wraps to a large unsigned one.
    return ops.less(ops.cast(domain, "uint32"), ops.cast(num_domains, "uint32"))


class Selection:
    """A tensor `domain` prepared once per layer call for `take_domains` and `domain_sums`.

    Attributes:
        valid: bool tensor, shape of `domain`: the id names a domain.
        ids: int32 ids, invalid ones replaced by 0 (safe for any gather).
        segments: int32 ids, invalid ones -1 (segment sums drop negative ids on every
            backend and compile path).
        num_domains: int.
    """

    def __init__(self, domain, num_domains, same_length=True):
        valid = valid_domains(domain, num_domains)
        if same_length is not True:
            # A length-1 vector against a batch of unknown size: NaN rows, not a broadcast.
            valid = ops.logical_and(valid, same_length)
        ids = ops.cast(ops.where(valid, domain, 0), "int32")
        # Not lazy: a tensor first made inside a custom gradient (a JAX custom_vjp trace)
        # must not be cached for use outside it.
        nan_ids = ops.where(valid, ids, num_domains)
        self._set_parts(num_domains, (valid, ids, ops.where(valid, ids, -1), nan_ids))

    def parts(self):
        """The selection's tensors, for `from_parts` (to pass it into a `shared_trace`)."""
        return (self.valid, self.ids, self.segments, self._nan_ids)

    @classmethod
    def from_parts(cls, num_domains, parts):
        """A `Selection` of the tensors `parts()` returned (inside a `shared_trace`)."""
        selection = cls.__new__(cls)
        selection._set_parts(num_domains, parts)
        return selection

    def _set_parts(self, num_domains, parts):
        self.num_domains = num_domains
        self.valid, self.ids, self.segments, self._nan_ids = parts
        # For masked selections and sums (`domain_mask`): made here on JAX, which masks
        # (see `masked`), for the reason above; on demand elsewhere.
        self._masks = self._make_masks() if K.backend() == "jax" else None
        # Lazy, shared by the layers of one call (made outside any custom gradient).
        self._counts = self._divisors = self._present = None

    def nan_ids(self):
        """int32 ids, invalid ones `num_domains`: the NaN row `take_domains` appends."""
        return self._nan_ids

    def domain_mask(self, nan_column=False):
        """`(..., num_domains)` bool, True at each example's domain (none for an invalid id).

        With `nan_column`, one more column, True exactly for the invalid ids.
        """
        if self._masks is None:
            self._masks = self._make_masks()
        return self._masks[1 if nan_column else 0]

    def _make_masks(self):
        columns = ops.arange(self.num_domains + 1, dtype="int32")
        mask = ops.equal(ops.expand_dims(self.segments, -1), columns[: self.num_domains])
        return mask, ops.equal(ops.expand_dims(self._nan_ids, -1), columns)

    def counts(self):
        """Examples per domain, float32 `(num_domains,)` (invalid ids count for none)."""
        if self._counts is None:
            if masked(self, 1):
                self._counts = ops.sum(ops.cast(self.domain_mask(), "float32"), axis=0)
            else:
                ones = ops.ones_like(self.segments, dtype="float32")
                self._counts = self._segment_sum(ones)
        return self._counts

    def divisors(self):
        """`(num_domains, 1)` float32: examples per domain, at least 1 (for averages)."""
        if self._divisors is None:
            self._divisors = ops.expand_dims(ops.maximum(self.counts(), 1.0), -1)
        return self._divisors

    def present(self):
        """`(num_domains, 1)` bool: the domains with at least one (valid) example."""
        if self._present is None:
            self._present = ops.expand_dims(ops.greater(self.counts(), 0.0), -1)
        return self._present

    def _segment_sum(self, data):
        return ops.segment_sum(data, self.segments, num_segments=self.num_domains)


_last_selection = threading.local()


def select(domain, num_domains, inputs=None):
    """Prepares a tensor `domain` (rank 0 or 1) for repeated selections: a `Selection`.

    The last one is kept (per thread) and reused for the very same tensor object: every
    layer of a functional model's call gets the same domain tensor, so its ids, validity and
    per-domain counts are computed once per call, not once per layer (fewer graph ops, a
    shorter trace). The identity check keeps it from ever crossing graphs or traces.

    With `inputs` (the caller's batch), a domain vector's length is checked against the
    batch once per call (`same_length`): where it cannot be known while tracing, every id of
    a vector of another length is invalid (NaN rows; a length-1 vector would otherwise
    broadcast to the batch), unless a reshape or broadcast raises first.
    """
    if isinstance(domain, Selection):
        return domain
    checks = inputs is not None and len(domain.shape) == 1
    cached = getattr(_last_selection, "value", None)
    if (cached is not None and cached[0] is domain and cached[1] == num_domains
            and (cached[3] or not checks)):
        return cached[2]
    same = same_length(domain, inputs) if checks else True
    selection = Selection(domain, num_domains, same)
    _last_selection.value = (domain, num_domains, selection, checks)
    return selection


# Set to False to trace every call of a `shared_trace` function apart (A/B measurements).
SHARE_TRACES = True


def shared_trace(fn):
    """`fn` traced once per distinct signature and reused by every call with that signature.

    Inside a traced function (TF graph or XLA, JAX jit), each distinct combination of
    argument shapes, dtypes and Python values is traced once, forward and gradient, and every
    further call is one function-call op that the compiler inlines: the layers of one shape
    in a model share one trace. Tracing is most of a multi-domain model's first step on
    TensorFlow (op creation, ~0.7 ms per graph op) and part of it on JAX. On TF, `fn` becomes
    a `tf.function`; on JAX a `jax.jit` whose non-array arguments are static. Eager calls
    (and torch) run `fn` itself. `fn` must be pure: arrays (or tuples of arrays) and
    hashable Python values in, tensors out, no variables read or assigned; a custom gradient
    inside it must take every traced value it uses as an argument (JAX re-traces its forward
    pass later, when the closed-over values are gone).
    """
    if K.backend() == "tensorflow":
        import tensorflow as tf

        traced = tf.function(fn, autograph=False)

        def call(*args):
            if not SHARE_TRACES or tf.executing_eagerly():
                return fn(*args)
            return traced(*args)

        call.traced = traced
        return call
    if K.backend() == "jax":
        import jax

        jitted = {}  # one `jax.jit` per set of static (non-array) argument positions

        def call(*args):
            arrays = [isinstance(a, (jax.Array, tuple)) for a in args]
            if not SHARE_TRACES or not any(
                isinstance(leaf, jax.core.Tracer) for leaf in jax.tree_util.tree_leaves(args)
            ):
                return fn(*args)
            static = tuple(i for i, is_array in enumerate(arrays) if not is_array)
            if static not in jitted:
                jitted[static] = jax.jit(fn, static_argnums=static)
            return jitted[static](*args)

        call.jitted = jitted
        return call
    return fn


def gather_domain(params, domain):
    """Selects rows of a per-domain parameter table `params` of shape `(num_domains, ...)`.

    Returns `params[domain]` (shape `(...)`) for a uniform domain and a per-example table of
    shape `(batch, ...)` for a domain vector. `domain` may be a `Selection`. Invalid traced ids
    select a row of NaNs (see the module docstring); gradients reach only the rows of the
    domains selected.
    """
    if isinstance(domain, int):
        return params[domain]
    return take_domains(params, select(domain, params.shape[0]))


# With `by_mask="auto"` (the batch norms), per-example selections (`take_domains`) and
# per-domain sums (`domain_sums`) of at most this many values per example (number of domains
# x row size) are masked reductions on JAX, larger ones gathers and segment sums (`masked`).
MASKED_MAX_VALUES = 8192


def masked(selection, row_size):
    """Whether a selection of rows of `row_size` values is done by masked reductions.

    `where(mask, table, 0)` summed over the domain axis (and `where(mask, data, 0)` summed
    over the batch for per-domain sums) reads every domain's row for every example, so it is
    used for small tables only. As a select (not a product with a one-hot mask), it keeps a
    NaN in its own domain exactly as a gather does, forward and backward.

    On JAX only, where it was measured to win: the BN-only ResNet-26's first step (w0.25,
    32 px, 5 domains, mean of 3 in one process) 10.8 s -> 8.6 s (XLA compiles the gathers and
    the scatter-adds of segment sums slowly); on TensorFlow graph 7.7 s -> 8.3 s (more graph
    ops to trace) and with XLA 16.0 s -> 16.4 s, steps unchanged.
    """
    return K.backend() == "jax" and selection.num_domains * row_size <= MASKED_MAX_VALUES


def take_domains(params, selection, fill_invalid=True, by_mask=False):
    """`params[ids]` for a `Selection`, with NaN rows where the id is invalid.

    A gather, or a masked sum over the domains (`by_mask=True`, or `"auto"`: where `masked`
    picks it, i.e. a small table on JAX; the batch norms ask for `"auto"`, the factorised
    layers' per-example codes measured 2-3x slower masked on JAX): either way the
    gradient adds each example into its own domain's row only, so a NaN stays in its domain.
    Invalid ids read a row of NaNs appended to the table (a pad: fewer ops, forward and
    backward, than masking the rows). With `fill_invalid=False` invalid ids read row 0 (zeros
    when masked): for values that are NaN'd elsewhere.
    """
    floating = "float" in K.standardize_dtype(params.dtype)
    if by_mask == "auto":
        by_mask = masked(selection, math.prod(params.shape[1:]))
    if floating and by_mask:
        return _masked_rows(params, selection, fill_invalid)
    if not fill_invalid or not floating:
        # integer tables are layouts, not weights: invalid ids read row 0
        return _take_rows(params, selection.ids)
    padding = ((0, 1),) + ((0, 0),) * (len(params.shape) - 1)
    params = ops.pad(params, padding, constant_values=float("nan"))
    return _take_rows(params, selection.nan_ids())


def _masked_rows(params, selection, fill_invalid):
    """`take_domains` as `sum(where(mask, table, 0))` over the domain axis."""
    shape = tuple(params.shape)
    flat = params if len(shape) == 2 else ops.reshape(params, (shape[0], -1))
    if fill_invalid:
        flat = ops.pad(flat, ((0, 1), (0, 0)), constant_values=float("nan"))
    mask = ops.expand_dims(selection.domain_mask(nan_column=fill_invalid), -1)
    rows = ops.sum(ops.where(mask, flat, ops.zeros((), flat.dtype)), axis=-2)
    if len(shape) == 2:
        return rows
    return ops.reshape(rows, (-1,) * (len(mask.shape) - 2) + shape[1:])


def custom_gradient(fn):
    """`keras.ops.custom_gradient`, except on torch, where `fn`'s forward ops are differentiated.

    The written-out gradients here save graph ops when tracing (TF, JAX); torch runs eagerly
    and Keras' torch `custom_gradient` takes one output and passes `upstream` by keyword, so
    there autodiff of the same forward computation is used.
    """
    if K.backend() != "torch":
        return ops.custom_gradient(fn)

    def forward(*args):
        outputs, _ = fn(*args)
        return outputs

    return forward


def domain_matmul(inputs, kernels, selection):
    """Each example times its own domain's matrix: `inputs[b] @ kernels[domain[b]]`.

    Args:
        inputs: `(batch, positions, in)`.
        kernels: per-domain matrices `(num_domains, in, out)`, a tensor (not a variable).
        selection: a `Selection` of a domain vector.

    Returns:
        `(batch, positions, out)`; NaN for the examples with an invalid id.

    One gather and a batched GEMM; the gradient is written out (a batched GEMM and one
    segment sum into the domains' matrices, so a NaN stays in its domain) instead of
    differentiating the gather, which builds about four times the graph ops. Traced once per
    signature (`shared_trace`).
    """
    return _shared_domain_matmul(inputs, kernels, selection.parts(), selection.num_domains)


def _domain_matmul(inputs, kernels, parts, num_domains):
    # The selection's tensors are arguments of the custom gradient, not closed over: a
    # traced value closed over by a custom gradient leaks out of a `jax.jit` (`shared_trace`).
    @custom_gradient
    def matmul(inputs, kernels, *parts):
        selection = Selection.from_parts(num_domains, parts)
        # No reshape of the rows to the batch: the selection made with the inputs
        # (`select(domain, num_domains, inputs)`) NaNs a vector of another length, and the
        # batched product raises for any other mismatch.
        # Gathers: masked sums over (batch, domains, in, out) kernels ran the ResNet-26
        # step slower (w0.25, 32 px, 5 domains: TF graph 1.46x the plain network's against
        # 1.08x; JAX 133 ms against 88 ms), for a compile 10 % shorter.
        rows = take_domains(kernels, selection, by_mask=False)
        outputs = ops.matmul(inputs, rows)

        def grad(*upstream):
            upstream = upstream[0]
            input_grad = _matmul_transposed(upstream, rows, transpose_b=True)
            row_grads = _matmul_transposed(inputs, upstream, transpose_a=True)
            kernel_grad = domain_sums(row_grads, selection, by_mask=False)
            return (input_grad, kernel_grad) + (None,) * len(parts)

        return outputs, grad

    return matmul(inputs, kernels, *parts)


_shared_domain_matmul = shared_trace(_domain_matmul)


def _matmul_transposed(a, b, transpose_a=False, transpose_b=False):
    """Batched `a @ b` with the last two axes of `a` or `b` transposed (no transpose op on TF)."""
    if K.backend() == "tensorflow":
        import tensorflow as tf

        return tf.linalg.matmul(a, b, adjoint_a=transpose_a, adjoint_b=transpose_b)
    if transpose_a:
        a = ops.swapaxes(a, -1, -2)
    if transpose_b:
        b = ops.swapaxes(b, -1, -2)
    return ops.matmul(a, b)


def read(variable):
    """A variable's value as a tensor (TF's `custom_gradient` refuses variable inputs)."""
    if K.backend() == "tensorflow":
        import tensorflow as tf

        return tf.convert_to_tensor(variable)
    return ops.convert_to_tensor(variable)


def take_columns(table, columns):
    """`table[i, columns[i, j]]`: each example's own columns of a `(batch, n)` table."""
    if K.backend() == "tensorflow":
        import tensorflow as tf

        # A gather from the flattened table: Keras' `take_along_axis` (and a gather with
        # `batch_dims`) cost about 100 graph ops with their gradient, this about 25.
        width, batch = table.shape[-1], tf.shape(table)[0]
        # Reshaped to the table's batch: a domain vector of another length raises.
        columns = tf.reshape(columns, (batch, columns.shape[-1]))
        return tf.gather(tf.reshape(table, (-1,)), columns + (tf.range(batch) * width)[:, None])
    return ops.take_along_axis(table, columns, axis=1)


def domain_sums(data, selection, by_mask=False):
    """Per-domain sums of per-example `data` `(batch, ...)`: shape `(num_domains, ...)`.

    Segment sums, or masked sums over the batch (`by_mask=True`, or `"auto"` as in
    `take_domains`): examples with
    invalid ids count for no domain, and a NaN stays in its own domain's row (a one-hot
    product would spread `0 * NaN` to every domain). The matching counts are
    `selection.counts()`.
    """
    if by_mask == "auto":
        by_mask = masked(selection, math.prod(data.shape[1:]))
    if by_mask:
        # (batch, domains, 1, ...) against (batch, 1, ...)
        mask = selection.domain_mask()
        if len(data.shape) > 1:
            mask = ops.reshape(mask, (-1, selection.num_domains) + (1,) * (len(data.shape) - 1))
        data = ops.expand_dims(data, 1)
        return ops.sum(ops.where(mask, data, ops.zeros((), data.dtype)), axis=0)
    return selection._segment_sum(data)


def per_example(rows, inputs, check_batch=False):
    """Lays per-example rows `(batch, C)` out to broadcast against `inputs` `(batch, ..., C)`.

    With `check_batch`, the reshape names the inputs' batch size, so a domain vector whose
    length differs from the batch raises instead of broadcasting (once per layer is enough).
    """
    batch = -1
    if check_batch:
        batch = inputs.shape[0] if inputs.shape[0] is not None else ops.shape(inputs)[0]
    return ops.reshape(rows, (batch,) + (1,) * (len(inputs.shape) - 2) + (rows.shape[-1],))


def check_batch(domain, inputs, name="domain"):
    """Raises when a domain vector's static length differs from the inputs' static batch."""
    if is_uniform(domain):
        return
    length, batch = domain.shape[0], inputs.shape[0]
    if length is not None and batch is not None and length != batch:
        raise ValueError(
            f"`{name}` must have one id per example: shape ({batch},). "
            f"Received: {name} with shape={tuple(domain.shape)} for inputs with "
            f"shape={tuple(inputs.shape)}"
        )


def same_length(domain, inputs):
    """Whether a domain vector has the inputs' batch length: a Python bool, or a traced scalar.

    A reshape of per-example rows to the batch does not catch a length-1 vector in a TF graph
    of unknown batch size: Grappler drops a reshape between shapes it cannot tell apart
    (`(?, n)` to `(?, n)`), and the rows broadcast to the whole batch.
    """
    length, batch = domain.shape[0], inputs.shape[0]
    if length is not None and batch is not None:
        return length == batch
    return ops.equal(ops.shape(domain)[0], ops.shape(inputs)[0])


def route(domain, uniform_fn, mixed_fn):
    """Runs `uniform_fn(domain)` for an int or 0-d domain, else `mixed_fn(domain_vector)`.

    The choice is static (from the domain's form): a run-time `cond` makes XLA programs
    5-200x slower. Both functions must return tensors of the same shape and dtype.
    """
    if is_uniform(domain):
        return uniform_fn(domain)
    return mixed_fn(domain)


def _take_rows(params, ids):
    """`params[ids]` along axis 0 for ids known to be in range."""
    if K.backend() == "tensorflow":
        import tensorflow as tf

        # Keras' `take` first maps negative ids (4 more graph ops per gather, at every layer
        # of every step in TF graph mode); these ids are never negative.
        return tf.gather(params, ids)
    return ops.take(params, ids, axis=0)


def _in_range(domain, num_domains):
    return ops.logical_and(
        ops.greater_equal(domain, ops.cast(0, domain.dtype)),
        ops.less(domain, ops.cast(num_domains, domain.dtype)),
    )


def _check_values(values, num_domains, name):
    values = np.asarray(values)
    if values.size == 0:
        return
    if values.dtype.kind == "f":
        fractional = values[values != np.floor(values)]
        if fractional.size:
            raise ValueError(
                f"`{name}` must hold whole numbers (domain ids). "
                f"Received: {name}={str(fractional.flat[0])}"
            )
    low, high = values.min(), values.max()
    if low < 0 or high >= num_domains:
        bad = low if low < 0 else high
        bad = int(bad) if np.isfinite(bad) else bad
        raise ValueError(
            f"`{name}` must be in [0, {num_domains}) for a layer with "
            f"num_domains={num_domains}. Received: {name}={bad}"
        )


def _concrete_values(domain):
    """The tensor's values when they are known now (eager), else None (symbolic or traced)."""
    if isinstance(domain, (KerasTensor, np.ndarray)):
        return None if isinstance(domain, KerasTensor) else domain
    try:
        return ops.convert_to_numpy(domain)
    except Exception:  # symbolic TF graph tensor or JAX tracer: values unknown until run time
        return None
