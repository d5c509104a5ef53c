import numpy as np
import pytest

from keras_mdn.datasets import DECATHLON_TASKS, load_decathlon_domains
from keras_mdn.datasets.image_ops import resize_images

pytestmark = pytest.mark.tensorflow_only

NUM_CLASSES = {
    "imagenet12": 1000, "aircraft": 100, "cifar100": 100, "daimlerpedcls": 2, "dtd": 47,
    "gtsrb": 43, "vgg-flowers": 102, "omniglot": 1623, "svhn": 10, "ucf101": 101,
}


def _mock(images, labels):
    """as_dataset_fn serving fixed images (every split gets the same examples)."""
    import tensorflow as tf

    def as_dataset(self, split, **kwargs):
        return tf.data.Dataset.from_tensor_slices(
            {
                "image": np.stack(images),
                "label": np.asarray(labels, np.int64),
                "name": np.asarray([f"{i}.jpg" for i in range(len(labels))]),
            }
        )

    return as_dataset


def _images(n, height, width, seed=0):
    return list(np.random.default_rng(seed).integers(0, 256, (n, height, width, 3), np.uint8))


def test_all_tasks_metadata_from_the_builders():
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=2):
        data = load_decathlon_domains(normalization=None)
    assert data.names == DECATHLON_TASKS
    assert data.num_classes == tuple(NUM_CLASSES[t] for t in DECATHLON_TASKS)
    assert data.image_shape == (64, 64, 3)
    assert not data.in_memory


def test_pipelines_with_random_mock_data():
    import tensorflow_datasets as tfds

    tasks = ["daimlerpedcls", "svhn"]
    with tfds.testing.mock_data(num_examples=3):  # random image sizes, random labels
        data = load_decathlon_domains(tasks=tasks, normalization_samples=2)
        for batching in ("per_domain", "mixed"):
            seen = set()
            for inputs, labels in data.dataset("train", batch_size=2, batching=batching):
                images, domains = inputs["image"].numpy(), inputs["domain"].numpy()
                assert images.shape[1:] == (64, 64, 3) and images.dtype == np.float32
                assert domains.dtype == np.int32 and labels.dtype.name == "int32"
                assert np.all(np.isfinite(images))
                if batching == "per_domain":
                    assert len(set(domains.tolist())) == 1
                for d, y in zip(domains, labels.numpy(), strict=True):
                    assert 0 <= y < NUM_CLASSES[tasks[d]]
                seen.update(domains.tolist())
            assert seen == {0, 1}


def test_evaluation_preprocessing_against_numpy_reference():
    import tensorflow_datasets as tfds

    images = _images(4, 144, 192)  # shorter side 144 -> 72: a 2x antialiased shrink to 72x96
    with tfds.testing.mock_data(as_dataset_fn=_mock(images, [0, 1, 2, 3])):
        data = load_decathlon_domains(tasks=["dtd"], normalization=None)
        batches = list(data.dataset("test", batch_size=4))
    assert len(batches) == 1
    inputs, labels = batches[0]
    resized = resize_images(np.stack(images).astype(np.float32), (72, 96))
    prepared = np.round(np.clip(resized, 0, 255))[:, :, 12:84]  # centre 72x72
    expected = prepared[:, 4:68, 4:68] / 255.0  # centre 64x64
    np.testing.assert_allclose(inputs["image"].numpy(), expected, atol=1.0 / 255 + 1e-6)
    np.testing.assert_array_equal(labels.numpy(), [0, 1, 2, 3])
    np.testing.assert_array_equal(inputs["domain"].numpy(), [0, 0, 0, 0])


def _windows(prepared):
    """All 64x64 windows of a 72x72 image, and their mirror images."""
    windows = {}
    for r in range(9):
        for c in range(9):
            window = prepared[r : r + 64, c : c + 64]
            windows[window.tobytes()] = False
            windows[window[:, ::-1].copy().tobytes()] = True
    return windows


