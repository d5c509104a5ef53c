import struct

import numpy as np
import pytest

from keras_mdn.export import packs
from keras_mdn.export.packs import Pack, PackError, decode, encode, read_pack, write_pack

MODEL_ID = bytes(range(32))


def _pack(dtype="float32"):
    r = np.random.default_rng(0)
    tensors = {
        "conv1__adapter": r.normal(size=(3, 6)).astype("float32"),
        "conv1__scale": r.uniform(0.5, 1.5, size=(6,)).astype("float32"),
        "head__bias": np.array([0.5, -1.0, 2.0, 0.0], "float32"),
    }
    return Pack(MODEL_ID, 2, "signs", tensors, dtype=dtype, num_classes=3)


@pytest.mark.parametrize("dtype, atol", [("float32", 0.0), ("float16", 1e-3), ("int8", 2e-2)])
def test_round_trip(tmp_path, dtype, atol):
    pack = _pack(dtype)
    path = tmp_path / "p.mdnpack"
    size = write_pack(path, pack)
    assert size == path.stat().st_size
    loaded = read_pack(path)
    assert (loaded.model_id, loaded.domain, loaded.domain_name) == (MODEL_ID, 2, "signs")
    assert (loaded.dtype, loaded.num_classes, loaded.format_version) == (dtype, 3, 2)
    assert list(loaded.tensors) == list(pack.tensors)
    for name, value in pack.tensors.items():
        # Vectors are stored as float32 in every pack; matrices in the pack dtype.
        tolerance = 0.0 if value.ndim == 1 else atol * np.abs(value).max()
        np.testing.assert_allclose(loaded.tensors[name], value, atol=tolerance, rtol=0)


def test_header_layout_is_the_documented_one():
    data = encode(_pack("float16"))
    assert data[:8] == b"MDNPACK\x00"
    version, dtype, model_id, domain, classes, count, name_length = struct.unpack_from(
        "<HH32sIIIH", data, 8
    )
    assert (version, dtype, model_id, domain, classes, count) == (2, 1, MODEL_ID, 2, 3, 3)
    assert data[58 : 58 + name_length] == b"signs"
    offset = 58 + name_length
    (length,) = struct.unpack_from("<H", data, offset)
    assert data[offset + 2 : offset + 2 + length] == b"conv1__adapter"
    offset += 2 + length
    code, ndim = struct.unpack_from("<BB", data, offset)
    dims = struct.unpack_from("<2I", data, offset + 2)
    scale, nbytes = struct.unpack_from("<fQ", data, offset + 10)
    assert (code, ndim, dims, scale, nbytes) == (1, 2, (3, 6), 1.0, 3 * 6 * 2)
    start = offset + 22 + (-(offset + 22) % 16)
    values = np.frombuffer(data[start : start + nbytes], "<f2").reshape(3, 6)
    np.testing.assert_array_equal(values, _pack().tensors["conv1__adapter"].astype("float16"))


def test_bad_files_raise_pack_error():
    data = bytearray(encode(_pack()))
    with pytest.raises(PackError, match="bad magic"):
        decode(b"PK\x03\x04" + bytes(data[4:]))
    newer = bytearray(data)
    newer[8:10] = struct.pack("<H", 3)
    with pytest.raises(PackError, match="format version 3"):
        decode(bytes(newer))
    corrupt = bytearray(data)
    corrupt[-10] ^= 0xFF
    with pytest.raises(PackError, match="CRC"):
        decode(bytes(corrupt))


def test_check_rejects_another_model_and_other_shapes():
    pack = _pack()
    pack.check(MODEL_ID)
    pack.check(MODEL_ID.hex())
    with pytest.raises(PackError, match="belongs to model"):
        pack.check(bytes(32))
    specs = {name: value.shape for name, value in pack.tensors.items()}
    pack.check(MODEL_ID, specs)
    with pytest.raises(PackError, match="missing \\['final__offset'\\]"):
        pack.check(MODEL_ID, {**specs, "final__offset": (6,)})
    with pytest.raises(PackError, match="shape"):
        pack.check(MODEL_ID, {**specs, "conv1__scale": (7,)})
    pack.check(MODEL_ID, specs, domain=2)
    with pytest.raises(PackError, match=r"p.mdnpack holds domain 2 \('signs'\).*domain=1"):
        pack.check(MODEL_ID, specs, domain=1, source="p.mdnpack")


def test_model_digest_depends_on_weights_and_architecture():
    weights = [("w", np.ones((2, 2), "float32"))]
    digest = packs.model_digest("arch", weights)
    assert len(digest) == 32
    assert digest == packs.model_digest("arch", [("w", np.ones((2, 2), "float32"))])
    assert digest != packs.model_digest("arch2", weights)
    assert digest != packs.model_digest("arch", [("w", np.full((2, 2), 1.5, "float32"))])
