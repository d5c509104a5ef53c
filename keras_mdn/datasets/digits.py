"""The embedded default: scikit-learn's 8x8 handwritten digits seen as five visual domains."""

import numpy as np

from keras_mdn.datasets.image_ops import resize_images
from keras_mdn.datasets.multi_domain_data import (
    ArraySource,
    MultiDomainData,
    check_domain_selection,
)

# name -> (transform of the (N, 8, 8) images in [0, 1], labels from digits, number of classes)
_DOMAINS = {
    "original": (lambda x: x, lambda y: y, 10),
    "inverted": (lambda x: 1.0 - x, lambda y: y, 10),
    "rotated": (lambda x: np.rot90(x, k=1, axes=(1, 2)), lambda y: y, 10),
    "mirrored": (lambda x: x[:, :, ::-1], lambda y: y, 10),
    "parity": (lambda x: np.rot90(x, k=2, axes=(1, 2)), lambda y: y % 2, 2),
}
DIGITS_DOMAINS = tuple(_DOMAINS)


def load_digits_domains(
    image_size=16,
    channels=1,
    domains=None,
    validation_fraction=0.2,
    test_fraction=0.2,
    seed=0,
):
    """Loads scikit-learn's handwritten digits as five visual domains (no download).

    The 1,797 8x8 digit images of `sklearn.datasets.load_digits` (intensities 0..16, scaled to
    [0, 1]) are turned into domains by fixed transforms:

    - `"original"`: the digits as they are (white strokes on black); 10 classes.
    - `"inverted"`: intensity inverted, `1 - x` (black strokes on white); 10 classes.
    - `"rotated"`: rotated by 90 degrees counter-clockwise; 10 classes.
    - `"mirrored"`: mirrored left-right; 10 classes.
    - `"parity"`: rotated by 180 degrees, labelled by parity (0: even, 1: odd); 2 classes.
      A different label space, so heads with different class counts are exercised.

    Every domain uses the same train/validation/test partition of the 1,797 digits
    (stratified by digit, fixed `seed`), so a test digit is never seen, in any domain, while
    training. Sizes with the defaults: 1,077 / 360 / 360 per domain.

    The default `image_size=16` is the 8x8 source up-sampled 2x (bilinear): the reference
    ResNet-26 halves the resolution three times, which leaves a 2x2 map at 16 (1x1 at 8), and
    16x16 costs a quarter of 32x32 while 32 would add no information to 8x8 sources.

    Args:
        image_size: side of the square images; `None` keeps 8x8. Defaults to 16.
        channels: 1 (default) or 3 (the grey image repeated, for RGB networks).
        domains: names of the domains to load, in this order. Defaults to all five.
        validation_fraction: fraction of the digits held out for validation. Defaults to 0.2.
        test_fraction: fraction of the digits held out for testing. Defaults to 0.2.
        seed: seed of the stratified split. Defaults to 0.

    Returns:
        A `MultiDomainData` held in memory (`arrays()` and `as_numpy()` give the float32
        images in [0, 1], NHWC).

    Example:

    >>> data = load_digits_domains()
    >>> data.names
    ('original', 'inverted', 'rotated', 'mirrored', 'parity')
    >>> data.num_classes
    (10, 10, 10, 10, 2)
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    names = check_domain_selection(domains, DIGITS_DOMAINS, "domains")
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels!r}")
    for name, value in (("validation_fraction", validation_fraction),
                        ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"`{name}` must be in (0, 1). Received: {name}={value}")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError(
            "`validation_fraction + test_fraction` must leave training examples. Received: "
            f"validation_fraction={validation_fraction}, test_fraction={test_fraction}"
        )
    digits = load_digits()
    images = (digits.images / 16.0).astype(np.float32)
    labels = digits.target.astype(np.int32)

    indices = np.arange(len(labels))
    train_val, test = train_test_split(
        indices, test_size=test_fraction, stratify=labels, random_state=seed
    )
    train, validation = train_test_split(
        train_val,
        test_size=validation_fraction / (1.0 - test_fraction),
        stratify=labels[train_val],
        random_state=seed,
    )
    partition = {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}

    sources, num_classes = [], []
    for name in names:
        transform, relabel, classes = _DOMAINS[name]
        domain_images = np.ascontiguousarray(transform(images))[..., None]
        if image_size is not None:
            domain_images = resize_images(domain_images, image_size)
        if channels == 3:
            domain_images = np.repeat(domain_images, 3, axis=-1)
        domain_images = np.clip(domain_images, 0.0, 1.0)
        domain_labels = relabel(labels).astype(np.int32)
        sources.append(
            ArraySource({s: (domain_images[i], domain_labels[i]) for s, i in partition.items()})
        )
        num_classes.append(classes)
    return MultiDomainData(
        names,
        num_classes,
        sources[0].arrays["train"][0].shape[1:],
        sources,
        description="scikit-learn digits, 5 transformed domains",
    )
