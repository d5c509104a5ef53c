"""Factorisation kinds of a stacked multi-task weight, one per module, and their registry.

`get("tucker", rank=4)`, `get(TTMatrix(rank=8, input_modes=(8, 8, 16)))` or `get(config)`
return a fresh kind for one layer (a kind holds the weights of the layer that builds it).
"""

import keras

from keras_mdn.factorizations.base import Factorization
from keras_mdn.factorizations.laf import LAF
from keras_mdn.factorizations.tensor_train import TensorTrain
from keras_mdn.factorizations.tt_matrix import TTMatrix
from keras_mdn.factorizations.tucker import Tucker

KINDS = {kind.name: kind for kind in (LAF, Tucker, TensorTrain, TTMatrix)}


def get(identifier, rank=None):
    """A new factorisation from a name, an instance (copied) or a serialised config.

    Args:
        identifier: `"laf"`, `"tucker"`, `"tt"`, `"tt_matrix"`, a `Factorization` or a dict.
        rank: the rank for a kind given by name; an instance carries its own.
    """
    if isinstance(identifier, Factorization):
        if rank is not None and rank != identifier.rank:
            raise ValueError(
                "Pass `rank` either to the factorization instance or to the layer, not both. "
                f"Received: rank={rank!r} with factorization={identifier!r}"
            )
        return identifier.copy()
    if isinstance(identifier, dict):
        kind = keras.saving.deserialize_keras_object(identifier)
        return get(kind, rank)
    if isinstance(identifier, str) and identifier.lower() in KINDS:
        return KINDS[identifier.lower()](rank=rank)
    raise ValueError(
        f"Unknown factorization. Valid names: {sorted(KINDS)} (or a Factorization instance). "
        f"Received: factorization={identifier!r}"
    )


__all__ = ["KINDS", "LAF", "Factorization", "TTMatrix", "TensorTrain", "Tucker", "get"]
