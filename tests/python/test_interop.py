"""theus <-> the reference safetensors implementation (Python, Rust core).

theus writes files (tests/st_helper, $THEUS_ST_HELPER) that safetensors opens and
compares byte for byte with what theus reports; safetensors writes files that theus loads.
bf16 has no numpy dtype: its tensor is compared by raw bits through the header's offsets.
Run by .ci/test.d/30-durable-python.sh."""
import json
import os
import struct
import subprocess

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

HELPER = os.environ.get("THEUS_ST_HELPER")
pytestmark = pytest.mark.skipif(not HELPER, reason="THEUS_ST_HELPER not set")

NUMPY = {"b": np.bool_, "u8": np.uint8, "i8": np.int8, "u16": np.uint16, "i16": np.int16,
         "u32": np.uint32, "i32": np.int32, "u64": np.uint64, "i64": np.int64,
         "f16": np.float16, "f32": np.float32, "f64": np.float64}
SHAPES = {"b": (5,), "u8": (3, 2), "i8": (4,), "u16": (3,), "i16": (2, 2), "u32": (3,),
          "i32": (2, 1, 2), "u64": (2,), "i64": (), "f16": (6,), "bf16": (2, 3),
          "f32": (2, 3), "f64": (3,)}


def helper(*args):
    out = subprocess.run([HELPER, *args], check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def raw_header(path):
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        return json.loads(f.read(n)), 8 + n


def raw_tensor(path, name):
    header, start = raw_header(path)
    b, e = header[name]["data_offsets"]
    with open(path, "rb") as f:
        f.seek(start + b)
        return f.read(e - b)


def check_theus_file(path, dump, version):
    """Open a file theus wrote with the reference reader; compare with theus's dump."""
    with safe_open(path, framework="numpy") as f:
        keys = set(f.keys())
        assert keys == set(SHAPES), keys          # the signal field is not saved
        for name, dt in NUMPY.items():
            a = f.get_tensor(name)
            assert a.dtype == dt, (name, a.dtype)
            assert a.shape == SHAPES[name], (name, a.shape)
            assert a.tobytes() == bytes.fromhex(dump["fields"][name]), name
        meta = f.metadata()
    header, _ = raw_header(path)
    assert header["bf16"]["dtype"] == "BF16"
    assert header["bf16"]["shape"] == [2, 3]
    assert raw_tensor(path, "bf16") == bytes.fromhex(dump["fields"]["bf16"])
    assert meta["theus.format"] == "1"
    assert meta["theus.version"] == str(version)
    schema = json.loads(meta["theus.schema"])
    assert schema["name"] == "interop"
    assert schema["fields"]["bf16"]["dtype"] == "bf16"
    versions = json.loads(meta["theus.field_versions"])
    assert set(versions) == set(SHAPES)
    assert all(v == version for v in versions.values())


def test_theus_file_opens_in_safetensors(tmp_path):
    path = str(tmp_path / "theus.safetensors")
    dump = helper("save", path)
    assert dump["version"] == 3
    check_theus_file(path, dump, 3)


def test_safetensors_file_loads_in_theus(tmp_path):
    rng = np.random.default_rng(7)
    arrays = {}
    for name, dt in NUMPY.items():
        shape = SHAPES[name]
        if dt is np.bool_:
            arrays[name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            arrays[name] = rng.integers(info.min, info.max, size=shape, dtype=dt, endpoint=True)
        else:
            arrays[name] = rng.standard_normal(size=shape).astype(dt)
    arrays["extra"] = np.arange(3, dtype=np.float32)  # no such field: skipped by the helper
    path = str(tmp_path / "py.safetensors")
    save_file(arrays, path, metadata={"format": "np"})
    dump = helper("load", path)
    assert dump["version"] == 2                    # one transaction
    for name in NUMPY:
        assert bytes.fromhex(dump["fields"][name]) == np.ascontiguousarray(arrays[name]).tobytes(), name
    assert dump["fields"]["bf16"] == "00" * 12     # not in the file: untouched


def test_round_trip_through_both(tmp_path):
    """theus -> safetensors (load, save again) -> theus: the same bytes."""
    a = str(tmp_path / "a.safetensors")
    dump = helper("save", a)
    with safe_open(a, framework="numpy") as f:
        arrays = {k: f.get_tensor(k) for k in NUMPY}
    b = str(tmp_path / "b.safetensors")
    save_file(arrays, b)
    back = helper("load", b)
    for name in NUMPY:
        assert back["fields"][name] == dump["fields"][name], name


def test_checkpoints_open_in_safetensors(tmp_path):
    """A durable state's full checkpoint is a plain safetensors file; an incremental one is
    a valid safetensors file too (changed blocks as U8, their runs as U64)."""
    d = tmp_path / "state"
    out = subprocess.run([HELPER, "durable", str(d)], check=True, capture_output=True, text=True)
    full_dump, inc_dump = [json.loads(line) for line in out.stdout.splitlines()]
    assert full_dump["version"] == 3 and inc_dump["version"] == 4
    full = str(d / ("ckpt-%016x.safetensors" % 3))
    check_theus_file(full, full_dump, 3)
    with safe_open(full, framework="numpy") as f:
        meta = f.metadata()
    assert meta["theus.kind"] == "full"
    crcs = json.loads(meta["theus.crc32c"])
    assert set(crcs) == set(SHAPES)
    inc = str(d / ("ckpt-%016x.inc.safetensors" % 4))
    with safe_open(inc, framework="numpy") as f:
        meta = f.metadata()
        assert meta["theus.kind"] == "incremental"
        assert meta["theus.base"] == "3"
        assert meta["theus.version"] == "4"
        assert set(f.keys()) == {"u8", "u8.__blocks__"}      # only the field written since
        runs = f.get_tensor("u8.__blocks__")
        assert runs.dtype == np.uint64 and runs.tolist() == [[0, 1]]
        assert f.get_tensor("u8").tobytes() == bytes.fromhex(inc_dump["fields"]["u8"])
