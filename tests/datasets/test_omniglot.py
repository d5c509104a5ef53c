import io
import os
import shutil
import zipfile

import numpy as np
import pytest

from keras_mdn.datasets import load_omniglot_domains, load_omniglot_domains_tfds
from tests.helpers import SHARED_DATA, requires_shared_data

SMALL1 = SHARED_DATA / "omniglot" / "images_background_small1.zip"
SMALL1_ALPHABETS = ("Balinese", "Early_Aramaic", "Greek", "Korean", "Latin")


def _png(character, drawer):
    """A 105x105 1-bit Omniglot-like image: white, with black marks encoding its identity."""
    from PIL import Image

    pixels = np.ones((105, 105), bool)
    pixels[character, :drawer] = False  # row = character, stroke length = drawer
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _synthetic_zip(path, alphabets=(("Alpha", 3), ("Beta", 2)), drawers=20):
    with zipfile.ZipFile(path, "w") as archive:
        for alphabet, characters in alphabets:
            for c in range(1, characters + 1):
                for d in range(1, drawers + 1):
                    name = f"images_test/{alphabet}/character{c:02d}/{c:04d}_{d:02d}.png"
                    archive.writestr(name, _png(c, d))
    return path


def test_synthetic_zip_split_by_drawer(tmp_path):
    path = _synthetic_zip(tmp_path / "my_omniglot.zip")
    data = load_omniglot_domains(path, image_size=None)
    assert data.names == ("Alpha", "Beta")
    assert data.num_classes == (3, 2)
    assert data.image_shape == (105, 105, 1)
    expected_drawers = {"train": range(1, 13), "validation": range(13, 17), "test": range(17, 21)}
    for split, drawers in expected_drawers.items():
        images, labels = data.arrays(split, "Alpha")
        assert len(images) == 3 * len(drawers)
        for image, label in zip(images, labels, strict=True):
            ink = image[..., 0]
            assert set(np.unique(ink)) <= {0.0, 1.0}  # ink is 1 on a 0 background
            row = int(np.flatnonzero(ink.any(axis=1))[0])
            assert row == label + 1  # character01 -> label 0
            assert int(ink[row].sum()) in drawers  # the drawer number is the stroke length


def test_synthetic_zip_resized_and_three_channels(tmp_path):
    path = _synthetic_zip(tmp_path / "x.zip", alphabets=(("Alpha", 2),))
    data = load_omniglot_domains(path, image_size=32, channels=3)
    images, labels = data.arrays("train", 0)
    assert images.shape == (24, 32, 32, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    np.testing.assert_array_equal(images[..., 0], images[..., 1])
    np.testing.assert_array_equal(np.bincount(labels), [12, 12])


@requires_shared_data
def test_small1_zip():
    data = load_omniglot_domains(SMALL1)
    assert data.names == SMALL1_ALPHABETS
    assert sum(data.num_classes) == 136
    assert data.image_shape == (28, 28, 1)
    total = 0
    for d, name in enumerate(data.names):
        for split, per_character in (("train", 12), ("validation", 4), ("test", 4)):
            images, labels = data.arrays(split, name)
            assert images.dtype == np.float32 and labels.dtype == np.int32
            np.testing.assert_array_equal(
                np.bincount(labels, minlength=data.num_classes[d]), per_character
            )
            total += len(labels)
        train = data.arrays("train", name)[0]
        assert 0.0 <= train.min() and train.max() <= 1.0
        assert 0.02 < train.mean() < 0.3  # ink on an empty background, not inverted
    assert total == 2720
    assert data.num_examples("train") == 136 * 12


@requires_shared_data
def test_small1_split_images_are_distinct_and_cached(tmp_path):
    first = load_omniglot_domains(SMALL1.parent, alphabets=["Greek", "Latin"], image_size=None)
    assert first.names == ("Greek", "Latin")
    train = {im.tobytes() for im in first.arrays("train", "Greek")[0]}
    test = {im.tobytes() for im in first.arrays("test", "Greek")[0]}
    assert not train & test
    again = load_omniglot_domains(str(SMALL1), alphabets=["Greek"], image_size=None)
    np.testing.assert_array_equal(again.arrays("test", 0)[0], first.arrays("test", 0)[0])


@requires_shared_data
def test_checksum_mismatch_and_truncation(tmp_path):
    truncated = tmp_path / "images_background_small1.zip"
    truncated.write_bytes(SMALL1.read_bytes()[:500_000])
    with pytest.raises(ValueError, match="does not match the official images_background_small1"):
        load_omniglot_domains(truncated)
    renamed = tmp_path / "omniglot_copy.zip"  # unknown name: no checksum, the zip is checked
    shutil.copy(truncated, renamed)
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_omniglot_domains(renamed)


def test_missing_file_names_path_and_source(tmp_path):
    missing = tmp_path / "images_background.zip"
    with pytest.raises(FileNotFoundError, match="images_background.zip") as info:
        load_omniglot_domains(missing)
    assert str(missing) in str(info.value)
    assert "github.com/brendenlake/omniglot/raw/master/python/images_background.zip" in str(
        info.value
    )
    with pytest.raises(FileNotFoundError, match="images_evaluation.zip"):
        load_omniglot_domains(tmp_path, subset="evaluation")


def test_other_errors(tmp_path):
    garbage = tmp_path / "garbage.zip"
    garbage.write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="not a readable zip"):
        load_omniglot_domains(garbage)
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as archive:
        archive.writestr("readme.txt", "nothing")
    with pytest.raises(ValueError, match="holds no Omniglot images"):
        load_omniglot_domains(empty)
    path = _synthetic_zip(tmp_path / "x.zip", alphabets=(("Alpha", 1),))
    with pytest.raises(ValueError, match="Klingon"):
        load_omniglot_domains(path, alphabets=["Klingon"])
    with pytest.raises(ValueError, match="subset='tiny'"):
        load_omniglot_domains(tmp_path, subset="tiny")
    with pytest.raises(ValueError, match="more than one file"):
        load_omniglot_domains([path, path])
    with pytest.raises(ValueError, match="channels=2"):
        load_omniglot_domains(path, channels=2)
    assert os.path.exists(path)


