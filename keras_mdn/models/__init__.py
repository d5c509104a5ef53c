"""Multi-domain model builders (`import keras_mdn.models`)."""

from keras_mdn.models.resnet26 import resnet26

__all__ = ["resnet26"]