@pytest.mark.parametrize("task, flips", [("aircraft", True), ("svhn", False)])
def test_training_crops_and_flips(task, flips):
    import tensorflow_datasets as tfds

    image = _images(1, 72, 72, seed=3)
    with tfds.testing.mock_data(as_dataset_fn=_mock(image * 16, [0] * 16)):
        data = load_decathlon_domains(tasks=[task], normalization=None)
        out = next(iter(data.dataset("train", batch_size=16, seed=1)))[0]["image"].numpy()
    windows = _windows(image[0].astype(np.float32) / 255.0)
    flipped = [windows[np.float32(o).tobytes()] for o in out]  # KeyError: not a 64x64 window
    assert any(flipped) == flips
    assert len({o.tobytes() for o in out}) > 4  # the crops differ


def test_per_domain_normalization_matches_numpy():
    import tensorflow_datasets as tfds

    images = _images(6, 72, 80, seed=5)
    with tfds.testing.mock_data(as_dataset_fn=_mock(images, list(range(6)))):
        data = load_decathlon_domains(tasks=["cifar100"])
        out = next(iter(data.dataset("test", batch_size=6)))[0]["image"].numpy()
        fixed = load_decathlon_domains(
            tasks=["cifar100"], normalization={"cifar100": ([0.5] * 3, [0.25] * 3)}
        )
        out_fixed = next(iter(fixed.dataset("test", batch_size=6)))[0]["image"].numpy()
    prepared = np.stack(images)[:, :, 4:76].astype(np.float64) / 255.0  # 72x80 -> centre 72
    mean = prepared.reshape(-1, 3).mean(axis=0)
    std = prepared.reshape(-1, 3).std(axis=0)
    crop = prepared[:, 4:68, 4:68]
    np.testing.assert_allclose(out, (crop - mean) / std, atol=1e-4)
    np.testing.assert_allclose(out_fixed, (crop - 0.5) / 0.25, atol=1e-4)


def test_splits_determinism_and_validation_from_train():
    import tensorflow_datasets as tfds

    images = _images(10, 72, 72, seed=7)
    with tfds.testing.mock_data(as_dataset_fn=_mock(images, list(range(10)))):
        data = load_decathlon_domains(tasks=["gtsrb", "ucf101"], normalization=None)
        assert data.sizes("train") == {"gtsrb": 10, "ucf101": 10}
        assert data.sizes("test") == data.sizes("validation")

        def run(seed):
            batches = data.dataset("train", batch_size=3, seed=seed, batching="mixed")
            return [
                (x["domain"].numpy().tolist(), y.numpy().tolist(), x["image"].numpy().sum())
                for x, y in batches
            ]

        assert run(0) == run(0)
        assert run(0) != run(1)
        held = load_decathlon_domains(tasks=["dtd"], normalization=None, validation_from_train=0.3)
        assert held.sizes("train") == {"dtd": 7}
        assert held.sizes("validation") == {"dtd": 3}
        assert held.sizes("test") == {"dtd": 10}


def test_unprepared_dataset_error(tmp_path):
    with pytest.raises(RuntimeError, match="download=True"):
        load_decathlon_domains(tasks=["dtd"], data_dir=str(tmp_path))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tasks=["mnist"]), "mnist"),
        (dict(image_size=80), "image_size=80"),
        (dict(validation_from_train=1.0), "validation_from_train=1.0"),
        (dict(normalization="global"), "normalization='global'"),
    ],
)
def test_argument_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_decathlon_domains(**kwargs)


@pytest.mark.parametrize("in_memory", [True, False])
def test_cache_serves_every_epoch(tmp_path, in_memory):
    import tensorflow_datasets as tfds

    images = _images(5, 72, 72, seed=9)
    cache = True if in_memory else str(tmp_path / "cache")
    with tfds.testing.mock_data(as_dataset_fn=_mock(images, list(range(5)))):
        data = load_decathlon_domains(tasks=["dtd"], cache=cache, normalization_samples=2)
        dataset = data.dataset("train", batch_size=5, repeat=True, seed=0)
        epochs = [sorted(y.numpy().tolist()) for _, y in dataset.take(3)]
    assert epochs == [[0, 1, 2, 3, 4]] * 3
    if not in_memory:
        assert any(p.name.startswith("cache_dtd_train") for p in tmp_path.iterdir())
