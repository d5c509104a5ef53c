"""Multi-domain model builders (`import keras_mdn.models`)."""

from keras_mdn.models.resnet26 import plain_resnet26, resnet26

__all__ = ["plain_resnet26", "resnet26"]
