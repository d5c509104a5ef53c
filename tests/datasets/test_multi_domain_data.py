import numpy as np
import pytest

from keras_mdn.datasets import MultiDomainData
from keras_mdn.datasets.multi_domain_data import DatasetSource

tensorflow_only = pytest.mark.tensorflow_only

SIZES = {"train": (10, 7, 3), "validation": (4, 2, 1), "test": (5, 3, 2)}
NUM_CLASSES = (4, 3, 2)


def _data():
    """Three domains of 4x4x1 images whose pixels encode (domain, split, index)."""
    splits = {}
    for s, (split, sizes) in enumerate(SIZES.items()):
        pairs = []
        for d, n in enumerate(sizes):
            codes = 1000 * d + 100 * s + np.arange(n)
            images = np.broadcast_to(codes[:, None, None, None], (n, 4, 4, 1)).astype(np.float32)
            pairs.append((images, np.arange(n) % NUM_CLASSES[d]))
        splits[split] = pairs
    return MultiDomainData.from_arrays(["a", "b", "c"], NUM_CLASSES, splits, description="codes")


def _collect(dataset):
    batches = []
    for inputs, labels in dataset:
        batches.append(
            (inputs["image"].numpy(), inputs["domain"].numpy(), labels.numpy())
        )
    return batches


def _codes(batches):
    return [int(c) for images, _, _ in batches for c in images[:, 0, 0, 0]]


def test_sizes_and_metadata():
    data = _data()
    assert data.names == ("a", "b", "c")
    assert data.num_classes == NUM_CLASSES
    assert data.num_domains == 3
    assert data.image_shape == (4, 4, 1)
    assert data.in_memory
    assert data.sizes("train") == {"a": 10, "b": 7, "c": 3}
    assert data.num_examples("test") == 10
    assert data.num_examples("test", "b") == 3
    assert data.num_examples("test", 1) == 3
    assert data.steps_per_epoch("train", 4) == 3 + 2 + 1
    assert data.steps_per_epoch("train", 4, drop_remainder=True) == 2 + 1 + 0
    assert data.steps_per_epoch("train", 4, batching="mixed") == 5
    assert data.steps_per_epoch("train", 4, domains=["c", "a"]) == 4
    assert "codes" in repr(data) and "validation" in repr(data)


