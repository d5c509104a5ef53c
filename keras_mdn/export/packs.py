"""The domain pack file: one domain's runtime parameters for a swappable TFLite model.

A pack holds the tensors that the swappable base model (`swappable.tflite`) takes as inputs
of its `set_domain` signature: adapter matrices, batch-norm scales and offsets, the head's
kernel and bias, each as the difference from the model's reference values (version 2), so an
all-zero pack gives the base network: no adapters, the reference domain's batch norms and
head (see `keras_mdn.export.swappable`).

The header names the model the pack belongs to, so loading a pack for another model, another
export of it or another format version fails loudly instead of giving wrong outputs.

Binary layout (all integers little-endian, no padding unless stated):

| offset | size | field                                                               |
|-------:|-----:|---------------------------------------------------------------------|
| 0      | 8    | magic `b"MDNPACK\\0"`                                                |
| 8      | 2    | uint16 format version (`FORMAT_VERSION`, now 2)                     |
| 10     | 2    | uint16 pack dtype code: dtype of the matrices (0 f32, 1 f16, 2 i8)  |
| 12     | 32   | model id: SHA-256 of the base model's architecture and shared weights |
| 44     | 4    | uint32 domain index                                                 |
| 48     | 4    | uint32 number of classes of the domain: the app reads the first     |
|        |      | `num_classes` logits of the model's output (0: use them all)        |
| 52     | 4    | uint32 number of tensors N                                          |
| 56     | 2    | uint16 byte length L of the domain name, then L bytes of UTF-8      |

then N tensor records, each:

| size   | field                                                                   |
|-------:|-------------------------------------------------------------------------|
| 2      | uint16 byte length K of the name, then K bytes of UTF-8 (the base model's input name) |
| 1      | uint8 dtype code of this tensor (0 float32, 1 float16, 2 int8)           |
| 1      | uint8 number of dimensions D                                             |
| 4 * D  | uint32 dimensions                                                        |
| 4      | float32 scale: an int8 tensor's real value is `scale * q` (1.0 otherwise) |
| 8      | uint64 byte length B of the data                                         |
| 0-15   | zero padding so that the data starts at a multiple of 16 bytes           |
| B      | the values, row-major (C order), little-endian                           |

and finally a uint32 CRC-32 (zlib/PNG polynomial) of every preceding byte.

Matrices (rank >= 2: adapters, head kernel) take the pack dtype; vectors (scales, offsets,
biases) stay float32 in every pack (they are tiny and carry most of the per-channel range).
The app converts every tensor to float32 before feeding the model. The swappable model always
outputs `max(num_classes)` logits; those past the domain's `num_classes` are 0 (not the Keras
head's -1e9 padding, which would wreck the output scale of an int8 model), so the app must
read only the first `num_classes`.
"""

import hashlib
import struct
import zlib

import numpy as np

MAGIC = b"MDNPACK\x00"
FORMAT_VERSION = 2
DTYPE_CODES = {"float32": 0, "float16": 1, "int8": 2}
DTYPES = {code: name for name, code in DTYPE_CODES.items()}
_HEADER = struct.Struct("<8sHH32sIII")
_ALIGN = 16


class PackError(ValueError):
    """A pack file that is corrupt or does not belong to the model it is loaded for."""


class Pack:
    """One domain's runtime parameters.

    Attributes:
        model_id: 32-byte SHA-256 digest identifying the base model (architecture and shared
            weights) the pack belongs to.
        domain: int, the domain index.
        domain_name: str.
        num_classes: int, number of valid logits of the domain (0: all).
        dtype: `"float32"`, `"float16"` or `"int8"`: the storage dtype of the matrices.
        tensors: dict name -> float32 numpy array (dequantised values), in file order.
        format_version: int.
    """

    def __init__(self, model_id, domain, domain_name, tensors, dtype="float32",
                 num_classes=0, format_version=FORMAT_VERSION):
        if dtype not in DTYPE_CODES:
            raise ValueError(
                f"`dtype` must be one of {list(DTYPE_CODES)}. Received: dtype={dtype!r}"
            )
        if len(model_id) != 32:
            raise ValueError(f"`model_id` must be 32 bytes. Received: {len(model_id)} bytes")
        self.model_id = bytes(model_id)
        self.domain = int(domain)
        self.domain_name = str(domain_name)
        self.num_classes = int(num_classes)
        self.tensors = {name: np.asarray(value, dtype="float32") for name, value in tensors.items()}
        self.dtype = dtype
        self.format_version = format_version

    def check(self, model_id, input_specs=None, domain=None, source="pack"):
        """Raises `PackError` unless the pack fits a model with `model_id` and inputs.

        Args:
            model_id: the base model's id (bytes or hex string).
            input_specs: optional dict name -> shape of the base model's pack inputs: the
                pack must hold exactly these tensors (each one consumed by the model).
            domain: optional int, the domain the pack must hold.
            source: how to name the pack in errors (its file). Defaults to `"pack"`.
        """
        if isinstance(model_id, str):
            model_id = bytes.fromhex(model_id)
        if self.model_id != model_id:
            raise PackError(
                f"{source}: pack for domain {self.domain} ({self.domain_name!r}) belongs to "
                f"model {self.model_id.hex()[:16]}..., not to this model "
                f"{model_id.hex()[:16]}...: export the packs and the base model together."
            )
        if domain is not None and self.domain != domain:
            raise PackError(
                f"{source} holds domain {self.domain} ({self.domain_name!r}), not the domain "
                f"asked for. Received: domain={domain!r}"
            )
        if input_specs is not None:
            missing = sorted(set(input_specs) - set(self.tensors))
            extra = sorted(set(self.tensors) - set(input_specs))
            if missing or extra:
                raise PackError(
                    f"{source}: pack tensors do not match the model: missing {missing}, "
                    f"extra {extra}"
                )
            for name, shape in input_specs.items():
                if tuple(self.tensors[name].shape) != tuple(shape):
                    raise PackError(
                        f"{source}: pack tensor {name!r} has shape {self.tensors[name].shape}, "
                        f"the model expects {tuple(shape)}"
                    )
            for name, value in self.tensors.items():
                if not np.all(np.isfinite(value)):
                    raise PackError(f"{source}: pack tensor {name!r} holds NaN or inf values.")

    def nbytes(self):
        return len(encode(self))


