"""Losses for `DomainHead` logits."""

import keras
from keras import ops

from keras_mdn.api import register
from keras_mdn.layers.domain_head import out_of_domain_labels


@register
class DomainCrossentropy(keras.losses.Loss):
    """Sparse categorical cross-entropy of `DomainHead` logits; NaN for out-of-domain labels.

    The same as `keras.losses.SparseCategoricalCrossentropy(from_logits=True)` for labels in
    `[0, num_classes[domain])`. An example whose label is not a class of its domain (a label
    of domain 2 given to a domain-0 example, a label >= `max(num_classes)` or < 0) gets a NaN
    loss instead of a silent ~1e9, so `keras.callbacks.TerminateOnNaN` stops `fit` and the
    logged loss shows it. Count such labels without stopping with
    `keras_mdn.metrics.OutOfDomainLabels`.

    Args:
        reduction: Defaults to `"sum_over_batch_size"`.
        name: Defaults to `"domain_crossentropy"`.
        dtype: loss dtype. Defaults to `None`.

    Example:

    >>> model.compile("sgd", loss=DomainCrossentropy(), metrics=[OutOfDomainLabels()])
    """

    def __init__(self, reduction="sum_over_batch_size", name="domain_crossentropy", dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype)

    def call(self, y_true, y_pred):
        y_pred = ops.convert_to_tensor(y_pred)
        bad = out_of_domain_labels(y_true, y_pred)
        labels = ops.where(bad, 0, ops.reshape(ops.cast(y_true, "int32"), (-1,)))
        loss = keras.losses.sparse_categorical_crossentropy(labels, y_pred, from_logits=True)
        return ops.where(bad, ops.cast(float("nan"), loss.dtype), loss)

    def get_config(self):
        return {"reduction": self.reduction, "name": self.name, "dtype": self.dtype}
