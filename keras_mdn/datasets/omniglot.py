"""Omniglot alphabets as domains, from the official zip files or through TFDS."""

import collections
import functools
import hashlib
import io
import os
import re
import zipfile

import numpy as np

from keras_mdn.datasets.image_ops import resize_images
from keras_mdn.datasets.multi_domain_data import (
    ArraySource,
    MultiDomainData,
    check_domain_selection,
)

_URL = "https://github.com/brendenlake/omniglot/raw/master/python/"
# The files TFDS' `omniglot` builder downloads, with the sizes and sha256 digests of
# tensorflow_datasets/url_checksums/omniglot.txt. subset name -> (file name, size, sha256)
OMNIGLOT_FILES = {
    "background": (
        "images_background.zip",
        9464212,
        "ad41ab679c8b5d90b271ef46be6987cc81211774a695c29dcc5367b2b26ee640",
    ),
    "evaluation": (
        "images_evaluation.zip",
        6462886,
        "1f61a8f3366785b057fc117d9228e78a16e3d976c8953b2a10fcc74cf0609cee",
    ),
    "small1": (
        "images_background_small1.zip",
        1319022,
        "f38eb80f801274ac2b4dff5b24289016bfaba4a7d5bb50deebf27104ad6cb8a4",
    ),
    "small2": (
        "images_background_small2.zip",
        1580917,
        "3ccaa407515a8778e5d0861875af38b17e418f301ad5bb3b5a6b65d901a41c7f",
    ),
}
_BY_FILE_NAME = {name: (size, digest) for name, size, digest in OMNIGLOT_FILES.values()}
# Drawers 1..20 of every character: 12 for training, 4 for validation, 4 for testing.
DRAWER_SPLITS = {"train": range(1, 13), "validation": range(13, 17), "test": range(17, 21)}
_PNG_NAME = re.compile(r"(?:.*/)?([^/]+)/character(\d+)/(\d+)_(\d+)\.png$")


def load_omniglot_domains(path, subset="small1", alphabets=None, image_size=28, channels=1):
    """Loads Omniglot alphabets as domains from the official zip files (no download).

    Each alphabet is a domain that classifies its own characters (labels 0..K-1 in the order
    of the `characterNN` folders), so domains have different numbers of classes. The split
    is by drawer, so every character is in every split: drawers 1..12 train, 13..16
    validation, 17..20 test (12 / 4 / 4 drawings per character).

    Images are inverted to ink = 1.0 on a 0.0 background, resized from 105x105 with an
    antialiased bilinear filter, float32 NHWC in [0, 1]. Decoded arrays are cached in memory
    per file, so loading the same file again is instant.

    The files are those of github.com/brendenlake/omniglot (`python/*.zip`), the ones TFDS'
    `omniglot` builder downloads; a file with a known name is checked against TFDS' sha256.

    Args:
        path: a zip file, or a directory holding the file(s) named by `subset`, or a list of
            zip files (for example the background and evaluation sets: 50 alphabets).
        subset: with a directory `path`: which file(s) to read, one or a list of
            "small1" (default: 5 alphabets, 136 characters), "small2", "background"
            (30 alphabets), "evaluation" (20 alphabets). Ignored for file paths.
        alphabets: names of the alphabets to load, in this order (for example
            `["Greek", "Latin"]`). Defaults to all alphabets found, sorted by name.
        image_size: side of the square images; `None` keeps 105. Defaults to 28.
        channels: 1 (default) or 3 (the grey image repeated).

    Returns:
        A `MultiDomainData` held in memory.

    Raises:
        FileNotFoundError: a file is missing (the message says where to get it).
        ValueError: a file is corrupt, truncated or fails its checksum, or holds no images.

    Example:

    >>> data = load_omniglot_domains("data/omniglot/images_background_small1.zip")
    >>> data.names
    ('Balinese', 'Early_Aramaic', 'Greek', 'Korean', 'Latin')
    """
    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels!r}")
    size = 105 if image_size is None else int(image_size)
    if size < 1:
        raise ValueError(f"`image_size` must be positive. Received: image_size={image_size}")
    per_alphabet = {}
    for file in _resolve_files(path, subset):
        for alphabet, value in _read_zip(*_file_key(file), size).items():
            if alphabet in per_alphabet:
                raise ValueError(
                    f"Alphabet {alphabet!r} appears in more than one file; pass files with "
                    f"disjoint alphabets (e.g. small1 is part of background). Received: "
                    f"path={path!r}"
                )
            per_alphabet[alphabet] = value
    names = check_domain_selection(alphabets, sorted(per_alphabet), "alphabets")
    sources, num_classes = [], []
    for name in names:
        images, characters, drawers = per_alphabet[name]
        arrays = {}
        for split, split_drawers in DRAWER_SPLITS.items():
            mask = np.isin(drawers, list(split_drawers))
            split_images = images[mask]
            if channels == 3:
                split_images = np.repeat(split_images, 3, axis=-1)
            arrays[split] = (split_images, characters[mask])
        sources.append(ArraySource(arrays))
        num_classes.append(int(characters.max()) + 1)
    return MultiDomainData(
        names,
        num_classes,
        (size, size, channels),
        sources,
        description=f"Omniglot, {len(names)} alphabets",
    )


