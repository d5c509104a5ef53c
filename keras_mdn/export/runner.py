"""Run exported TFLite layouts with the LiteRT interpreter (`ai-edge-litert`).

`load(path)` opens what `export_all` (or one of the layout exporters) wrote and returns an
object with `predict(images, domain)` -> logits `(batch, num_classes[domain])` as numpy:

- a directory written by `export_all`: its `manifest.json` says which layouts exist; pick
  one with `layout="fold_on_switch" | "swappable" | "multi_signature" | "folded"` (default:
  fold_on_switch where exported, else swappable);
- a multi-signature `.tflite`, a swappable base `.tflite`, or a fold-on-switch
  `template.tflite` with its `fold.tflite` beside it (with packs passed to `load_pack`).

The fold-on-switch runner refolds the template for a domain on a switch (run `fold.tflite`,
patch the template's bytes, build a new interpreter), as an app does; the swappable runner
keeps one interpreter and writes the pack through the model's `set_domain` signature. Both
switch once per domain change; each `predict` then feeds only the images. A pack whose
header names another model, another format version or another domain than the one asked
for raises `PackError`.

Nothing is trusted: `domain` must be an int of the export (not a bool or a float), `images` a
batch `(batch,) + input shape`, and an unreadable manifest or model file raises an error
naming the file.
"""

import os

import numpy as np

from keras_mdn.export import packs
from keras_mdn.export.bundle import MANIFEST, read_manifest
from keras_mdn.export.savedmodel import endpoint_name


def _interpreter(path, num_threads=None):
    from ai_edge_litert.interpreter import Interpreter

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No TFLite model file {path}.")
    try:
        return Interpreter(model_path=path, num_threads=num_threads)
    except (ValueError, RuntimeError) as error:
        raise ValueError(
            f"{path} is not a valid TFLite model (truncated or corrupt?): {error}"
        ) from error


def _single_output(outputs):
    if len(outputs) != 1:
        raise ValueError(f"Expected one output. Received: {sorted(outputs)}")
    return next(iter(outputs.values()))


def check_domain_argument(domain, domains):
    """`domain` as a Python int if it is an int among `domains`; raises otherwise."""
    if isinstance(domain, bool) or not isinstance(domain, (int, np.integer)):
        raise TypeError(
            f"`domain` must be an int. Received: domain={domain!r} of type "
            f"{type(domain).__name__}"
        )
    if int(domain) not in domains:
        raise ValueError(
            f"This export has no domain {domain}; it has domains {list(domains)}. "
            f"Received: domain={domain!r}"
        )
    return int(domain)


class _Runner:
    input_name = "image"

    def __init__(self, num_classes=None, input_name=None):
        self.num_classes = None if num_classes is None else list(num_classes)
        self.input_name = input_name or self.input_name
        self._expected = (None, None)  # (signature runner, its input shape): read once

    def _check_domain(self, domain):
        return check_domain_argument(domain, self.domains)

    def _images(self, images, runner):
        """`images` as float32 after checking them against the signature's input shape."""
        if self._expected[0] is not runner:
            detail = runner.get_input_details()[self.input_name]
            shape = tuple(int(d) for d in detail.get("shape_signature", detail["shape"]))
            self._expected = (runner, shape)
        expected = self._expected[1]
        images = np.asarray(images, dtype="float32")
        if images.ndim == len(expected) and images.shape[0] >= 1 and all(
            want in (-1, got) for want, got in zip(expected[1:], images.shape[1:])
        ):
            return images  # the common case, checked with as little Python as possible
        shown = "(batch, " + ", ".join(str(d) for d in expected[1:]) + ")"
        if images.ndim == len(expected) - 1 and images.shape == expected[1:]:
            raise ValueError(
                f"`images` must be a batch of shape {shown}; this is one image: add a batch "
                f"axis (`images[None]`). Received: images.shape={images.shape}"
            )
        if images.ndim != len(expected) or any(
            want not in (-1, got) for want, got in zip(expected[1:], images.shape[1:])
        ):
            raise ValueError(
                f"`images` must have shape {shown} for this export. "
                f"Received: images.shape={images.shape}"
            )
        if images.shape[0] < 1:
            raise ValueError(f"`images` is an empty batch. Received: images.shape={images.shape}")
        return images


