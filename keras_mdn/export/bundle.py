"""`export_all`: every export layout of a multi-domain model in one folder, with a manifest.

`manifest.json` says what is where; `read_manifest` reads it back (for
`keras_mdn.export.load`), checking it and naming the file in every error.
"""

import json
import os
import warnings

from keras_mdn.export import packs
from keras_mdn.export.fold_on_switch import (
    FOLD_SIGNATURE,
    TEMPLATE_SIGNATURE,
    export_fold_on_switch_tflite,
)
from keras_mdn.export.quantization import QUANTIZATIONS
from keras_mdn.export.savedmodel import export_saved_model
from keras_mdn.export.swappable import SwappablePlan
from keras_mdn.export.tflite import (
    SET_DOMAIN_SIGNATURE,
    SWAPPABLE_SIGNATURE,
    export_folded_tflite,
    export_multi_signature_tflite,
    export_swappable_tflite,
)

MANIFEST = "manifest.json"
LAYOUTS = ("saved_model", "folded", "multi_signature", "swappable", "fold_on_switch")


def export_all(model, directory, domains=None, domain_names=None, quantizations=(None,),
               representative_data=None, pack_dtype="float32", layouts=None):
    """Writes every export of a multi-domain model into `directory`, with a manifest.

    Layout of `directory`:

        manifest.json                     what is where (read by `keras_mdn.export.load`)
        saved_model/                      endpoints domain_<d> and domain_index
        folded/domain_<d>[.<q>].tflite    one folded model per domain
        multi_signature[.<q>].tflite      one file, a signature per domain
        swappable/swappable[.<q>].tflite  the base model: signatures set_domain and swappable
        swappable/domain_<d>.mdnpack      one pack per domain (read by both swappable layouts)
        fold_on_switch/template.tflite    a folded network refolded per domain (float32 only)
        fold_on_switch/fold.tflite        computes a domain's buffers from its pack

    Args:
        model: functional multi-domain model (inputs `"image"` and `"domain"`).
        directory: output directory (created). The files an earlier `export_all` listed in
            its manifest there are removed first, so no stale layout stays beside the new.
        domains: domains to export (ints). Defaults to all. A list of strings is read as
            `domain_names` (all domains exported).
        domain_names: optional list of names, one per domain of the model (stored in the
            packs and the manifest).
        quantizations: TFLite quantisations to write, each of `None`, `"float16"`,
            `"dynamic_range"`, `"int8"`. Defaults to `(None,)` (float32 only).
        representative_data: images `(N, H, W, C)` or `{domain: images}`; needed for `"int8"`.
        pack_dtype: storage dtype of the pack matrices: `"float32"`, `"float16"` or `"int8"`.
            Defaults to `"float32"`.
        layouts: which of `"saved_model"`, `"folded"`, `"multi_signature"`, `"swappable"`,
            `"fold_on_switch"` (written for the float32 variant, `None` in `quantizations`).
            Defaults to all; then a model whose fold the fold-on-switch layout cannot
            refold (e.g. a user-written domain layer) gets the others and a warning, while
            naming `"fold_on_switch"` explicitly raises.

    Returns:
        The manifest (dict), also written to `directory/manifest.json`.

    Example:

    >>> export_all(model, "saved_models/digits_export", quantizations=(None, "float16"))
    >>> keras_mdn.export.load("saved_models/digits_export").predict(images, domain=2)
    """
    from keras_mdn.export.savedmodel import check_domains, input_spec
    from keras_mdn.layers.domain_layer import domain_layers
    from keras_mdn.surgery.graph import FunctionalGraph

    if domains is not None and not isinstance(domains, int) and domains and all(
        isinstance(d, str) for d in domains
    ):
        domain_names, domains = list(domains), None
    optional = layouts is None  # fold_on_switch is skipped (with a warning) if unsupported
    layouts = LAYOUTS if layouts is None else layouts
    unknown = set(layouts) - set(LAYOUTS)
    if unknown:
        raise ValueError(f"`layouts` must be among {LAYOUTS}. Received: layouts={layouts!r}")
    quantizations = list(quantizations)
    for quantization in quantizations:
        if quantization not in QUANTIZATIONS:
            raise ValueError(
                f"`quantizations` must be among {QUANTIZATIONS}. "
                f"Received: quantizations={quantizations!r}"
            )
    graph = FunctionalGraph(model)
    domains = check_domains(domains, graph.num_domains)
    heads = [layer for layer in domain_layers(model)
             if isinstance(getattr(layer, "num_classes", None), (list, tuple))]
    name, spec = input_spec(graph)
    os.makedirs(directory, exist_ok=True)
    _remove_previous_export(directory)
    manifest = {
        "format": packs.FORMAT_VERSION,
        "model": model.name,
        "num_domains": graph.num_domains,
        "domains": domains,
        "domain_names": None if domain_names is None else [str(n) for n in domain_names],
        "num_classes": list(heads[0].num_classes) if len(heads) == 1 else None,
        "input": {"name": name, "shape": list(spec.shape[1:]), "dtype": spec.dtype.name},
        "layouts": {},
    }

    def relative(path):
        return os.path.relpath(path, directory)

    saved_model_dir = None
    if "saved_model" in layouts or "multi_signature" in layouts:
        saved_model_dir = export_saved_model(model, os.path.join(directory, "saved_model"),
                                             domains)
        if "saved_model" in layouts:
            manifest["saved_model"] = "saved_model"
    swapped = {"swappable", "fold_on_switch"} & set(layouts)
    plan = SwappablePlan(model) if swapped else None
    pack_paths = None
    for index, quantization in enumerate(quantizations):
        key = str(quantization)
        suffix = "" if quantization is None else f".{quantization}"
        if "folded" in layouts:
            paths = export_folded_tflite(model, os.path.join(directory, "folded"), domains,
                                         quantization, representative_data)
            manifest["layouts"].setdefault("folded", {})[key] = {
                "paths": {str(d): relative(p) for d, p in paths.items()}
            }
        if "multi_signature" in layouts:
            path = export_multi_signature_tflite(
                model, os.path.join(directory, f"multi_signature{suffix}.tflite"), domains,
                quantization, representative_data, saved_model_dir=saved_model_dir,
            )
            manifest["layouts"].setdefault("multi_signature", {})[key] = {"path": relative(path)}
        if "swappable" in layouts:
            written = export_swappable_tflite(
                model, os.path.join(directory, "swappable"), domains, quantization,
                representative_data, pack_dtype, domain_names, plan, write_packs=index == 0,
            )
            if index == 0:
                pack_paths = {str(d): relative(p) for d, p in written["packs"].items()}
            manifest["layouts"].setdefault("swappable", {})[key] = {
                "base": relative(written["base"]),
                "packs": pack_paths,
                "pack_dtype": pack_dtype,
                "model_id": written["model_id"],
                "reference_domain": plan.reference_domain,
                "signatures": {"set_domain": SET_DOMAIN_SIGNATURE,
                               "inference": SWAPPABLE_SIGNATURE},
            }
    written = None
    if "fold_on_switch" in layouts and None in quantizations:
        try:
            written = export_fold_on_switch_tflite(
                model, os.path.join(directory, "fold_on_switch"), domains, pack_dtype,
                domain_names, plan, write_packs=pack_paths is None,
            )
        except ValueError as error:
            if not optional:
                raise
            warnings.warn(f"export_all: the fold_on_switch layout is skipped: {error}",
                          stacklevel=2)
    if written is not None:
        if pack_paths is None:
            pack_paths = {str(d): relative(p) for d, p in written["packs"].items()}
        manifest["layouts"]["fold_on_switch"] = {"None": {
            "template": relative(written["template"]),
            "fold": relative(written["fold"]),
            "packs": pack_paths,
            "pack_dtype": pack_dtype,
            "model_id": written["model_id"],
            "reference_domain": plan.reference_domain,
            "signatures": {"fold": FOLD_SIGNATURE, "inference": TEMPLATE_SIGNATURE},
        }}
    with open(os.path.join(directory, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
    return manifest


def _remove_previous_export(directory):
    """Deletes what an earlier `export_all` listed in `directory`'s manifest (and the manifest).

    A layout not written this time would otherwise stay beside the new files, stale. Only
    the manifest's own paths inside `directory` are removed, never other files; an unreadable
    manifest is left alone (and overwritten).
    """
    import shutil

    try:
        manifest = read_manifest(directory)
    except (FileNotFoundError, ValueError):
        return
    paths = [manifest.get("saved_model")]
    for variants in manifest["layouts"].values():
        for entry in (variants.values() if isinstance(variants, dict) else ()):
            if not isinstance(entry, dict):
                continue
            paths += [entry.get(key) for key in ("path", "base", "template", "fold")]
            for key in ("paths", "packs"):
                if isinstance(entry.get(key), dict):
                    paths += list(entry[key].values())
    root = os.path.realpath(directory)
    parents = set()
    for path in paths:
        if not isinstance(path, str):
            continue
        full = os.path.realpath(os.path.join(directory, path))
        if os.path.commonpath([root, full]) != root or full == root:
            continue
        if os.path.isdir(full):
            shutil.rmtree(full)
        elif os.path.isfile(full):
            os.remove(full)
        else:
            continue
        parents.add(os.path.dirname(full))
    for parent in sorted(parents, reverse=True):
        if parent != root and os.path.isdir(parent) and not os.listdir(parent):
            os.rmdir(parent)
    os.remove(os.path.join(directory, MANIFEST))


def read_manifest(directory):
    """The manifest of an `export_all` directory; raises an error naming the file if bad."""
    path = os.path.join(directory, MANIFEST)
    if not os.path.exists(path):
        raise FileNotFoundError(f"No {MANIFEST} in {directory}: not written by export_all.")
    try:
        with open(path, encoding="utf-8") as f:
            manifest = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    if not isinstance(manifest, dict):
        raise ValueError(f"{path} must hold a JSON object. Received: {type(manifest).__name__}")
    for key, kind in (("layouts", dict), ("input", dict)):
        if not isinstance(manifest.get(key), kind):
            raise ValueError(
                f"{path} is not a keras_mdn manifest: key {key!r} missing or not an object."
            )
    if not isinstance(manifest["input"].get("name"), str):
        raise ValueError(f"{path} is not a keras_mdn manifest: no input name.")
    return manifest
