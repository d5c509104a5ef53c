"""The Visual Decathlon score (Rebuffi, Bilen, Vedaldi, 2017).

The score rewards doing well on every domain at once, relative to a baseline:

    S = sum_d a_d * max(0, Emax_d - E_d) ** 2,  Emax_d = 2 * baseline_error_d,
    a_d = 1000 / Emax_d ** 2

`E_d` is the test error of domain d. A perfect domain scores 1000, matching the baseline scores
250, and twice the baseline error or worse scores 0, so the baseline itself scores 250 per
domain (2500 for the ten decathlon tasks).

`decathlon_score` is plain Python and NumPy; `domain_accuracies` runs a Keras model on every
backend (through NumPy arrays for in-memory data, tf.data otherwise).
"""

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import numpy as np

# Test accuracies of ResNet-26 fine-tuned separately on each domain, the decathlon's reference
# baseline (Rebuffi et al. 2017, Table 1 / 2018, Table 2). Keys are the TFDS config names of
# `visual_domain_decathlon/<task>`.
DECATHLON_BASELINE_ACCURACIES = {
    "imagenet12": 0.5987,
    "aircraft": 0.6034,
    "cifar100": 0.8212,
    "daimlerpedcls": 0.9282,
    "dtd": 0.5553,
    "gtsrb": 0.9753,
    "vgg-flowers": 0.8141,
    "omniglot": 0.8769,
    "svhn": 0.9655,
    "ucf101": 0.5120,
}

_PER_DOMAIN_MAXIMUM = 1000.0


class DecathlonScore(NamedTuple):
    """Result of `decathlon_score`: unpacks as `total, per_domain = decathlon_score(...)`.

    Attributes:
        total: the summed score (float).
        per_domain: dict mapping each domain key (name, or index for sequences) to its score.
    """

    total: float
    per_domain: dict


def decathlon_score(accuracies, baseline=None, *, metric="accuracy"):
    """Computes the Visual Decathlon score of per-domain test results against a baseline.

    `S = sum_d a_d * max(0, Emax_d - E_d) ** 2` with `E_d` the test error of domain d,
    `Emax_d = 2 * (baseline error of d)` and `a_d = 1000 / Emax_d ** 2`: a perfect domain
    scores 1000, the baseline 250, twice the baseline error or worse 0.

    Args:
        accuracies: per-domain test results as fractions in [0, 1] (not percentages), either a
            mapping from domain name to value or a sequence in a fixed domain order.
        baseline: the baseline's results on the same domains, in the same form (a mapping with
            the same keys, or a sequence of the same length). Defaults to
            `DECATHLON_BASELINE_ACCURACIES`, the paper's ResNet-26 fine-tuned per domain; then
            `accuracies` must be a mapping over exactly the ten decathlon tasks (to score a
            subset, pass `{k: DECATHLON_BASELINE_ACCURACIES[k] for k in accuracies}`).
        metric: `"accuracy"` (default) when both arguments hold accuracies, `"error"` when
            both hold error rates (1 - accuracy).

    Returns:
        A `DecathlonScore(total, per_domain)`; `per_domain` is keyed by the mapping's keys, or
        by position (0, 1, ...) for sequences.

    Example:

    >>> total, per_domain = decathlon_score({"a": 0.9, "b": 0.5}, {"a": 0.9, "b": 0.75})
    >>> round(total, 6), per_domain["b"]
    (250.0, 0.0)

    Reference:
        Rebuffi, Bilen, Vedaldi, "Learning multiple visual domains with residual adapters",
        NeurIPS 2017; "Efficient parametrization of multi-domain deep neural networks",
        CVPR 2018.
    """
    if metric not in ("accuracy", "error"):
        raise ValueError(f"`metric` must be 'accuracy' or 'error'. Received: metric={metric!r}")
    if baseline is None:
        if not isinstance(accuracies, Mapping):
            raise TypeError(
                "With the default decathlon baseline, `accuracies` must be a mapping keyed by "
                "the TFDS task names "
                f"{sorted(DECATHLON_BASELINE_ACCURACIES)}. "
                f"Received: accuracies of type {type(accuracies).__name__}"
            )
        if metric == "error":
            baseline = {k: 1.0 - v for k, v in DECATHLON_BASELINE_ACCURACIES.items()}
        else:
            baseline = DECATHLON_BASELINE_ACCURACIES
    keys, values, base_values = _align(accuracies, baseline)
    values = _check_fractions(values, keys, "accuracies")
    base_values = _check_fractions(base_values, keys, "baseline")
    if metric == "accuracy":
        errors, base_errors = 1.0 - values, 1.0 - base_values
    else:
        errors, base_errors = values, base_values
    per_domain = {}
    for key, error, base_error in zip(keys, errors, base_errors, strict=True):
        if base_error <= 0.0:
            raise ValueError(
                "The decathlon score is undefined for a baseline with zero error (the maximum "
                f"error 2 * baseline error is 0). Received: baseline[{key!r}] with error "
                f"{base_error}"
            )
        # a_d (Emax_d - E_d)^2 written as 1000 (1 - E_d / Emax_d)^2: the same value, but a
        # perfect domain gives exactly 1000 and the baseline exactly 250 in floating point.
        max_error = 2.0 * base_error
        per_domain[key] = float(_PER_DOMAIN_MAXIMUM * max(0.0, 1.0 - error / max_error) ** 2)
    return DecathlonScore(total=math.fsum(per_domain.values()), per_domain=per_domain)