class MultiSignatureModel(_Runner):
    """A multi-signature `.tflite`: signature `domain_<d>` per domain."""

    def __init__(self, path, num_classes=None, num_threads=None, input_name=None):
        super().__init__(num_classes, input_name)
        self.path = os.fspath(path)
        self.interpreter = _interpreter(path, num_threads)
        signatures = self.interpreter.get_signature_list()
        self.domains = sorted(
            int(name.split("_")[1]) for name in signatures
            if name.startswith("domain_") and name.split("_")[1].isdigit()
        )
        if not self.domains:
            raise ValueError(
                f"{self.path} has no `domain_<d>` signatures: not a keras_mdn multi-signature "
                f"model. Its signatures: {sorted(signatures)}"
            )
        self._runners = {}

    def predict(self, images, domain):
        domain = self._check_domain(domain)
        if domain not in self._runners:
            self._runners[domain] = self.interpreter.get_signature_runner(endpoint_name(domain))
        runner = self._runners[domain]
        outputs = runner(**{self.input_name: self._images(images, runner)})
        return _single_output(outputs)  # each signature has its domain's classes only


class FoldedModel(_Runner):
    """A directory of folded per-domain `domain_<d>[.<quantization>].tflite` files."""

    def __init__(self, paths, num_classes=None, num_threads=None, input_name=None):
        super().__init__(num_classes, input_name)
        self.paths = {int(d): os.fspath(p) for d, p in paths.items()}
        self.domains = sorted(self.paths)
        self.num_threads = num_threads
        self._runners = {}

    def predict(self, images, domain):
        domain = self._check_domain(domain)
        if domain not in self._runners:
            interpreter = _interpreter(self.paths[domain], self.num_threads)
            self._runners[domain] = interpreter.get_signature_runner(endpoint_name(domain))
        runner = self._runners[domain]
        outputs = runner(**{self.input_name: self._images(images, runner)})
        return _single_output(outputs)  # folded heads have the domain's classes only


class SwappableModel(_Runner):
    """The swappable base `.tflite` plus per-domain packs, switched without a reload.

    Args:
        path: the base `.tflite`.
        packs_by_domain: optional dict domain -> pack path (loaded lazily by `predict`).
        num_classes: optional list, to trim the padded logits to each domain's classes.
        num_threads: interpreter threads.
        input_name: name of the image input. Defaults to `"image"`.
    """

    def __init__(self, path, packs_by_domain=None, num_classes=None, num_threads=None,
                 input_name=None):
        from keras_mdn.export.tflite import (
            MODEL_ID_METADATA,
            SET_DOMAIN_SIGNATURE,
            SWAPPABLE_SIGNATURE,
            read_metadata,
        )

        super().__init__(num_classes, input_name)
        self.path = os.fspath(path)
        self.interpreter = _interpreter(self.path, num_threads)
        signatures = self.interpreter.get_signature_list()
        with open(self.path, "rb") as f:
            model_id = read_metadata(f.read(), MODEL_ID_METADATA)
        if model_id is None or {SWAPPABLE_SIGNATURE, SET_DOMAIN_SIGNATURE} - set(signatures):
            raise packs.PackError(
                f"{self.path} is not a keras_mdn swappable model (model id metadata and "
                f"signatures {SWAPPABLE_SIGNATURE!r}, {SET_DOMAIN_SIGNATURE!r} expected; it has "
                f"signatures {sorted(signatures)})."
            )
        self.model_id = bytes.fromhex(model_id.decode("ascii"))
        self.runner = self.interpreter.get_signature_runner(SWAPPABLE_SIGNATURE)
        self.set_domain_runner = self.interpreter.get_signature_runner(SET_DOMAIN_SIGNATURE)
        self.input_specs = {
            name: tuple(detail["shape"])
            for name, detail in self.set_domain_runner.get_input_details().items()
        }
        self.pack_paths = _pack_paths(packs_by_domain)
        self.domains = sorted(self.pack_paths)
        self.pack = None

    def load_pack(self, pack, domain=None):
        """Makes `pack` (a `Pack` or a path) the current domain; checks it first.

        Args:
            pack: a `Pack` or the path of a pack file.
            domain: optional int: the domain the pack must hold (a pack of another domain,
                e.g. copied under this domain's file name, raises `PackError`).

        Returns:
            The `Pack`.
        """
        pack = checked_pack(pack, self.model_id, self.input_specs, domain)
        self.set_domain_runner(**pack.tensors)  # written once; every predict reads it
        self.pack = pack
        return pack

    def predict(self, images, domain=None):
        """Logits for `images`; `domain` switches to that domain's pack first (if given)."""
        return _predict_with_packs(self, images, domain)


