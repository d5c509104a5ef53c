"""`MultiDomainData`: several labelled image domains behind one tf.data interface.

Every loader in `keras_mdn.datasets` returns a `MultiDomainData`. It holds, per domain, the
examples of the splits "train", "validation" and "test" (in memory as NumPy arrays for small
sources, or as TFDS datasets), and builds tf.data pipelines that yield
`({"image": images, "domain": domain_ids}, labels)`, the inputs of a functional multi-domain
model with inputs named "image" and "domain".

Determinism: with a given `seed`, `dataset()` yields the same examples in the same order with
the same augmentation every time it is built. Epoch e (of `repeat=True`, or the e-th iteration
of the dataset) is a function of `(seed, e)`: shuffling and augmentation use stateless random
ops, seeded per epoch, domain and example, so parallel preprocessing does not change the
result. Buffered shuffles of TFDS sources also depend on TensorFlow's global seed
(`keras.utils.set_random_seed`).
"""

import math
import warnings
from collections.abc import Mapping

import numpy as np

SPLITS = ("train", "validation", "test")
BATCHINGS = ("per_domain", "mixed")


class MultiDomainData:
    """Labelled images of several domains, with per-domain label spaces.

    Built by the loaders (`load_digits_domains`, `load_omniglot_domains`,
    `load_decathlon_domains`); the constructor is public so that other sources can be wrapped
    (see `from_arrays`).

    Args:
        names: one name per domain; a domain's id is its position in this list.
        num_classes: number of classes of each domain (one int per domain); may differ
            between domains.
        image_shape: `(height, width, channels)` of the images every pipeline yields.
        sources: one source per domain (internal objects made by the loaders).
        description: a one-line description shown by `repr`.

    Attributes:
        names: tuple of domain names.
        num_classes: tuple of class counts, one per domain.
        num_domains: number of domains.
        image_shape: `(height, width, channels)`.

    Example:

    >>> data = keras_mdn.datasets.load_digits_domains()
    >>> train = data.dataset("train", batch_size=64, seed=0)  # one domain per batch
    >>> model.fit(train, epochs=3, steps_per_epoch=data.steps_per_epoch("train", 64))
    """

    def __init__(self, names, num_classes, image_shape, sources, description=""):
        names = tuple(str(name) for name in names)
        num_classes = tuple(int(n) for n in num_classes)
        if not names:
            raise ValueError("`names` must name at least one domain. Received: names=()")
        if len(set(names)) != len(names):
            raise ValueError(f"Domain names must be unique. Received: names={names}")
        if len(num_classes) != len(names) or len(sources) != len(names):
            raise ValueError(
                "`names`, `num_classes` and `sources` must have one entry per domain. "
                f"Received: {len(names)} names, {len(num_classes)} num_classes, "
                f"{len(sources)} sources"
            )
        if any(n < 1 for n in num_classes):
            raise ValueError(f"Every domain needs >= 1 class. Received: num_classes={num_classes}")
        image_shape = tuple(int(s) for s in image_shape)
        if len(image_shape) != 3:
            raise ValueError(
                f"`image_shape` must be (height, width, channels). Received: "
                f"image_shape={image_shape}"
            )
        self.names = names
        self.num_classes = num_classes
        self.image_shape = image_shape
        self.description = description
        self._sources = tuple(sources)

    @classmethod
    def from_arrays(cls, names, num_classes, splits, description=""):
        """Wraps in-memory arrays.

        Args:
            names: one name per domain.
            num_classes: one class count per domain.
            splits: mapping from split name ("train", "validation", "test") to a list with one
                `(images, labels)` pair per domain: images float32 NHWC, labels integers in
                `[0, num_classes[d])`.
            description: a one-line description.
        """
        unknown = set(splits) - set(SPLITS)
        if unknown:
            raise ValueError(f"Split names must be in {SPLITS}. Received: {sorted(unknown)}")
        sources = []
        image_shape = None
        for d, name in enumerate(names):
            per_split = {}
            for split, pairs in splits.items():
                images, labels = pairs[d]
                images = np.asarray(images, dtype=np.float32)
                labels = np.asarray(labels).astype(np.int32)
                if images.ndim != 4 or len(images) != len(labels):
                    raise ValueError(
                        f"Domain {name!r}, split {split!r}: images must be (N, H, W, C) with one "
                        f"label each. Received: images.shape={images.shape}, "
                        f"labels.shape={labels.shape}"
                    )
                if len(labels) and (labels.min() < 0 or labels.max() >= num_classes[d]):
                    raise ValueError(
                        f"Domain {name!r}, split {split!r}: labels must be in "
                        f"[0, {num_classes[d]}). Received: labels in "
                        f"[{labels.min()}, {labels.max()}]"
                    )
                if image_shape is None:
                    image_shape = images.shape[1:]
                elif images.shape[1:] != image_shape:
                    raise ValueError(
                        "All domains must share one image shape. Received: "
                        f"{image_shape} and {images.shape[1:]} (domain {name!r})"
                    )
                per_split[split] = (images, labels)
            sources.append(ArraySource(per_split))
        return cls(names, num_classes, image_shape, sources, description=description)

    # === Sizes ===

    @property
    def num_domains(self):
        return len(self.names)

    @property
    def in_memory(self):
        """True when every domain's examples are NumPy arrays (see `arrays`)."""
        return all(isinstance(s, ArraySource) for s in self._sources)

    def domain_index(self, domain):
        """The id of a domain given by name or id."""
        if isinstance(domain, (bool, np.bool_)):
            raise TypeError(f"A domain is a name or an int id. Received: domain={domain!r}")
        if isinstance(domain, (int, np.integer)):
            if not 0 <= int(domain) < self.num_domains:
                raise ValueError(
                    f"Domain ids are in [0, {self.num_domains}). Received: domain={domain}"
                )
            return int(domain)
        if isinstance(domain, str):
            if domain not in self.names:
                raise ValueError(
                    f"Unknown domain name; the domains are {list(self.names)}. "
                    f"Received: domain={domain!r}"
                )
            return self.names.index(domain)
        raise TypeError(f"A domain is a name or an int id. Received: domain={domain!r}")

    def _domain_ids(self, domains):
        if domains is None:
            return list(range(self.num_domains))
        if isinstance(domains, (str, int, np.integer)):
            domains = [domains]
        ids = [self.domain_index(d) for d in domains]
        if not ids or len(set(ids)) != len(ids):
            raise ValueError(
                f"`domains` must list distinct domains, at least one. Received: domains={domains}"
            )
        return ids

    def num_examples(self, split, domain=None):
        """Number of examples of `split`, of one domain, or of all domains when `domain=None`."""
        _check_split(split)
        if domain is None:
            return sum(s.size(split) for s in self._sources)
        return self._sources[self.domain_index(domain)].size(split)

    def sizes(self, split):
        """Dict mapping each domain name to its number of examples in `split`."""
        _check_split(split)
        return {name: s.size(split) for name, s in zip(self.names, self._sources, strict=True)}

    def steps_per_epoch(
        self, split, batch_size, batching="per_domain", domains=None, drop_remainder=False
    ):
        """Number of batches in one epoch of `dataset(split, ...)` with the same arguments.

        With `batching="per_domain"` each domain's examples are batched separately, so the
        count is `sum_d ceil(n_d / batch_size)` (`floor` with `drop_remainder`); with
        `"mixed"` it is `ceil(sum_d n_d / batch_size)`.
        """
        _check_split(split)
        _check_batching(batching)
        batch_size = _check_batch_size(batch_size)
        sizes = [self._sources[d].size(split) for d in self._domain_ids(domains)]
        rounding = math.floor if drop_remainder else math.ceil
        if batching == "mixed":
            return rounding(sum(sizes) / batch_size)
        return sum(rounding(n / batch_size) for n in sizes)

    # === NumPy access ===

    def arrays(self, split, domain):
        """`(images, labels)` of one domain as NumPy arrays (in-memory sources only).

        Images are float32 `(N, H, W, C)` without augmentation, labels int32 `(N,)`. The
        arrays are the container's own: do not modify them in place.
        """
        _check_split(split)
        source = self._sources[self.domain_index(domain)]
        if not isinstance(source, ArraySource):
            raise ValueError(
                "NumPy arrays are only kept for in-memory sources (digits, Omniglot); this "
                f"domain is read through TFDS: use `dataset()`. Received: domain={domain!r}"
            )
        return source.arrays[split]

    def as_numpy(self, split, domains=None):
        """`(images, domain_ids, labels)` of several domains concatenated in domain order."""
        ids = self._domain_ids(domains)
        parts = [self.arrays(split, d) for d in ids]
        images = np.concatenate([p[0] for p in parts])
        labels = np.concatenate([p[1] for p in parts])
        domain_ids = np.concatenate(
            [np.full(len(p[1]), d, dtype=np.int32) for d, p in zip(ids, parts, strict=True)]
        )
        return images, domain_ids, labels

    def select(self, domains):
        """A `MultiDomainData` with only `domains` (names or ids), re-numbered 0, 1, ... ."""
        ids = self._domain_ids(domains)
        return MultiDomainData(
            [self.names[d] for d in ids],
            [self.num_classes[d] for d in ids],
            self.image_shape,
            [self._sources[d] for d in ids],
            description=self.description,
        )

    @classmethod
    def concatenate(cls, datas, names=None, description=None):
        """One `MultiDomainData` holding the domains of several, in order.

        The domains of `datas[k]` get the ids `offsets[k] + d`, with `offsets[k]` the number
        of domains in `datas[:k]` (see `domain_offsets`), so a model trained on the merged
        data reads domain `d` of `datas[k]` as `offsets[k] + d`.

        Args:
            datas: list of `MultiDomainData` with the same image shape.
            names: optional new names for all the merged domains (needed when two sources
                share a domain name). Defaults to the sources' names.
            description: a one-line description. Defaults to the sources' joined with " + ".

        Returns:
            A `MultiDomainData`.

        Example:

        >>> both = MultiDomainData.concatenate([digits, letters])
        >>> both.dataset("train", domains=letters.names)  # ids offset by digits.num_domains
        """
        datas = list(datas)
        if not datas or not all(isinstance(d, MultiDomainData) for d in datas):
            raise TypeError(
                f"`datas` must be a non-empty list of MultiDomainData. Received: datas={datas!r}"
            )
        shapes = {d.image_shape for d in datas}
        if len(shapes) != 1:
            raise ValueError(
                "All sources must share one image shape (resize them first). Received: "
                f"image shapes {[d.image_shape for d in datas]}"
            )
        merged_names = [name for d in datas for name in d.names]
        if names is not None:
            names = [str(n) for n in names]
            if len(names) != len(merged_names):
                raise ValueError(
                    f"`names` must have one name per merged domain ({len(merged_names)}). "
                    f"Received: names={names}"
                )
            merged_names = names
        duplicates = sorted({n for n in merged_names if merged_names.count(n) > 1})
        if duplicates:
            raise ValueError(
                f"Merged domain names must be unique; pass `names`. Received: duplicate "
                f"names {duplicates}"
            )
        return cls(
            merged_names,
            [n for d in datas for n in d.num_classes],
            datas[0].image_shape,
            [source for d in datas for source in d._sources],
            description=description or " + ".join(d.description or "data" for d in datas),
        )

    @staticmethod
    def domain_offsets(datas):
        """The id offset of each of `datas` in `MultiDomainData.concatenate(datas)`."""
        return [int(o) for o in np.cumsum([0] + [d.num_domains for d in datas])[:-1]]

    def evaluation_batches(self, split, domain, batch_size=256):
        """Batches of one domain for inference, all of shape `batch_size`.

        The last batch is padded by repeating its last example, so a compiled predict
        function is traced once; `count` says how many rows are real.

        Yields:
            `(inputs, labels, count)`: `inputs` `{"image", "domain"}` with `batch_size` rows,
            `labels` `(count,)`.
        """
        batch_size = _check_batch_size(batch_size)
        d = self.domain_index(domain)
        if self.in_memory:
            all_images, all_labels = self.arrays(split, d)
            chunks = (
                (all_images[start : start + batch_size], all_labels[start : start + batch_size])
                for start in range(0, len(all_labels), batch_size)
            )
        else:
            dataset = self.dataset(split, domains=[d], batch_size=batch_size, shuffle=False)
            chunks = ((x["image"], y) for x, y in dataset.as_numpy_iterator())
        for images, labels in chunks:
            count = len(labels)
            if count < batch_size:
                padding = np.repeat(images[-1:], batch_size - count, axis=0)
                images = np.concatenate([images, padding])
            domain_ids = np.full((batch_size,), d, dtype=np.int32)
            yield {"image": images, "domain": domain_ids}, labels, count

    # === tf.data ===

    def dataset(
        self,
        split,
        domains=None,
        batch_size=32,
        shuffle=None,
        seed=0,
        training_augmentation=None,
        batching="per_domain",
        repeat=False,
        drop_remainder=False,
        with_domain=True,
    ):
        """A tf.data pipeline of `({"image": x, "domain": d}, y)` batches.

        `x` is float32 `(batch, *image_shape)`, `d` int32 `(batch,)` (the domain id of each
        example, its position in `names`, also when `domains` selects a subset) and `y` int32
        `(batch,)` (class index within that domain's label space).

        Args:
            split: "train", "validation" or "test".
            domains: names or ids of the domains to include. Defaults to all.
            batch_size: examples per batch. Defaults to 32.
            shuffle: shuffle examples (and, for "per_domain", the order of the domains'
                batches) anew each epoch. Defaults to `split == "train"`.
            seed: integer seed of shuffling and augmentation. Defaults to 0.
            training_augmentation: apply the source's random training augmentation (random
                crop and flip for the decathlon, a random shift of up to 2 pixels for the
                in-memory sources when enabled). Defaults to the loader's choice on "train"
                (on for the decathlon, off for digits and Omniglot) and off on other splits;
                when off, the decathlon uses its evaluation preprocessing (centre crop).
            batching: "per_domain" (default): each batch holds examples of a single domain;
                the domains' batches are interleaved in proportion to their sizes, spread
                evenly over the epoch (in random order when shuffling). This is how the paper
                trains and it lets the layers take their one-domain fast path.
                "mixed": examples of all domains are shuffled together, so a batch mixes
                domains.
            repeat: repeat the epochs indefinitely. Pass
                `steps_per_epoch=data.steps_per_epoch(...)` to `fit`. Defaults to False: one
                epoch per iteration; iterating the dataset again (`fit(..., epochs=n)`)
                yields the next epoch, reshuffled.
            drop_remainder: drop incomplete batches (per domain for "per_domain").
            with_domain: `False` yields `(x, y)` batches, for a one-domain network without a
                domain input (`keras_mdn.models.plain_resnet26`; select one domain with
                `domains` or `select`). Defaults to `True`.

        Returns:
            A `tf.data.Dataset`, prefetched.
        """
        import tensorflow as tf

        _check_split(split)
        _check_batching(batching)
        batch_size = _check_batch_size(batch_size)
        _quiet_fit_shuffle_warning()
        # The pipeline's functions branch on Python values only: no AutoGraph conversion.
        plain = tf.autograph.experimental.do_not_convert
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
            raise TypeError(f"`seed` must be an int. Received: seed={seed!r}")
        ids = [d for d in self._domain_ids(domains) if self._sources[d].size(split) > 0]
        if not ids:
            raise ValueError(f"No examples in split {split!r} for domains={domains}")
        shuffle = split == "train" if shuffle is None else bool(shuffle)
        if training_augmentation is None:
            augment = [split == "train" and self._sources[d].augment_by_default for d in ids]
        else:
            augment = [bool(training_augmentation)] * len(ids)
        base_seed = tf.constant([int(seed) % (2**31), 0x6D646E], dtype=tf.int64)
        rounding = math.floor if drop_remainder else math.ceil
        if batching == "per_domain":
            counts = [rounding(self._sources[d].size(split) / batch_size) for d in ids]
        else:
            counts = [self._sources[d].size(split) for d in ids]
        order = tf.constant(_spread(counts), dtype=tf.int64)

        def domain_stream(position, d):
            """(function of the epoch seed returning the domain's stream, batched or not)."""
            source = self._sources[d]
            if batching == "per_domain" and not augment[position] and hasattr(
                source, "epoch_batches"
            ):
                # In-memory and not augmented: gather whole batches, no per-example work.
                batches = source.epoch_batches(split, shuffle, batch_size, drop_remainder)

                def batched_stream(epoch_seed):
                    domain_seed = tf.random.experimental.stateless_fold_in(epoch_seed, d)
                    return batches(domain_seed).map(
                        plain(lambda x, y: (x, tf.fill(tf.shape(y), d), y)),
                        num_parallel_calls=tf.data.AUTOTUNE,
                    )

                return batched_stream, True

            examples = source.epoch_examples(split, shuffle, _python_seed(seed, d))
            preprocess = source.preprocess_fn(augment[position], self.image_shape)

            def stream(epoch_seed):
                domain_seed = tf.random.experimental.stateless_fold_in(epoch_seed, d)

                def prepare(index, example):
                    image, label = example
                    example_seed = tf.random.experimental.stateless_fold_in(domain_seed, index)
                    image = preprocess(image, example_seed)
                    return image, tf.constant(d, tf.int32), tf.cast(label, tf.int32)

                return examples(domain_seed).enumerate().map(
                    plain(prepare), num_parallel_calls=tf.data.AUTOTUNE
                )

            return stream, False

        # Built eagerly, once per pipeline; the per-epoch function below only calls them.
        stream_fns = [domain_stream(p, d) for p, d in enumerate(ids)]

        in_memory_mixed = None
        if batching == "mixed" and not any(augment) and self.in_memory:
            in_memory_mixed = self._in_memory_mixed(split, ids, shuffle, batch_size, drop_remainder)

        def epoch(epoch_index):
            epoch_seed = tf.random.experimental.stateless_fold_in(base_seed, epoch_index)
            choice = order
            if shuffle:
                choice = tf.random.experimental.stateless_shuffle(
                    order, tf.random.experimental.stateless_fold_in(epoch_seed, -1)
                )
            if in_memory_mixed is not None:
                return in_memory_mixed(epoch_seed, choice)
            streams = [stream(epoch_seed) for stream, _ in stream_fns]
            choice = tf.data.Dataset.from_tensor_slices(choice)
            if batching == "per_domain":
                streams = [
                    s if batched else s.batch(batch_size, drop_remainder=drop_remainder)
                    for s, (_, batched) in zip(streams, stream_fns, strict=True)
                ]
                return tf.data.Dataset.choose_from_datasets(streams, choice)
            mixed = tf.data.Dataset.choose_from_datasets(streams, choice)
            return mixed.batch(batch_size, drop_remainder=drop_remainder)

        # Epoch numbers come from a counter owned by this pipeline, so iterating it again (as
        # `fit` does each epoch without `steps_per_epoch`) gives the next epoch, reshuffled,
        # while a freshly built pipeline starts again at epoch 0.
        with tf.init_scope():
            epoch_counter = tf.Variable(0, dtype=tf.int64, trainable=False, name="epoch_counter")
        epochs = tf.data.Dataset.counter() if repeat else tf.data.Dataset.range(1)
        epochs = epochs.map(plain(lambda _: epoch_counter.assign_add(1) - 1))
        dataset = epochs.flat_map(plain(epoch))
        if with_domain:
            features = plain(lambda x, d, y: ({"image": x, "domain": d}, y))
        else:
            features = plain(lambda x, d, y: (x, y))
        dataset = dataset.map(features, num_parallel_calls=tf.data.AUTOTUNE)
        if not repeat:
            total = self.steps_per_epoch(split, batch_size, batching, ids, drop_remainder)
            dataset = dataset.apply(tf.data.experimental.assert_cardinality(total))
        return dataset.prefetch(tf.data.AUTOTUNE)

    def _in_memory_mixed(self, split, ids, shuffle, batch_size, drop_remainder):
        """Mixed batches of in-memory, non-augmented domains, gathered whole.

        Yields the same examples in the same order as the per-example path: domain d's
        permutation is drawn from the same seed, and position k of the epoch takes the next
        unused example of domain `choice[k]`.
        """
        import tensorflow as tf

        sources = [self._sources[d] for d in ids]
        permutations = [s.epoch_permutation(split, shuffle) for s in sources]
        sizes = [s.size(split) for s in sources]
        images = tf.constant(np.concatenate([s.arrays[split][0] for s in sources]))
        labels = tf.constant(np.concatenate([s.arrays[split][1] for s in sources]))
        domain_ids = tf.constant(
            np.concatenate([np.full(n, d, np.int32) for d, n in zip(ids, sizes, strict=True)])
        )
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        gather = tf.autograph.experimental.do_not_convert(
            lambda i: (tf.gather(images, i), tf.gather(domain_ids, i), tf.gather(labels, i))
        )

        def epoch(epoch_seed, choice):
            members = tf.concat(
                [
                    permutation(tf.random.experimental.stateless_fold_in(epoch_seed, d)) + offset
                    for permutation, d, offset in zip(permutations, ids, offsets, strict=True)
                ],
                axis=0,
            )
            seen = tf.math.cumsum(tf.one_hot(choice, len(ids), dtype=tf.int64), axis=0)
            rank = tf.gather(seen, choice, batch_dims=1) - 1
            order = tf.gather(members, tf.gather(tf.constant(offsets), choice) + rank)
            dataset = tf.data.Dataset.from_tensor_slices(order)
            return dataset.batch(batch_size, drop_remainder=drop_remainder).map(gather)

        return epoch

    def __repr__(self):
        lines = [f"MultiDomainData({self.description or 'multi-domain images'})"]
        lines.append(f"  image_shape={self.image_shape}")
        header = f"  {'id':>3}  {'domain':<24}{'classes':>8}" + "".join(
            f"{s:>12}" for s in SPLITS
        )
        lines.append(header)
        for d, name in enumerate(self.names):
            sizes = "".join(f"{self._sources[d].size(s):>12}" for s in SPLITS)
            lines.append(f"  {d:>3}  {name:<24}{self.num_classes[d]:>8}{sizes}")
        return "\n".join(lines)


