import numpy as np
import pytest

from keras_mdn.datasets.image_ops import resize_images


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("size", [(16, 16), (32, 32), (11, 13), (8, 8)])
def test_upsampling_matches_tf_bilinear(size):
    import tensorflow as tf

    images = np.random.default_rng(0).random((3, 8, 8, 2)).astype(np.float32)
    expected = tf.image.resize(images, size, method="bilinear").numpy()
    np.testing.assert_allclose(resize_images(images, size), expected, atol=1e-6)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("size", [28, 32, 64])
def test_downsampling_matches_tf_antialiased_bilinear(size):
    import tensorflow as tf

    images = np.random.default_rng(1).random((2, 105, 105, 3)).astype(np.float32)
    expected = tf.image.resize(images, (size, size), antialias=True).numpy()
    np.testing.assert_allclose(resize_images(images, size), expected, atol=1e-5)


def test_constant_images_stay_constant():
    images = np.full((2, 7, 9, 1), 0.25, np.float32)
    np.testing.assert_allclose(resize_images(images, (20, 3)), 0.25, atol=1e-6)


def test_errors():
    with pytest.raises(ValueError, match="images.shape"):
        resize_images(np.zeros((8, 8)), 4)
    with pytest.raises(ValueError, match="size"):
        resize_images(np.zeros((1, 8, 8, 1)), 0)