def _align(accuracies, baseline):
    """Returns (keys, values, baseline values) in one order, checking that the domains match."""
    if isinstance(accuracies, Mapping) != isinstance(baseline, Mapping):
        raise TypeError(
            "`accuracies` and `baseline` must both be mappings or both be sequences. "
            f"Received: accuracies of type {type(accuracies).__name__}, baseline of type "
            f"{type(baseline).__name__}"
        )
    if isinstance(accuracies, Mapping):
        if set(accuracies) != set(baseline):
            missing = sorted(map(str, set(baseline) - set(accuracies)))
            extra = sorted(map(str, set(accuracies) - set(baseline)))
            raise ValueError(
                "`accuracies` and `baseline` must cover the same domains. "
                f"Missing from accuracies: {missing}; not in baseline: {extra}"
            )
        keys = list(accuracies)
        return keys, [accuracies[k] for k in keys], [baseline[k] for k in keys]
    accuracies, baseline = _as_list(accuracies, "accuracies"), _as_list(baseline, "baseline")
    if len(accuracies) != len(baseline):
        raise ValueError(
            "`accuracies` and `baseline` must have one entry per domain, the same number. "
            f"Received: len(accuracies)={len(accuracies)}, len(baseline)={len(baseline)}"
        )
    if not accuracies:
        raise ValueError("`accuracies` is empty: pass at least one domain. Received: []")
    return list(range(len(accuracies))), accuracies, baseline


def _as_list(values, name):
    if isinstance(values, np.ndarray):
        if values.ndim != 1:
            raise ValueError(f"`{name}` must be 1-D. Received: {name} with shape={values.shape}")
        return values.tolist()
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise TypeError(
            f"`{name}` must be a mapping or a sequence of numbers. Received: {name}={values!r}"
        )
    return list(values)


def _check_fractions(values, keys, name):
    checked = []
    for key, value in zip(keys, values, strict=True):
        try:
            value = float(value)
        except (TypeError, ValueError):
            raise TypeError(
                f"`{name}` must hold numbers. Received: {name}[{key!r}]={value!r}"
            ) from None
        if not 0.0 <= value <= 1.0:  # also rejects NaN
            hint = " (a percentage? divide by 100)" if 1.0 < value <= 100.0 else ""
            raise ValueError(
                f"`{name}` must be fractions in [0, 1]{hint}. Received: {name}[{key!r}]={value}"
            )
        checked.append(value)
    return np.asarray(checked, dtype=np.float64)


def domain_accuracies(model, data, split="test", batch_size=256, domains=None):
    """Top-1 accuracy of a multi-domain classifier on each domain of a `MultiDomainData`.

    The model takes `{"image": images, "domain": domain_ids}` and returns logits of shape
    `(batch, C)` with `C >= num_classes[d]`; for domain d only its first `num_classes[d]`
    logits compete (the layout of `keras_mdn.DomainHead`), so a padded head never predicts a
    class the domain lacks. A model without a `"domain"` input (a one-domain network, e.g.
    `keras_mdn.models.plain_resnet26`) gets the images alone. The result feeds
    `decathlon_score`.

    Args:
        model: a Keras model with inputs "image" and "domain", or one image input.
        data: a `keras_mdn.datasets.MultiDomainData`.
        split: the split to evaluate. Defaults to "test".
        batch_size: examples per forward pass; the last batch of a domain is padded to it,
            so the model's predict function is traced once. Defaults to 256.
        domains: names or ids of the domains to evaluate. Defaults to all.

    Returns:
        Dict mapping each domain name to its accuracy, a fraction in [0, 1].
    """
    if domains is None:
        ids = range(data.num_domains)
    else:
        ids = [data.domain_index(d) for d in ([domains] if isinstance(domains, str) else domains)]
    takes_domain = "domain" in {getattr(t, "name", None) for t in model.inputs or ()}
    accuracies = {}
    for d in ids:
        classes = data.num_classes[d]
        correct = total = 0
        for inputs, labels, count in data.evaluation_batches(split, d, batch_size):
            if not takes_domain:
                inputs = inputs["image"]
            logits = np.asarray(model.predict_on_batch(inputs))[:count]
            if logits.ndim != 2 or logits.shape[1] < classes:
                raise ValueError(
                    f"The model must return logits of shape (batch, >= {classes}) for domain "
                    f"{data.names[d]!r}. Received: shape={logits.shape}"
                )
            predictions = np.argmax(logits[:, :classes], axis=1)
            correct += int(np.sum(predictions == np.asarray(labels)))
            total += count
        if total == 0:
            raise ValueError(f"Domain {data.names[d]!r} has no examples in split {split!r}")
        accuracies[data.names[d]] = correct / total
    return accuracies
