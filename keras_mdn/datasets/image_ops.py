"""NumPy image resizing for the in-memory loaders (no TensorFlow needed to load digits)."""

import numpy as np


def resize_images(images, size):
    """Resizes a batch of images `(N, H, W, C)` to `size = (height, width)`, bilinearly.

    Half-pixel centres and clamped edges, as `tf.image.resize(method="bilinear")`; when
    shrinking, the triangle filter is widened by the scale factor (antialiasing, as
    `antialias=True`), so thin strokes are averaged rather than skipped.
    """
    images = np.asarray(images, dtype=np.float32)
    if images.ndim != 4:
        raise ValueError(f"`images` must be (N, H, W, C). Received: images.shape={images.shape}")
    height, width = _check_size(size)
    if images.shape[1:3] == (height, width):
        return images.copy()
    rows = _resize_matrix(images.shape[1], height)
    columns = _resize_matrix(images.shape[2], width)
    planes = np.moveaxis(images, -1, 1)  # (N, C, H, W): two batched matrix products
    resized = rows.astype(np.float32) @ planes @ columns.T.astype(np.float32)
    return np.ascontiguousarray(np.moveaxis(resized, 1, -1))


def _check_size(size):
    if isinstance(size, (int, np.integer)):
        size = (int(size), int(size))
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"`size` must be a positive int or (height, width). Received: {size}")
    return size


def _resize_matrix(in_length, out_length):
    """(out_length, in_length) matrix of normalised triangle-filter weights."""
    scale = in_length / out_length
    radius = max(scale, 1.0)
    centres = (np.arange(out_length) + 0.5) * scale - 0.5
    offsets = np.arange(in_length)[None, :] - centres[:, None]
    weights = np.maximum(0.0, 1.0 - np.abs(offsets) / radius)
    # Up-sampling near the edges: clamp the sample point to the first / last pixel.
    empty = weights.sum(axis=1) == 0
    weights[empty, np.clip(np.rint(centres[empty]), 0, in_length - 1).astype(int)] = 1.0
    return weights / weights.sum(axis=1, keepdims=True)
