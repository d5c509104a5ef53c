"""The package's registration decorator: every public class is serialisable under `keras_mdn`."""

import keras

PACKAGE = "keras_mdn"


def register(cls):
    """Registers `cls` for `.keras` saving under the package name `keras_mdn`."""
    return keras.saving.register_keras_serializable(package=PACKAGE)(cls)
