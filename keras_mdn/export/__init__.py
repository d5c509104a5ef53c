"""Export of multi-domain models for servers and phones (TensorFlow only).

- `export_saved_model`: a SavedModel with an endpoint per domain and a generic one.
- `export_folded_tflite`, `export_multi_signature_tflite`, `export_swappable_tflite`: three
  TFLite layouts (built-in ops only), with optional post-training quantisation.
- `export_fold_on_switch_tflite`: the fast swappable layout, a folded template whose
  per-domain constants a domain switch refolds from the domain's pack (float32).
- `Pack`, `read_pack`, `write_pack`: the per-domain pack file of the swappable layout.
- `load`: runs an export with the LiteRT interpreter (`ai-edge-litert`).
- `export_all`: everything above into one folder, with a `manifest.json`.

Importing this module imports TensorFlow lazily (at the first export or load).
"""

from keras_mdn.export.bundle import LAYOUTS, MANIFEST, export_all, read_manifest
from keras_mdn.export.fold_on_switch import TemplatePlan, export_fold_on_switch_tflite
from keras_mdn.export.packs import FORMAT_VERSION, Pack, PackError, read_pack, write_pack
from keras_mdn.export.quantization import QUANTIZATIONS, TOLERANCES
from keras_mdn.export.runner import (
    FoldedModel,
    FoldOnSwitchModel,
    MultiSignatureModel,
    SwappableModel,
    load,
)
from keras_mdn.export.savedmodel import GENERIC_ENDPOINT, endpoint_name, export_saved_model
from keras_mdn.export.swappable import SwappablePlan
from keras_mdn.export.tflite import (
    export_folded_tflite,
    export_multi_signature_tflite,
    export_swappable_tflite,
    op_counts,
)

__all__ = [
    "FORMAT_VERSION",
    "GENERIC_ENDPOINT",
    "LAYOUTS",
    "MANIFEST",
    "QUANTIZATIONS",
    "TOLERANCES",
    "FoldOnSwitchModel",
    "FoldedModel",
    "MultiSignatureModel",
    "Pack",
    "PackError",
    "SwappableModel",
    "SwappablePlan",
    "TemplatePlan",
    "endpoint_name",
    "export_all",
    "export_fold_on_switch_tflite",
    "export_folded_tflite",
    "export_multi_signature_tflite",
    "export_saved_model",
    "export_swappable_tflite",
    "load",
    "op_counts",
    "read_manifest",
    "read_pack",
    "write_pack",
]
