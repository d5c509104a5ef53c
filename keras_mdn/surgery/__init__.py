"""Model surgery: adapters for existing models, new domains, compression, folding."""

from keras_mdn.surgery.fold import fold_domain  # noqa: F401