# === Sources: one domain's examples ===


class ArraySource:
    """One domain held in memory: `{split: (images float32 NHWC, labels int32)}`.

    Args:
        arrays: mapping from split to `(images, labels)`; missing splits are empty.
        augment_by_default: whether "train" pipelines augment unless told otherwise.
        max_shift: the training augmentation shifts images by up to this many pixels
            (zero-padded). There are no flips: mirrored and rotated images define other
            domains of the digits data.
    """

    def __init__(self, arrays, augment_by_default=False, max_shift=2):
        self.arrays = dict(arrays)
        self.augment_by_default = augment_by_default
        self.max_shift = max_shift
        self._tensors = {}

    def size(self, split):
        return len(self.arrays[split][1]) if split in self.arrays else 0

    def epoch_permutation(self, split, shuffle):
        """A function of the epoch's stateless seed returning the epoch's example order."""
        import tensorflow as tf

        size = self.size(split)

        def permutation(epoch_seed):
            order = tf.range(size, dtype=tf.int64)
            if shuffle:  # a fresh uniform permutation each epoch, a function of the seed
                shuffle_seed = tf.random.experimental.stateless_fold_in(epoch_seed, -1)
                order = tf.random.experimental.stateless_shuffle(order, shuffle_seed)
            return order

        return permutation

    def _epoch_indices(self, split, shuffle):
        import tensorflow as tf

        if split not in self._tensors:
            images, labels = self.arrays[split]
            with tf.init_scope():  # eager constants, shared by every pipeline and epoch
                self._tensors[split] = (tf.constant(images), tf.constant(labels))
        permutation = self.epoch_permutation(split, shuffle)

        def indices(epoch_seed):
            return tf.data.Dataset.from_tensor_slices(permutation(epoch_seed))

        return indices, self._tensors[split]

    def epoch_examples(self, split, shuffle, seed):
        """A function of the epoch's stateless seed returning that epoch's `(image, label)`."""
        import tensorflow as tf

        del seed  # the order is a function of the epoch seed alone
        indices, (images, labels) = self._epoch_indices(split, shuffle)
        gather = tf.autograph.experimental.do_not_convert(
            lambda i: (tf.gather(images, i), tf.gather(labels, i))
        )
        return lambda epoch_seed: indices(epoch_seed).map(gather)

    def epoch_batches(self, split, shuffle, batch_size, drop_remainder):
        """As `epoch_examples`, in batches gathered at once (no augmentation)."""
        import tensorflow as tf

        indices, (images, labels) = self._epoch_indices(split, shuffle)
        gather = tf.autograph.experimental.do_not_convert(
            lambda i: (tf.gather(images, i), tf.gather(labels, i))
        )
        return lambda epoch_seed: indices(epoch_seed).batch(
            batch_size, drop_remainder=drop_remainder
        ).map(gather)

    def preprocess_fn(self, augment, image_shape):
        import tensorflow as tf

        if not augment or self.max_shift == 0:
            return lambda image, seed: image
        height, width, _ = image_shape
        pad = self.max_shift

        def shift(image, seed):
            padded = tf.pad(image, [[pad, pad], [pad, pad], [0, 0]])
            return tf.image.stateless_random_crop(padded, image_shape, seed)

        return shift


