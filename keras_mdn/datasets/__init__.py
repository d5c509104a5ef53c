"""Multi-domain image data as tf.data pipelines.

Every loader returns a `MultiDomainData`, whose `dataset(split, ...)` yields
`({"image": images, "domain": domain_ids}, labels)` batches for a functional multi-domain model.

- `load_digits_domains`: scikit-learn's 8x8 digits as five transformed domains (embedded, no
  download; the default data of the examples).
- `load_omniglot_domains`: Omniglot alphabets from the official zip files;
  `load_omniglot_domains_tfds` reads them through TFDS.
- `load_decathlon_domains`: the Visual Decathlon through TFDS, preprocessed as the paper.

The pipelines need TensorFlow (tf.data); the in-memory loaders also give NumPy arrays
(`MultiDomainData.arrays`, `as_numpy`) for any backend.
"""

from keras_mdn.datasets.decathlon import DECATHLON_TASKS, load_decathlon_domains
from keras_mdn.datasets.digits import DIGITS_DOMAINS, load_digits_domains
from keras_mdn.datasets.multi_domain_data import MultiDomainData
from keras_mdn.datasets.omniglot import (
    OMNIGLOT_FILES,
    load_omniglot_domains,
    load_omniglot_domains_tfds,
)

__all__ = [
    "DECATHLON_TASKS",
    "DIGITS_DOMAINS",
    "OMNIGLOT_FILES",
    "MultiDomainData",
    "load_decathlon_domains",
    "load_digits_domains",
    "load_omniglot_domains",
    "load_omniglot_domains_tfds",
]
