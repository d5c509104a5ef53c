"""Run exported TFLite layouts with the LiteRT interpreter (`ai-edge-litert`).

`load(path)` opens what `export_all` (or one of the layout exporters) wrote and returns an
object with `predict(images, domain)` -> logits `(batch, num_classes[domain])` as numpy:

- a directory written by `export_all`: its `manifest.json` says which layouts exist; pick
  one with `layout="swappable" | "multi_signature" | "folded"` (default: swappable);
- a multi-signature `.tflite`, a swappable base `.tflite` (with a directory of packs), or a
  directory of folded `domain_<d>.tflite` files.

The swappable runner keeps one interpreter and switches domain by feeding another pack, as an
app does; a pack whose header names another model or format version raises `PackError`.
"""

import json
import os

import numpy as np

from keras_mdn.export import packs
from keras_mdn.export.savedmodel import endpoint_name

MANIFEST = "manifest.json"


def _interpreter(path, num_threads=None):
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=os.fspath(path), num_threads=num_threads)


def _single_output(outputs):
    if len(outputs) != 1:
        raise ValueError(f"Expected one output. Received: {sorted(outputs)}")
    return next(iter(outputs.values()))


class _Runner:
    input_name = "image"

    def __init__(self, num_classes=None, input_name=None):
        self.num_classes = None if num_classes is None else list(num_classes)
        self.input_name = input_name or self.input_name

    def _check_domain(self, domain):
        if isinstance(domain, bool) or not isinstance(domain, (int, np.integer)):
            raise TypeError(f"`domain` must be an int. Received: domain={domain!r}")
        if int(domain) not in self.domains:
            raise ValueError(
                f"This export has no domain {domain}; it has domains {self.domains}. "
                f"Received: domain={domain}"
            )
        return int(domain)


class MultiSignatureModel(_Runner):
    """A multi-signature `.tflite`: signature `domain_<d>` per domain."""

    def __init__(self, path, num_classes=None, num_threads=None, input_name=None):
        super().__init__(num_classes, input_name)
        self.path = os.fspath(path)
        self.interpreter = _interpreter(path, num_threads)
        signatures = self.interpreter.get_signature_list()
        self.domains = sorted(
            int(name.split("_")[1]) for name in signatures if name.startswith("domain_")
        )
        self._runners = {}

    def predict(self, images, domain):
        domain = self._check_domain(domain)
        if domain not in self._runners:
            self._runners[domain] = self.interpreter.get_signature_runner(endpoint_name(domain))
        outputs = self._runners[domain](**{self.input_name: np.asarray(images, "float32")})
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
        outputs = self._runners[domain](**{self.input_name: np.asarray(images, "float32")})
        return _single_output(outputs)  # folded heads have the domain's classes only


class SwappableModel(_Runner):
    """The swappable base `.tflite` plus per-domain packs, switched without a reload.

    Args:
        path: the base `.tflite`.
        packs_by_domain: optional dict domain -> pack path (loaded lazily by `predict`).
        num_classes: optional list, to trim the padded logits to each domain's classes.
        num_threads: interpreter threads.
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
        with open(self.path, "rb") as f:
            model_id = read_metadata(f.read(), MODEL_ID_METADATA)
        if model_id is None:
            raise packs.PackError(f"{self.path} is not a keras_mdn swappable model (no model id).")
        self.model_id = bytes.fromhex(model_id.decode("ascii"))
        self.interpreter = _interpreter(self.path, num_threads)
        self.runner = self.interpreter.get_signature_runner(SWAPPABLE_SIGNATURE)
        self.set_domain_runner = self.interpreter.get_signature_runner(SET_DOMAIN_SIGNATURE)
        self.input_specs = {
            name: tuple(detail["shape"])
            for name, detail in self.set_domain_runner.get_input_details().items()
        }
        self.pack_paths = dict(packs_by_domain or {})
        self.domains = sorted(self.pack_paths)
        self.pack = None

    def load_pack(self, pack):
        """Makes `pack` (a `Pack` or a path) the current domain; checks its header first."""
        if not isinstance(pack, packs.Pack):
            pack = packs.read_pack(pack)
        pack.check(self.model_id, self.input_specs)
        self.set_domain_runner(**pack.tensors)
        self.pack = pack
        return pack

    def predict(self, images, domain=None):
        """Logits for `images`; `domain` switches to that domain's pack first (if given)."""
        if domain is not None:
            domain = int(domain) if isinstance(domain, (int, np.integer)) else domain
            if self.pack is None or self.pack.domain != domain:
                if domain not in self.pack_paths:
                    raise ValueError(
                        f"No pack for domain {domain}; packs exist for domains {self.domains}. "
                        f"Received: domain={domain}"
                    )
                self.load_pack(self.pack_paths[domain])
        if self.pack is None:
            raise ValueError("No pack loaded: call load_pack(path) or pass `domain`.")
        outputs = self.runner(**{self.input_name: np.asarray(images, "float32")})
        logits = _single_output(outputs)
        return logits[:, : self.pack.num_classes] if self.pack.num_classes else logits


def load(path, layout="swappable", num_threads=None, quantization=None):
    """Opens an export for inference with the LiteRT interpreter.

    Args:
        path: a directory written by `export_all`, or a `.tflite` file.
        layout: for a directory: `"swappable"`, `"multi_signature"` or `"folded"`.
            Defaults to `"swappable"`.
        num_threads: interpreter threads. Defaults to LiteRT's default.
        quantization: pick the layout's variant with this quantisation (as exported).

    Returns:
        A `SwappableModel`, `MultiSignatureModel` or `FoldedModel`.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        manifest_path = os.path.join(path, MANIFEST)
        if not os.path.exists(manifest_path):
            raise FileNotFoundError(f"No {MANIFEST} in {path}: not written by export_all.")
        with open(manifest_path) as f:
            manifest = json.load(f)
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

        def resolve(p):
            return os.path.join(path, p)

        if layout == "swappable":
            packs_by_domain = {int(d): resolve(p) for d, p in entry["packs"].items()}
            return SwappableModel(resolve(entry["base"]), packs_by_domain, **kwargs)
        if layout == "multi_signature":
            return MultiSignatureModel(resolve(entry["path"]), **kwargs)
        return FoldedModel({int(d): resolve(p) for d, p in entry["paths"].items()}, **kwargs)
    from keras_mdn.export.tflite import SWAPPABLE_SIGNATURE

    signatures = _interpreter(path).get_signature_list()
    if SWAPPABLE_SIGNATURE in signatures:
        return SwappableModel(path, num_threads=num_threads)
    return MultiSignatureModel(path, num_threads=num_threads)