def _quiet_fit_shuffle_warning():
    """Silences Keras' "`shuffle=True` ... ignored" warning of `fit` on a tf.data.Dataset.

    `fit(dataset)` warns because `fit`'s default `shuffle=True` does not apply to a
    tf.data.Dataset. These pipelines shuffle every epoch themselves (`shuffle` of `dataset`),
    so the warning only misleads. The filter matches that message only.
    """
    warnings.filterwarnings(
        "ignore", message=r"`shuffle=True` was passed, but will be ignored since the data `x` "
        r"was provided as a tf\.data\.Dataset"
    )


def _python_seed(seed, domain):
    """An integer seed for a domain's buffered shuffle, derived from the pipeline's seed."""
    return int(np.random.SeedSequence([int(seed) % (2**32), domain]).generate_state(1)[0] >> 1)


def _spread(counts):
    """Domain positions, count[p] times each, spread evenly: [0, 1, 0, 1, 0] for [3, 2]."""
    keys = [((j + 0.5) / n, p) for p, n in enumerate(counts) for j in range(n)]
    return [p for _, p in sorted(keys)]


def _check_split(split):
    if split not in SPLITS:
        raise ValueError(f"`split` must be one of {SPLITS}. Received: split={split!r}")


def _check_batching(batching):
    if batching not in BATCHINGS:
        raise ValueError(f"`batching` must be one of {BATCHINGS}. Received: batching={batching!r}")