def load_omniglot_domains_tfds(
    split="small1",
    alphabets=None,
    image_size=28,
    channels=1,
    data_dir=None,
    download=False,
    seed=0,
):
    """Loads Omniglot alphabets as domains through TFDS (`tfds.load("omniglot")`).

    For users who are online (`download=True`) or have the dataset prepared in `data_dir`.
    Each alphabet is a domain over its own characters (ids 0..K-1 in the order of TFDS'
    `alphabet_char_id`). TFDS does not record the drawer of an image, so the split is a
    seeded shuffle of each character's drawings: 60 % train, 20 % validation, the rest test
    (12 / 4 / 4 for Omniglot's 20 drawings), unlike `load_omniglot_domains`, which splits
    by drawer.

    Args:
        split: the TFDS split: "small1" (default), "small2", "train" (background, 30
            alphabets) or "test" (evaluation, 20 alphabets).
        alphabets: names of the alphabets to load. Defaults to all present in `split`.
        image_size: side of the square images. Defaults to 28.
        channels: 1 (default) or 3.
        data_dir: TFDS data directory. Defaults to TFDS' default.
        download: call `download_and_prepare` first. Defaults to False.
        seed: seed of the per-character split. Defaults to 0.

    Returns:
        A `MultiDomainData` held in memory.
    """
    import tensorflow as tf
    import tensorflow_datasets as tfds

    if channels not in (1, 3):
        raise ValueError(f"`channels` must be 1 or 3. Received: channels={channels!r}")
    builder = tfds.builder("omniglot", data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    try:
        dataset = builder.as_dataset(split=split, shuffle_files=False)
    except Exception as error:  # TFDS raises AssertionError or ValueError, depending on cause
        raise RuntimeError(
            f"TFDS could not read omniglot split {split!r} from data_dir={data_dir!r}: {error}. "
            "Pass download=True when online, or read the zip files with "
            "load_omniglot_domains(path)."
        ) from error
    alphabet_names = builder.info.features["alphabet"].names
    size = int(image_size)

    def prepare(example):
        grey = tf.image.rgb_to_grayscale(tf.image.convert_image_dtype(example["image"], "float32"))
        image = tf.image.resize(1.0 - grey, (size, size), antialias=True)
        return image, example["alphabet"], example["alphabet_char_id"]

    images, alphabet_ids, char_ids = [], [], []
    for batch in tfds.as_numpy(dataset.map(prepare).batch(512)):
        images.append(batch[0])
        alphabet_ids.append(batch[1])
        char_ids.append(batch[2])
    if not images:
        raise ValueError(f"omniglot split {split!r} holds no examples")
    images = np.clip(np.concatenate(images), 0.0, 1.0).astype(np.float32)
    alphabet_ids, char_ids = np.concatenate(alphabet_ids), np.concatenate(char_ids)
    if channels == 3:
        images = np.repeat(images, 3, axis=-1)
    present = sorted({alphabet_names[a] for a in np.unique(alphabet_ids)})
    names = check_domain_selection(alphabets, present, "alphabets")
    rng = np.random.default_rng(seed)
    sources, num_classes = [], []
    for name in names:
        members = np.flatnonzero(alphabet_ids == alphabet_names.index(name))
        characters, labels = np.unique(char_ids[members], return_inverse=True)
        parts = {s: [] for s in DRAWER_SPLITS}
        for label in range(len(characters)):
            drawings = rng.permutation(members[labels == label])
            n_train = int(round(0.6 * len(drawings)))
            n_validation = int(round(0.2 * len(drawings)))
            parts["train"].append(drawings[:n_train])
            parts["validation"].append(drawings[n_train : n_train + n_validation])
            parts["test"].append(drawings[n_train + n_validation :])
        relabel = dict(zip(characters.tolist(), range(len(characters)), strict=True))
        arrays = {}
        for split_name, chunks in parts.items():
            chosen = np.sort(np.concatenate(chunks))
            arrays[split_name] = (
                images[chosen],
                np.asarray([relabel[c] for c in char_ids[chosen].tolist()], dtype=np.int32),
            )
        sources.append(ArraySource(arrays))
        num_classes.append(len(characters))
    return MultiDomainData(
        names,
        num_classes,
        (size, size, channels),
        sources,
        description=f"Omniglot (TFDS {split}), {len(names)} alphabets",
    )


def _resolve_files(path, subset):
    if isinstance(path, (list, tuple)):
        if not path:
            raise ValueError("`path` lists no files. Received: path=[]")
        return [_existing_file(os.fspath(p)) for p in path]
    path = os.fspath(path)
    if os.path.isdir(path):
        subsets = [subset] if isinstance(subset, str) else list(subset)
        for s in subsets:
            if s not in OMNIGLOT_FILES:
                raise ValueError(
                    f"`subset` must be one or a list of {list(OMNIGLOT_FILES)}. "
                    f"Received: subset={subset!r}"
                )
        return [_existing_file(os.path.join(path, OMNIGLOT_FILES[s][0])) for s in subsets]
    return [_existing_file(path)]


def _existing_file(path):
    if not os.path.isfile(path):
        name = os.path.basename(path)
        source = (
            f"Download it from {_URL}{name} "
            if name in _BY_FILE_NAME
            else f"The official files are {sorted(_BY_FILE_NAME)} at {_URL} "
        )
        raise FileNotFoundError(
            f"Omniglot file not found: {path!r}. {source}(the file TFDS' omniglot builder "
            "uses), or use load_omniglot_domains_tfds(download=True) when online."
        )
    return path


def _file_key(path):
    stat = os.stat(path)
    return os.path.realpath(path), stat.st_size, stat.st_mtime_ns


def _read_zip(path, file_size, mtime_ns, image_size):
    """{alphabet: (images (N, s, s, 1) float32, character ids (N,), drawers (N,))}."""
    result = {}
    for alphabet, (strokes, character_ids, drawers) in _decode_zip(
        path, file_size, mtime_ns
    ).items():
        ink = (~strokes).astype(np.float32)[..., None]
        if image_size != ink.shape[1]:
            ink = np.clip(resize_images(ink, image_size), 0.0, 1.0)
        result[alphabet] = (ink, character_ids, drawers)
    return result


@functools.lru_cache(maxsize=4)
def _decode_zip(path, file_size, mtime_ns):
    """{alphabet: (white background (N, 105, 105) bool, character ids (N,), drawers (N,))}."""
    del mtime_ns  # part of the cache key only: a rewritten file is read again
    _verify_checksum(path, file_size)
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        raise ValueError(
            f"Omniglot file {path!r} is not a readable zip file (corrupt or truncated: "
            f"{error}). Download it again from {_URL}{os.path.basename(path)}"
        ) from None
    entries = collections.defaultdict(list)
    with archive:
        try:
            for info in archive.infolist():
                match = _PNG_NAME.match(info.filename)
                if match:
                    alphabet, character, _, drawer = match.groups()
                    entries[alphabet].append(
                        (int(character), int(drawer), _decode_png(archive.read(info)))
                    )
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
            raise ValueError(
                f"Omniglot file {path!r} is corrupt ({error}). Download it again from "
                f"{_URL}{os.path.basename(path)}"
            ) from None
    if not entries:
        raise ValueError(
            f"{path!r} holds no Omniglot images (expected <set>/<alphabet>/characterNN/"
            "<id>_<drawer>.png entries)"
        )
    result = {}
    for alphabet, items in entries.items():
        items.sort(key=lambda item: (item[0], item[1]))
        strokes = np.stack([item[2] for item in items])
        _, character_ids = np.unique([item[0] for item in items], return_inverse=True)
        drawers = np.asarray([item[1] for item in items], dtype=np.int32)
        character_ids = character_ids.astype(np.int32)
        for array in (strokes, character_ids, drawers):
            array.flags.writeable = False  # cached and shared between loads
        result[alphabet] = (strokes, character_ids, drawers)
    return result


def _verify_checksum(path, file_size):
    name = os.path.basename(path)
    if name not in _BY_FILE_NAME:
        return
    expected_size, expected_digest = _BY_FILE_NAME[name]
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    if file_size != expected_size or digest.hexdigest() != expected_digest:
        raise ValueError(
            f"Omniglot file {path!r} does not match the official {name} (expected "
            f"{expected_size} bytes with sha256 {expected_digest}; received {file_size} bytes "
            f"with sha256 {digest.hexdigest()}): it is corrupt, truncated or a different file. "
            f"Download it again from {_URL}{name}"
        )


def _decode_png(data):
    try:
        from PIL import Image
    except ImportError:  # pillow is in the `datasets` extra; TensorFlow decodes too
        import tensorflow as tf

        return tf.io.decode_png(data, channels=1).numpy()[..., 0] > 127
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("L")) > 127
