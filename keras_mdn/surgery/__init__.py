"""Model surgery: adapters for existing models, new domains, compression, folding, baselines.

`import keras_mdn.surgery` (not imported by `import keras_mdn`). Every function returns a new
model and leaves the model passed in unchanged.
"""

from keras_mdn.surgery.adapters import add_adapters, select_layers
from keras_mdn.surgery.baselines import batch_norms_only, frozen_features
from keras_mdn.surgery.compression import compress_adapters
from keras_mdn.surgery.domains import ClosestDomain, add_domain, add_domains, closest_domain
from keras_mdn.surgery.fold import fold_domain
from keras_mdn.surgery.freezing import FrozenEntries, train_only_domains
from keras_mdn.surgery.graph import FunctionalGraph, call_with_domain
from keras_mdn.surgery.transfer import transfer_weights

__all__ = [
    "ClosestDomain",
    "FrozenEntries",
    "FunctionalGraph",
    "add_adapters",
    "add_domain",
    "add_domains",
    "batch_norms_only",
    "call_with_domain",
    "closest_domain",
    "compress_adapters",
    "fold_domain",
    "frozen_features",
    "select_layers",
    "train_only_domains",
    "transfer_weights",
]
