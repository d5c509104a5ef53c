import numpy as np
import pytest

from keras_mdn.datasets import DIGITS_DOMAINS, load_digits_domains


@pytest.fixture(scope="module")
def data():
    return load_digits_domains()


def test_domains_shapes_and_splits(data):
    assert data.names == DIGITS_DOMAINS == ("original", "inverted", "rotated", "mirrored", "parity")
    assert data.num_classes == (10, 10, 10, 10, 2)
    assert data.image_shape == (16, 16, 1)
    sizes = [data.num_examples(s, "original") for s in ("train", "validation", "test")]
    assert sum(sizes) == 1797
    assert sizes == [1077, 360, 360]
    for name in data.names:
        images, labels = data.arrays("train", name)
        assert images.dtype == np.float32 and labels.dtype == np.int32
        assert images.shape == (1077, 16, 16, 1)
        assert 0.0 <= images.min() and images.max() <= 1.0
        assert labels.min() == 0 and labels.max() == data.num_classes[data.domain_index(name)] - 1


def _source_digits(split_indices):
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (digits.images / 16.0)[split_indices], digits.target[split_indices]


def test_transforms_against_numpy_reference():
    data = load_digits_domains(image_size=None)  # 8x8: the transforms are exact
    original, labels = data.arrays("test", "original")
    x = original[..., 0]
    transformed = {
        "inverted": 1.0 - x,
        "rotated": np.rot90(x, 1, axes=(1, 2)),
        "mirrored": x[:, :, ::-1],
        "parity": np.rot90(x, 2, axes=(1, 2)),
    }
    for name, expected in transformed.items():
        images, domain_labels = data.arrays("test", name)
        np.testing.assert_allclose(images[..., 0], expected, atol=1e-7)
    np.testing.assert_array_equal(data.arrays("test", "parity")[1], labels % 2)
    np.testing.assert_array_equal(data.arrays("test", "rotated")[1], labels)
    # the images are the sklearn digits scaled to [0, 1]
    from sklearn.datasets import load_digits

    digits = load_digits()
    table = {(digits.images[i] / 16.0).astype(np.float32).tobytes(): digits.target[i]
             for i in range(len(digits.target))}
    for image, label in zip(original[:50], labels[:50], strict=True):
        assert table[image[..., 0].tobytes()] == label


def test_splits_are_disjoint_stratified_and_shared_by_domains():
    data = load_digits_domains(image_size=None)
    keys = {}
    for split in ("train", "validation", "test"):
        images, labels = data.arrays(split, "original")
        keys[split] = {im.tobytes() for im in images}
        counts = np.bincount(labels, minlength=10) / len(labels)
        np.testing.assert_allclose(counts, 0.1, atol=0.015)  # stratified
    # sklearn's digits contain a few exact duplicates; distinct splits share almost none
    assert len(keys["train"] & keys["test"]) <= 2
    assert len(keys["train"] & keys["validation"]) <= 2
    # the same digits are test digits in every domain
    test_inverted = {(1.0 - im).astype(np.float32).tobytes()
                     for im in data.arrays("test", "inverted")[0]}
    assert test_inverted == keys["test"]


def test_deterministic_and_seed_changes_split():
    a = load_digits_domains(domains=["original"])
    b = load_digits_domains(domains=["original"])
    c = load_digits_domains(domains=["original"], seed=1)
    np.testing.assert_array_equal(a.arrays("train", 0)[0], b.arrays("train", 0)[0])
    assert not np.array_equal(a.arrays("train", 0)[1], c.arrays("train", 0)[1])


def test_options():
    data = load_digits_domains(image_size=32, channels=3, domains=["parity", "original"])
    assert data.names == ("parity", "original")
    assert data.num_classes == (2, 10)
    images, _ = data.arrays("validation", "parity")
    assert images.shape == (360, 32, 32, 3)
    np.testing.assert_array_equal(images[..., 0], images[..., 2])


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(channels=2), "channels=2"),
        (dict(domains=["upside_down"]), "upside_down"),
        (dict(test_fraction=0.0), "test_fraction=0.0"),
        (dict(validation_fraction=0.5, test_fraction=0.5), "leave training"),
    ],
)
def test_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_digits_domains(**kwargs)


@pytest.mark.tensorflow_only
def test_pipeline(data):
    dataset = data.dataset("test", batch_size=100)
    seen = 0
    for inputs, labels in dataset:
        assert inputs["image"].shape[1:] == (16, 16, 1)
        domains = inputs["domain"].numpy()
        assert len(set(domains.tolist())) == 1
        assert labels.numpy().max() < data.num_classes[domains[0]]
        seen += len(labels)
    assert seen == 5 * 360
