"""Multi-device training: cross-replica sums for per-domain statistics, layout checks.

keras_mdn trains on Keras' own distribution engines; this module holds what multi-domain
layers need from them.

- JAX, `keras.distribution` (`DataParallel`, `ModelParallel`): the train step is one program
  compiled for the global batch and partitioned by XLA, so a sum over the batch axis already
  runs over every device's examples. Nothing needs reducing: `cross_replica_sum` returns its
  arguments.
- TensorFlow, `tf.distribute.MirroredStrategy`: each replica runs the step on its share of the
  batch. A per-domain batch norm must add its per-domain sums and counts over the replicas
  before it divides (`cross_replica_sum`, an all-reduce), so that each domain's statistics
  are those of all its examples in the global batch, and the moving statistics of a domain
  move when it is present on any replica (identically on every replica: the variables'
  copies never diverge).

`is_distributed()` says whether a step runs under either engine;
`should_synchronize(synchronized)` whether a layer's statistics need the all-reduce now.
`check_layout_map(layout_map, model)` checks a `keras.distribution.LayoutMap` against a
model's weights before a `ModelParallel` run, naming the weight whose axis the mesh does not
divide.
"""

import keras


def _tf_replica_context():
    """The tf.distribute replica context of a step with several replicas, else None."""
    if keras.backend.backend() != "tensorflow":
        return None
    import tensorflow as tf

    if not tf.distribute.has_strategy():
        return None
    context = tf.distribute.get_replica_context()
    if context is None or context.num_replicas_in_sync < 2:
        return None
    return context


def num_replicas():
    """How many replicas run the current step separately (TensorFlow), else 1.

    Under JAX's `keras.distribution` the step is one global program: 1.
    """
    context = _tf_replica_context()
    return 1 if context is None else context.num_replicas_in_sync


def is_distributed():
    """True when training runs under `keras.distribution` or a multi-replica tf.distribute.

    On TensorFlow it is True inside the replica function of a strategy with at least two
    replicas (where `fit` runs the train step); on JAX when `keras.distribution` holds a
    distribution.
    """
    if keras.distribution.distribution() is not None:
        return True
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1


def check_synchronized(synchronized):
    """Validates a layer's `synchronized` argument: `None`, `True` or `False`."""
    if synchronized is not None and not isinstance(synchronized, bool):
        raise TypeError(
            "`synchronized` must be None (on under a distribution), True or False. "
            f"Received: synchronized={synchronized!r}"
        )
    return synchronized


def should_synchronize(synchronized):
    """Whether a layer with this `synchronized` argument all-reduces in the current step.

    Only where replicas run the step separately (tf.distribute with several replicas) and
    the argument is not `False`: elsewhere the local batch is the global one.
    """
    return synchronized is not False and num_replicas() > 1


def cross_replica_sum(*tensors):
    """Sums each tensor over the replicas running the step (an all-reduce).

    Outside a multi-replica tf.distribute step (one device, JAX's global programs) it
    returns the tensors unchanged: the local batch is then the global batch.

    Args:
        *tensors: tensors of the same shape on every replica.

    Returns:
        A tuple of the summed tensors (one tensor for a single argument).
    """
    context = _tf_replica_context()
    if context is not None:
        import tensorflow as tf

        tensors = tuple(context.all_reduce(tf.distribute.ReduceOp.SUM, list(tensors)))
    return tensors[0] if len(tensors) == 1 else tuple(tensors)


def check_layout_map(layout_map, model):
    """Checks that a `LayoutMap`'s mesh divides every weight axis it shards.

    Build the model once without a distribution (shapes are all that is read), check, then
    build it under `keras.distribution.ModelParallel(layout_map=...)`. Without the check, JAX
    fails at the first sharded weight with an `IndivisibleError` that does not name it.

    Args:
        layout_map: a `keras.distribution.LayoutMap`.
        model: a built Keras model (or layer) whose `weights` the layout will apply to.

    Returns:
        Dict weight path -> layout axes, for the weights the map matches.

    Raises:
        ValueError: a layout of the wrong rank, or a weight axis the mesh axis size does
            not divide. (`LayoutMap` itself rejects mesh axes the mesh does not have.)
    """
    mesh = layout_map.device_mesh
    sizes = dict(zip(mesh.axis_names, mesh.shape))
    matched = {}
    for weight in model.weights:
        layout = layout_map[weight.path]
        if layout is None:
            continue
        axes = tuple(layout.axes)
        shape = tuple(weight.shape)
        if len(axes) != len(shape):
            raise ValueError(
                f"The layout of weight {weight.path!r} (shape {shape}) has {len(axes)} axes, "
                f"the weight {len(shape)}. Received: layout={axes}"
            )
        for index, (size, axis) in enumerate(zip(shape, axes)):
            if axis is None:
                continue
            if size % sizes[axis]:
                raise ValueError(
                    f"Weight {weight.path!r} of shape {shape} cannot shard its axis {index} "
                    f"(size {size}) over mesh axis {axis!r} of size {sizes[axis]}: the sizes "
                    f"must divide. Replicate that axis (None) or shard another one. "
                    f"Received: layout={axes}"
                )
        matched[weight.path] = axes
    return matched