class FoldOnSwitchModel(_Runner):
    """The fold-on-switch layout: a folded template refolded for each domain from its pack.

    A domain switch does what an app does (`keras_mdn.export.fold_on_switch`): run
    `fold.tflite` once on the template's patched buffers and the pack, copy its outputs into
    a copy of the template's bytes at the offsets its patch table lists, and build a new
    interpreter from the patched bytes. Each `predict` then runs a plain folded network.

    Args:
        template_path: `template.tflite`.
        fold_path: `fold.tflite`.
        packs_by_domain: optional dict domain -> pack path (loaded lazily by `predict`).
        num_classes: optional list, to trim the padded logits to each domain's classes.
        num_threads: interpreter threads.
        input_name: name of the image input. Defaults to `"image"`.

    Attributes:
        switch_seconds: wall time of the last domain switch (fold, patch, new interpreter).
        switch_breakdown: dict `"fold"`, `"patch"`, `"interpreter"` -> seconds of it (the
            interpreter's part includes one batch-1 run that packs the weights).
    """

    def __init__(self, template_path, fold_path, packs_by_domain=None, num_classes=None,
                 num_threads=None, input_name=None):
        import hashlib

        from keras_mdn.export import fold_on_switch
        from keras_mdn.export.tflite import MODEL_ID_METADATA, read_metadata

        super().__init__(num_classes, input_name)
        self.path, self.fold_path = os.fspath(template_path), os.fspath(fold_path)
        self.num_threads = num_threads
        fold_interpreter = _interpreter(self.fold_path, num_threads)
        self.template = _read_bytes(self.path)
        fold_bytes = _read_bytes(self.fold_path)
        table = read_metadata(fold_bytes, fold_on_switch.PATCHES_METADATA)
        signatures = fold_interpreter.get_signature_list()
        if table is None or fold_on_switch.FOLD_SIGNATURE not in signatures:
            raise packs.PackError(
                f"{self.fold_path} is not a keras_mdn fold model (a patch table and signature "
                f"{fold_on_switch.FOLD_SIGNATURE!r} expected; it has signatures "
                f"{sorted(signatures)})."
            )
        self.patches, template_hash = fold_on_switch.decode_patches(table, self.fold_path)
        # Checked before the template is parsed: a truncated or other template fails here.
        if hashlib.sha256(self.template).hexdigest() != template_hash:
            raise packs.PackError(
                f"{self.path} is not the template {self.fold_path} was exported with "
                "(SHA-256 mismatch: another export, or a truncated or corrupt file): export "
                "and ship them together."
            )
        model_id = read_metadata(self.template, MODEL_ID_METADATA)
        if model_id is None:
            raise packs.PackError(f"{self.path} has no keras_mdn model id metadata.")
        self.model_id = bytes.fromhex(model_id.decode("ascii"))
        self.fold_runner = fold_interpreter.get_signature_runner(fold_on_switch.FOLD_SIGNATURE)
        self.input_specs = {
            name: tuple(detail["shape"]) for name, detail in
            fold_on_switch.pack_inputs(self.fold_runner.get_input_details()).items()
        }
        # The fold reads the template's own buffers: nothing is shipped twice.
        self._current = {
            fold_on_switch.TEMPLATE_INPUT + name: value
            for name, value in fold_on_switch.read_buffers(self.template, self.patches).items()
        }
        self.pack_paths = _pack_paths(packs_by_domain)
        self.domains = sorted(self.pack_paths)
        self.pack = None
        self.runner = None
        self.switch_seconds = None
        self.switch_breakdown = {}

    def load_pack(self, pack, domain=None):
        """Refolds the template for `pack` (a `Pack` or a path) and switches to it.

        Args:
            pack: a `Pack` or the path of a pack file.
            domain: optional int: the domain the pack must hold.

        Returns:
            The `Pack`.
        """
        import time

        from ai_edge_litert.interpreter import Interpreter

        from keras_mdn.export import fold_on_switch
        from keras_mdn.export.fold_on_switch import TEMPLATE_SIGNATURE

        pack = checked_pack(pack, self.model_id, self.input_specs, domain)
        times = [time.perf_counter()]
        buffers = self.fold_runner(**self._current, **pack.tensors)
        times.append(time.perf_counter())
        self._model = fold_on_switch.patch(self.template, buffers, self.patches)
        times.append(time.perf_counter())
        interpreter = Interpreter(model_content=self._model, num_threads=self.num_threads)
        self.runner = interpreter.get_signature_runner(TEMPLATE_SIGNATURE)
        self.runner(**{self.input_name: np.zeros(
            (1,) + tuple(self.runner.get_input_details()[self.input_name]["shape"][1:]),
            "float32")})  # allocates and packs the weights now, not at the first predict
        times.append(time.perf_counter())
        self.switch_seconds = times[-1] - times[0]
        self.switch_breakdown = dict(zip(("fold", "patch", "interpreter"), np.diff(times)))
        self.interpreter, self.pack = interpreter, pack
        self._expected = (None, None)  # lets the old interpreter go
        return pack

    def predict(self, images, domain=None):
        """Logits for `images`; `domain` switches to that domain's pack first (if given)."""
        return _predict_with_packs(self, images, domain)


def _read_bytes(path):
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No TFLite model file {path}.")
    with open(path, "rb") as f:
        return f.read()