def model_digest(architecture, shared_weights):
    """SHA-256 of an architecture description (str) and named shared weights.

    Args:
        architecture: a string describing the graph and the pack inputs.
        shared_weights: iterable of `(name, numpy array)`.
    """
    digest = hashlib.sha256()
    digest.update(architecture.encode("utf-8"))
    for name, value in shared_weights:
        value = np.ascontiguousarray(value)
        digest.update(name.encode("utf-8"))
        digest.update(str((value.dtype.str, value.shape)).encode("utf-8"))
        digest.update(value.tobytes())
    return digest.digest()


def _store(value, dtype):
    """The stored dtype code, scale and bytes of one float32 tensor."""
    if value.ndim < 2 or dtype == "float32":
        return DTYPE_CODES["float32"], 1.0, value.astype("<f4").tobytes()
    if dtype == "float16":
        return DTYPE_CODES["float16"], 1.0, value.astype("<f2").tobytes()
    # Symmetric per-tensor int8: q = round(v / scale), scale = max|v| / 127.
    peak = float(np.max(np.abs(value))) if value.size else 0.0
    scale = peak / 127.0 if peak > 0 else 1.0
    q = np.clip(np.round(value / scale), -127, 127).astype("i1")
    return DTYPE_CODES["int8"], scale, q.tobytes()


def encode(pack):
    """The bytes of a pack file."""
    name = pack.domain_name.encode("utf-8")
    out = bytearray(
        _HEADER.pack(
            MAGIC, pack.format_version, DTYPE_CODES[pack.dtype], pack.model_id, pack.domain,
            pack.num_classes, len(pack.tensors),
        )
    )
    out += struct.pack("<H", len(name)) + name
    for tensor_name, value in pack.tensors.items():
        encoded_name = tensor_name.encode("utf-8")
        code, scale, data = _store(value, pack.dtype)
        out += struct.pack("<H", len(encoded_name)) + encoded_name
        out += struct.pack("<BB", code, value.ndim)
        out += struct.pack(f"<{value.ndim}I", *value.shape)
        out += struct.pack("<fQ", scale, len(data))
        out += b"\x00" * (-len(out) % _ALIGN)
        out += data
    out += struct.pack("<I", zlib.crc32(bytes(out)) & 0xFFFFFFFF)
    return bytes(out)


def write_pack(path, pack):
    """Writes `pack` to `path`; returns the number of bytes written."""
    data = encode(pack)
    with open(path, "wb") as f:
        f.write(data)
    return len(data)


def decode(data, source="<bytes>"):
    """Parses pack bytes; raises `PackError` naming the problem."""
    if len(data) < _HEADER.size + 6 or data[:8] != MAGIC:
        raise PackError(f"{source} is not a keras_mdn pack (bad magic {bytes(data[:8])!r}).")
    magic, version, dtype_code, model_id, domain, num_classes, count = _HEADER.unpack_from(
        data, 0
    )
    if version != FORMAT_VERSION:
        raise PackError(
            f"{source} has pack format version {version}; this reader supports version "
            f"{FORMAT_VERSION}. Re-export the packs with the same keras_mdn version as the model."
        )
    (crc,) = struct.unpack_from("<I", data, len(data) - 4)
    if zlib.crc32(bytes(data[:-4])) & 0xFFFFFFFF != crc:
        raise PackError(f"{source} is corrupt (CRC-32 mismatch).")
    if dtype_code not in DTYPES:
        raise PackError(f"{source} has an unknown pack dtype code {dtype_code}.")
    offset = _HEADER.size
    (length,) = struct.unpack_from("<H", data, offset)
    domain_name = bytes(data[offset + 2 : offset + 2 + length]).decode("utf-8")
    offset += 2 + length
    tensors = {}
    for _ in range(count):
        (length,) = struct.unpack_from("<H", data, offset)
        name = bytes(data[offset + 2 : offset + 2 + length]).decode("utf-8")
        offset += 2 + length
        code, ndim = struct.unpack_from("<BB", data, offset)
        offset += 2
        shape = struct.unpack_from(f"<{ndim}I", data, offset)
        offset += 4 * ndim
        scale, nbytes = struct.unpack_from("<fQ", data, offset)
        offset += 12
        offset += -offset % _ALIGN
        if code not in DTYPES:
            raise PackError(f"{source}: tensor {name!r} has an unknown dtype code {code}.")
        dtype = {"float32": "<f4", "float16": "<f2", "int8": "i1"}[DTYPES[code]]
        values = np.frombuffer(bytes(data[offset : offset + nbytes]), dtype=dtype)
        if values.size != int(np.prod(shape, dtype=np.int64)):
            raise PackError(
                f"{source}: tensor {name!r} has {values.size} values for shape {shape}."
            )
        tensors[name] = values.reshape(shape).astype("float32") * np.float32(scale)
        offset += nbytes
    return Pack(model_id, domain, domain_name, tensors, DTYPES[dtype_code], num_classes, version)


def read_pack(path):
    """Reads a pack file written by `write_pack` (values as float32)."""
    with open(path, "rb") as f:
        return decode(f.read(), source=str(path))
