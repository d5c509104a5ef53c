"""keras_mdn: multi-domain and multi-task networks for Keras 3.

One network, many domains: almost all weights are shared and each domain owns a small set of
parameters. Importing `keras_mdn` loads only Keras and NumPy; the TensorFlow-only parts
(`keras_mdn.export`, `keras_mdn.datasets`, the TT kinds that use t3f) and the tuning module
are imported where they are used.
"""

from keras_mdn import layers, ops  # noqa: F401
from keras_mdn.layers import *  # noqa: F401,F403
from keras_mdn.scoring import decathlon_score, domain_accuracies  # noqa: F401

__version__ = "0.1.0"