def test_numpy_access():
    data = _data()
    images, labels = data.arrays("validation", "b")
    assert images.shape == (2, 4, 4, 1) and images.dtype == np.float32
    assert labels.dtype == np.int32
    images, domains, labels = data.as_numpy("test", domains=["c", "a"])
    assert images.shape == (7, 4, 4, 1)
    np.testing.assert_array_equal(domains, [2, 2, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(images[:, 0, 0, 0], [2200, 2201, 200, 201, 202, 203, 204])


def test_select_renumbers_domains():
    sub = _data().select(["c", "a"])
    assert sub.names == ("c", "a")
    assert sub.num_classes == (2, 4)
    assert sub.sizes("train") == {"c": 3, "a": 10}


@tensorflow_only
def test_per_domain_batches_hold_one_domain_and_cover_each_example_once():
    data = _data()
    batches = _collect(data.dataset("train", batch_size=4, seed=3))
    assert len(batches) == data.steps_per_epoch("train", 4)
    for images, domains, labels in batches:
        assert images.dtype == np.float32 and domains.dtype == np.int32
        assert labels.dtype == np.int32
        assert images.shape[1:] == (4, 4, 1)
        assert domains.shape == labels.shape == (len(images),)
        assert len(set(domains.tolist())) == 1
        # the domain id and label belong to the image
        np.testing.assert_array_equal(images[:, 0, 0, 0] // 1000, domains)
        np.testing.assert_array_equal((images[:, 0, 0, 0] % 100) % NUM_CLASSES[domains[0]],
                                      labels)
    expected = sorted(1000 * d + i for d, n in enumerate(SIZES["train"]) for i in range(n))
    assert sorted(_codes(batches)) == expected
    # every domain's batches are interleaved, not run one domain after another
    order = [int(b[1][0]) for b in batches]
    assert order != sorted(order)


@tensorflow_only
def test_mixed_batches_mix_domains():
    data = _data()
    batches = _collect(data.dataset("train", batch_size=5, batching="mixed", seed=0))
    assert [len(b[2]) for b in batches] == [5, 5, 5, 5]
    assert any(len(set(b[1].tolist())) > 1 for b in batches)
    expected = sorted(1000 * d + i for d, n in enumerate(SIZES["train"]) for i in range(n))
    assert sorted(_codes(batches)) == expected


@tensorflow_only
def test_unshuffled_mixed_evaluation_interleaves_in_fixed_order():
    data = _data()
    batches = _collect(data.dataset("test", batch_size=4, batching="mixed"))
    codes = _codes(batches)
    # split order within each domain is kept; the domains are spread evenly
    for d in range(3):
        mine = [c for c in codes if c // 1000 == d]
        assert mine == sorted(mine)
    assert codes == _codes(_collect(data.dataset("test", batch_size=4, batching="mixed")))
    assert len({c // 1000 for c in codes[:4]}) > 1


@tensorflow_only
@pytest.mark.parametrize("batching", ["per_domain", "mixed"])
def test_deterministic_given_seed(batching):
    data = _data()
    kwargs = dict(batch_size=3, batching=batching, training_augmentation=True)
    first = _codes(_collect(data.dataset("train", seed=7, **kwargs)))
    again = _codes(_collect(data.dataset("train", seed=7, **kwargs)))
    other = _codes(_collect(data.dataset("train", seed=8, **kwargs)))
    assert first == again
    assert first != other


@tensorflow_only
def test_repeat_reshuffles_each_epoch_deterministically():
    data = _data()
    steps = data.steps_per_epoch("train", 4)
    dataset = data.dataset("train", batch_size=4, seed=1, repeat=True)
    batches = _collect(dataset.take(3 * steps))
    epochs = [_codes(batches[e * steps : (e + 1) * steps]) for e in range(3)]
    expected = sorted(1000 * d + i for d, n in enumerate(SIZES["train"]) for i in range(n))
    for codes in epochs:
        assert sorted(codes) == expected  # each epoch is exactly one pass
    assert epochs[0] != epochs[1]
    again = _codes(_collect(data.dataset("train", batch_size=4, seed=1, repeat=True).take(steps)))
    assert again == epochs[0]


@tensorflow_only
def test_evaluation_is_not_shuffled_by_default_and_domains_selects():
    data = _data()
    batches = _collect(data.dataset("validation", batch_size=8, domains=["c", "a"]))
    assert {int(b[1][0]) for b in batches} == {0, 2}  # original ids are kept
    codes_a = [c for c in _codes(batches) if c < 1000]
    assert codes_a == [100, 101, 102, 103]


@tensorflow_only
def test_shift_augmentation_moves_content_by_at_most_two_pixels():
    image = np.zeros((1, 8, 8, 1), np.float32)
    image[0, 3, 4, 0] = 1.0
    data = MultiDomainData.from_arrays(
        ["x"], [1], {"train": [(np.repeat(image, 64, axis=0), np.zeros(64))]}
    )
    batches = _collect(data.dataset("train", batch_size=64, training_augmentation=True))
    images = batches[0][0]
    positions = {tuple(np.argwhere(im[..., 0] == 1.0)[0]) for im in images if im.max() == 1.0}
    assert len(positions) > 3
    assert all(abs(r - 3) <= 2 and abs(c - 4) <= 2 for r, c in positions)
    plain = _collect(data.dataset("train", batch_size=64))[0][0]
    np.testing.assert_array_equal(plain, np.repeat(image, 64, axis=0))


@tensorflow_only
def test_fits_a_two_input_keras_model():
    import keras

    data = _data()
    image = keras.Input((4, 4, 1), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    features = keras.layers.Flatten()(image)
    one_hot = keras.layers.CategoryEncoding(3, output_mode="one_hot")(domain)
    logits = keras.layers.Dense(4)(keras.layers.Concatenate()([features, one_hot]))
    model = keras.Model({"image": image, "domain": domain}, logits)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    history = model.fit(
        data.dataset("train", batch_size=4, repeat=True),
        steps_per_epoch=data.steps_per_epoch("train", 4),
        epochs=2,
        verbose=0,
    )
    assert len(history.history["loss"]) == 2


@pytest.mark.parametrize("batching", ["per_domain", "mixed"])
def test_without_domain_gives_image_label_pairs_of_the_same_batches(batching):
    data = _data()
    kwargs = dict(domains=["b"], batch_size=3, batching=batching, seed=4)
    pairs = list(data.dataset("train", with_domain=False, **kwargs))
    batches = _collect(data.dataset("train", **kwargs))
    assert len(pairs) == len(batches) == 3
    for (x, y), (images, _, labels) in zip(pairs, batches, strict=True):
        np.testing.assert_array_equal(x.numpy(), images)
        np.testing.assert_array_equal(y.numpy(), labels)


@tensorflow_only
def test_dataset_source_cache_persists_across_epochs():
    import tensorflow as tf

    calls = []

    def count(x):
        calls.append(1)
        return x

    def make_dataset(split):
        images = tf.zeros((6, 2, 2, 1), tf.uint8)
        ds = tf.data.Dataset.from_tensor_slices((images, tf.range(6)))
        ds = ds.map(lambda x, y: (tf.numpy_function(count, [x], tf.uint8), y))
        return ds.cache()

    source = DatasetSource(
        make_dataset,
        {"train": 6},
        lambda image, augment, seed: tf.ensure_shape(tf.cast(image, tf.float32), (2, 2, 1)),
        shuffle_buffer=6,
    )
    data = MultiDomainData(["only"], [6], (2, 2, 1), [source])
    dataset = data.dataset("train", batch_size=3, repeat=True, seed=0)
    labels = np.concatenate([b[2] for b in _collect(dataset.take(8))])
    assert len(calls) == 6  # read once, served from the cache in epochs 2..4
    assert sorted(labels[:6].tolist()) == list(range(6))
    assert labels[:6].tolist() != labels[6:12].tolist()


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(split="dev"), ValueError, "split='dev'"),
        (dict(split="train", batching="random"), ValueError, "batching='random'"),
        (dict(split="train", batch_size=0), ValueError, "batch_size=0"),
        (dict(split="train", batch_size=2.5), TypeError, "batch_size=2.5"),
        (dict(split="train", domains=["z"]), ValueError, "domain='z'"),
        (dict(split="train", domains=[5]), ValueError, "domain=5"),
        (dict(split="train", domains=["a", "a"]), ValueError, "distinct"),
        (dict(split="train", seed=1.5), TypeError, "seed=1.5"),
    ],
)
@tensorflow_only
def test_dataset_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        _data().dataset(**kwargs)


def test_from_arrays_errors():
    good = (np.zeros((2, 3, 3, 1)), np.array([0, 1]))
    with pytest.raises(ValueError, match=r"labels must be in \[0, 2\)"):
        MultiDomainData.from_arrays(["a"], [2], {"train": [(good[0], np.array([0, 2]))]})
    with pytest.raises(ValueError, match="share one image shape"):
        MultiDomainData.from_arrays(
            ["a", "b"], [2, 2], {"train": [good, (np.zeros((2, 4, 4, 1)), good[1])]}
        )
    with pytest.raises(ValueError, match="unique"):
        MultiDomainData.from_arrays(["a", "a"], [2, 2], {"train": [good, good]})
    with pytest.raises(ValueError, match="Split names"):
        MultiDomainData.from_arrays(["a"], [2], {"dev": [good]})
    with pytest.raises(ValueError, match="TFDS"):
        MultiDomainData(["a"], [2], (2, 2, 1), [DatasetSource(None, {}, None)]).arrays("train", 0)


@tensorflow_only
@pytest.mark.parametrize("batching", ["per_domain", "mixed"])
def test_whole_batch_gathering_matches_the_per_example_path(batching):
    # Without augmentation, in-memory batches are gathered whole; with the shift augmentation
    # they go example by example. The order of examples must be the same.
    data = _data()
    kwargs = dict(batch_size=3, batching=batching, seed=5, repeat=True)
    steps = data.steps_per_epoch("train", 3, batching)
    fast = _collect(data.dataset("train", **kwargs).take(2 * steps))
    slow = _collect(data.dataset("train", training_augmentation=True, **kwargs).take(2 * steps))
    for (images, domains, labels), (shifted, slow_domains, slow_labels) in zip(
        fast, slow, strict=True
    ):
        np.testing.assert_array_equal(domains, slow_domains)
        np.testing.assert_array_equal(labels, slow_labels)
        # images are constant codes; a shift of <= 2 pixels keeps the code visible
        np.testing.assert_array_equal(images.max(axis=(1, 2, 3)), shifted.max(axis=(1, 2, 3)))


@tensorflow_only
@pytest.mark.parametrize("batching", ["per_domain", "mixed"])
def test_iterating_again_gives_the_next_epoch(batching):
    data = _data()
    dataset = data.dataset("train", batch_size=4, seed=2, batching=batching)
    first, second = _codes(_collect(dataset)), _codes(_collect(dataset))
    assert sorted(first) == sorted(second)
    assert first != second  # reshuffled, as fit(..., epochs=n) expects
    repeated = data.dataset("train", batch_size=4, seed=2, batching=batching, repeat=True)
    steps = data.steps_per_epoch("train", 4, batching)
    assert _codes(_collect(repeated.take(2 * steps))) == first + second
    assert _codes(_collect(data.dataset("train", batch_size=4, seed=2, batching=batching))) == first


def test_concatenate_offsets_domain_ids():
    first, second = _data(), _data().select(["c", "a"])
    merged = MultiDomainData.concatenate([first, second], names=["a", "b", "c", "c2", "a2"])
    assert merged.names == ("a", "b", "c", "c2", "a2")
    assert merged.num_classes == NUM_CLASSES + (2, 4)
    assert MultiDomainData.domain_offsets([first, second]) == [0, 3]
    for d in range(second.num_domains):
        for split in SIZES:
            np.testing.assert_array_equal(merged.arrays(split, 3 + d)[0],
                                          second.arrays(split, d)[0])
    images, domain_ids, _ = merged.as_numpy("test", domains=["c2"])
    assert set(domain_ids) == {3} and len(images) == SIZES["test"][2]
    with pytest.raises(ValueError, match=r"duplicate names \['a', 'c'\]"):
        MultiDomainData.concatenate([first, second])
    with pytest.raises(ValueError, match="one name per merged domain"):
        MultiDomainData.concatenate([first, second], names=["x"])
    other = MultiDomainData.from_arrays(
        ["z"], [2], {"test": [(np.zeros((2, 3, 3, 1), "float32"), np.zeros(2))]}
    )
    with pytest.raises(ValueError, match="image shape"):
        MultiDomainData.concatenate([first, other])
    with pytest.raises(TypeError, match="datas"):
        MultiDomainData.concatenate([])


def test_evaluation_batches_have_one_shape():
    data = _data()
    batches = list(data.evaluation_batches("train", "a", batch_size=4))
    assert [count for _, _, count in batches] == [4, 4, 2]
    assert all(inputs["image"].shape == (4, 4, 4, 1) for inputs, _, _ in batches)
    assert all(np.all(inputs["domain"] == 0) for inputs, _, _ in batches)
    codes = [int(c) for inputs, _, count in batches for c in inputs["image"][:count, 0, 0, 0]]
    assert codes == list(range(10))
    labels = np.concatenate([labels for _, labels, _ in batches])
    np.testing.assert_array_equal(labels, data.arrays("train", "a")[1])


@tensorflow_only
def test_fit_on_a_package_dataset_does_not_warn_about_shuffle():
    import warnings

    import keras

    data = _data()
    image = keras.Input((4, 4, 1), name="image")
    domain = keras.Input((), dtype="int32", name="domain")
    logits = keras.layers.Dense(4)(keras.layers.Flatten()(image))
    model = keras.Model({"image": image, "domain": domain}, logits)
    model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model.fit(data.dataset("train", batch_size=4), epochs=1, verbose=0)
    assert not [w for w in caught if "shuffle=True" in str(w.message)]
