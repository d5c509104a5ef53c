"""Metrics for `DomainHead` logits."""

import keras
from keras import ops

from keras_mdn.api import register
from keras_mdn.layers.domain_head import out_of_domain_labels


@register
class OutOfDomainLabels(keras.metrics.Metric):
    """Counts the examples whose label is not a class of their domain (`DomainHead` logits).

    A label of another domain, or one >= `max(num_classes)` or < 0, points at a padded logit:
    `keras.losses.SparseCategoricalCrossentropy` then adds about 1e9 to the loss with no error.
    This metric reports how many such examples were seen (reset each epoch by `fit`); see also
    `keras_mdn.losses.DomainCrossentropy`, which makes their loss NaN.

    Args:
        name: Defaults to `"out_of_domain_labels"`.
        dtype: Defaults to `None`.
    """

    def __init__(self, name="out_of_domain_labels", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, y_true, y_pred, sample_weight=None):
        bad = ops.cast(out_of_domain_labels(y_true, ops.convert_to_tensor(y_pred)), "float32")
        if sample_weight is not None:
            bad = bad * ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
        self.count.assign_add(ops.cast(ops.sum(bad), self.count.dtype))

    def result(self):
        return ops.convert_to_tensor(self.count)

    def reset_state(self):
        self.count.assign(ops.zeros_like(self.count))