def _mock_omniglot(alphabets=(3, 4), characters=2, drawings=20):
    """as_dataset_fn for tfds.testing.mock_data: a small, consistent omniglot split."""
    import tensorflow as tf

    images, alphabet_ids, char_ids, labels = [], [], [], []
    for a, alphabet in enumerate(alphabets):
        for c in range(characters):
            for k in range(drawings):
                image = np.full((105, 105, 3), 255, np.uint8)
                image[: 30 * (c + 1), : 60 + k] = 0  # ink height encodes the character
                images.append(image)
                alphabet_ids.append(alphabet)
                char_ids.append(7 + 3 * c)  # TFDS ids need not start at 0
                labels.append(100 * a + c)

    def as_dataset(self, split, **kwargs):
        return tf.data.Dataset.from_tensor_slices(
            {
                "image": np.stack(images),
                "alphabet": np.asarray(alphabet_ids, np.int64),
                "alphabet_char_id": np.asarray(char_ids, np.int64),
                "label": np.asarray(labels, np.int64),
            }
        )

    return as_dataset


@pytest.mark.tensorflow_only
def test_tfds_path_with_mock_data():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(as_dataset_fn=_mock_omniglot()):
        data = load_omniglot_domains_tfds(split="small1", image_size=20)
        again = load_omniglot_domains_tfds(split="small1", image_size=20)
    assert data.num_domains == 2
    assert data.num_classes == (2, 2)
    assert data.image_shape == (20, 20, 1)
    for name in data.names:
        for split, per_character in (("train", 12), ("validation", 4), ("test", 4)):
            images, labels = data.arrays(split, name)
            np.testing.assert_array_equal(np.bincount(labels), [per_character] * 2)
            assert 0.0 <= images.min() and images.max() <= 1.0
            # ink (inverted) rows encode the character: label 1 has twice the ink rows
            ink_rows = (images[..., 0] > 0.5).any(axis=2).sum(axis=1)
            np.testing.assert_array_equal(ink_rows > 8, labels == 1)
        np.testing.assert_array_equal(data.arrays("train", name)[0], again.arrays("train", name)[0])
    train = {im.tobytes() for im in data.arrays("train", 0)[0]}
    assert not train & {im.tobytes() for im in data.arrays("test", 0)[0]}
    batches = list(data.dataset("train", batch_size=8))
    assert all(len(set(x["domain"].numpy().tolist())) == 1 for x, _ in batches)


def test_checksums_match_tfds_url_checksums():
    import importlib.util
    from pathlib import Path

    from keras_mdn.datasets import OMNIGLOT_FILES

    spec = importlib.util.find_spec("tensorflow_datasets")
    if spec is None:
        pytest.skip("tensorflow_datasets is not installed")
    table = Path(spec.origin).parent / "url_checksums" / "omniglot.txt"
    rows = {}
    for line in table.read_text().splitlines():
        if line.strip():
            url, size, digest, name = line.split("\t")
            rows[name] = (int(size), digest)
    assert {name: (size, digest) for name, size, digest in OMNIGLOT_FILES.values()} == rows


@requires_shared_data
def test_small1_checksum_matches_shared_sha256sums():
    from keras_mdn.datasets import OMNIGLOT_FILES

    digest, name = (SMALL1.parent / "SHA256SUMS").read_text().split()
    assert name == SMALL1.name
    assert OMNIGLOT_FILES["small1"][2] == digest
