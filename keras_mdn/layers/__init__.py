"""Keras layers of keras_mdn, one public layer per module."""

__all__ = []