def _check_batch_size(batch_size):
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)):
        raise TypeError(f"`batch_size` must be an int. Received: batch_size={batch_size!r}")
    if batch_size < 1:
        raise ValueError(f"`batch_size` must be >= 1. Received: batch_size={batch_size}")
    return int(batch_size)


def check_domain_selection(requested, available, what):
    """Validates a list of requested names against the available ones (loaders use this)."""
    if requested is None:
        return list(available)
    if isinstance(requested, str):
        requested = [requested]
    if isinstance(requested, Mapping):
        raise TypeError(f"`{what}` must be a list of names. Received: {what}={requested!r}")
    requested = list(requested)
    unknown = [r for r in requested if r not in available]
    if unknown or not requested or len(set(requested)) != len(requested):
        raise ValueError(
            f"`{what}` must list distinct names out of {list(available)}. "
            f"Received: {what}={requested}"
        )
    return requested


class DatasetSource:
    """One domain read through tf.data (TFDS), preprocessed on the fly.

    Args:
        make_dataset: `make_dataset(split)` returns a `tf.data.Dataset` of `(image, label)`
            in a fixed order; called once per split, eagerly.
        sizes: mapping from split to its number of examples.
        preprocess: `preprocess(image, augment, seed)` returns the final float32 image of
            shape `image_shape`; `seed` is a stateless seed (shape (2,)).
        augment_by_default: whether "train" pipelines augment unless told otherwise.
        shuffle_buffer: buffer of the per-epoch shuffle.
    """

    def __init__(
        self, make_dataset, sizes, preprocess, augment_by_default=True, shuffle_buffer=10_000
    ):
        self._make_dataset = make_dataset
        self._sizes = dict(sizes)
        self._preprocess = preprocess
        self.augment_by_default = augment_by_default
        self.shuffle_buffer = int(shuffle_buffer)
        self._datasets = {}

    def size(self, split):
        return self._sizes.get(split, 0)

    def epoch_examples(self, split, shuffle, seed):
        """A function of the epoch's stateless seed returning that epoch's `(image, label)`."""
        if split not in self._datasets:  # kept, so that a `.cache()` in it persists
            self._datasets[split] = self._make_dataset(split)
        dataset = self._datasets[split]
        if shuffle:
            # Made here, eagerly, with an integer seed: every epoch (a new iteration of this
            # dataset) draws a new order, and the sequence of orders is fixed by the seed.
            dataset = dataset.shuffle(self.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        return lambda epoch_seed: dataset

    def preprocess_fn(self, augment, image_shape):
        return lambda image, seed: self._preprocess(image, augment, seed)