def _pack_paths(packs_by_domain):
    paths = {}
    for domain, pack_path in (packs_by_domain or {}).items():
        if isinstance(domain, bool) or not isinstance(domain, (int, np.integer)):
            raise TypeError(
                f"`packs_by_domain` must map int domains to paths. Received key {domain!r}"
            )
        paths[int(domain)] = os.fspath(pack_path)
    return paths


def load(path, layout=None, num_threads=None, quantization=None):
    """Opens an export for inference with the LiteRT interpreter.

    Args:
        path: a directory written by `export_all`, or a `.tflite` file.
        layout: for a directory: `"fold_on_switch"`, `"swappable"`, `"multi_signature"` or
            `"folded"`. Defaults to `"fold_on_switch"` where the export has it for
            `quantization` (the base network's latency; a switch costs a refold and a new
            interpreter), else `"swappable"` (a switch writes the pack into the model's
            variables; every call then runs slower than the base network).
        num_threads: interpreter threads. Defaults to LiteRT's default.
        quantization: pick the layout's variant with this quantisation (as exported).

    Returns:
        A `FoldOnSwitchModel`, `SwappableModel`, `MultiSignatureModel` or `FoldedModel`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        manifest = read_manifest(path)
        manifest_path = os.path.join(path, MANIFEST)
        if layout is None:
            fast = manifest["layouts"].get("fold_on_switch", {})
            layout = "fold_on_switch" if str(quantization) in fast else "swappable"
        variants = manifest["layouts"].get(layout)
        if variants is None:
            raise ValueError(
                f"`layout` must be one of {sorted(manifest['layouts'])} for this export. "
                f"Received: layout={layout!r}"
            )
        key = str(quantization)
        if key not in variants:
            raise ValueError(
                f"The {layout} layout was exported with quantization {sorted(variants)}. "
                f"Received: quantization={quantization!r}"
            )
        entry = variants[key]
        kwargs = dict(num_classes=manifest.get("num_classes"), num_threads=num_threads,
                      input_name=manifest["input"]["name"])

        def resolve(field):
            if field not in entry:
                raise ValueError(
                    f"{manifest_path}: layout {layout!r} ({key}) has no {field!r} entry."
                )
            value = entry[field]
            try:
                if isinstance(value, dict):
                    return {int(d): os.path.join(path, p) for d, p in value.items()}
                return os.path.join(path, value)
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"{manifest_path}: layout {layout!r} ({key}) has a malformed {field!r} "
                    f"entry {value!r}."
                ) from error

        if layout == "fold_on_switch":
            return FoldOnSwitchModel(resolve("template"), resolve("fold"), resolve("packs"),
                                     **kwargs)
        if layout == "swappable":
            return SwappableModel(resolve("base"), resolve("packs"), **kwargs)
        if layout == "multi_signature":
            return MultiSignatureModel(resolve("path"), **kwargs)
        return FoldedModel(resolve("paths"), **kwargs)
    from keras_mdn.export.fold_on_switch import TEMPLATE_SIGNATURE
    from keras_mdn.export.tflite import SWAPPABLE_SIGNATURE

    signatures = _interpreter(path).get_signature_list()
    if TEMPLATE_SIGNATURE in signatures:  # its fold.tflite lies beside it
        fold_path = os.path.join(os.path.dirname(path), "fold.tflite")
        return FoldOnSwitchModel(path, fold_path, num_threads=num_threads)
    if SWAPPABLE_SIGNATURE in signatures:
        return SwappableModel(path, num_threads=num_threads)
    return MultiSignatureModel(path, num_threads=num_threads)


def checked_pack(pack, model_id, specs, domain=None):
    """`pack` (a `Pack` or the path of a pack file), checked against a model's id and tensors."""
    source = "pack" if isinstance(pack, packs.Pack) else os.fspath(pack)
    if not isinstance(pack, packs.Pack):
        pack = packs.read_pack(pack)
    pack.check(model_id, specs, domain=domain, source=source)
    return pack


def _predict_with_packs(model, images, domain):
    """`predict` of the pack-based runners: switch to `domain`'s pack if asked, then run."""
    current = type(domain) is int and model.pack is not None and domain == model.pack.domain
    if domain is not None and not current:
        loaded = [] if model.pack is None else [model.pack.domain]
        domain = check_domain_argument(domain, sorted(set(model.domains + loaded)))
        if model.pack is None or model.pack.domain != domain:
            model.load_pack(model.pack_paths[domain], domain=domain)
    if model.pack is None:
        raise ValueError("No pack loaded: call load_pack(path) or pass `domain`.")
    outputs = model.runner(**{model.input_name: model._images(images, model.runner)})
    logits = _single_output(outputs)
    return logits[:, : model.pack.num_classes] if model.pack.num_classes else logits
