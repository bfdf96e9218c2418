"""theusrt: Python bindings (ctypes) for theus, a transactional tensor state runtime.

    import numpy as np, theusrt
    st = theusrt.State({"fields": {"w": {"dtype": "f32", "shape": [4]}}})
    with st.transaction() as tx:
        tx.write("w", np.arange(4, dtype=np.float32))
    np.from_dlpack(st.view("w"))      # zero-copy, read-only

See docs/python.md in the theus repository. The library is found through $THEUS_LIBRARY
(a path to libtheus.so) or the dynamic loader's search path (LD_LIBRARY_PATH).
"""
from ._core import (DTYPES, PLACEMENTS, ZONES, AccessError, BusyError, ConflictError,
                    CorruptError, DeviceError, DurableInfo, FieldInfo, InvalidArgument,
                    NotFound, OutOfMemory, SchemaError, State, StorageError, TheusError,
                    Transaction, bf16_to_float32, float32_to_bf16, shared_remove)
from ._dlpack import FieldView
from . import _lib

__version__ = "0.1.0"


def gpu_available():
    """True when libtheus has its CUDA backend and a device answers."""
    return bool(_lib.gpu_available())


def library_path():
    """The path of the libtheus that was loaded."""
    return _lib.lib._name


__all__ = ["State", "Transaction", "FieldView", "FieldInfo", "TheusError", "InvalidArgument",
           "OutOfMemory", "ConflictError", "SchemaError", "AccessError", "NotFound",
           "BusyError", "DeviceError", "StorageError", "CorruptError", "DurableInfo",
           "DTYPES", "PLACEMENTS", "ZONES", "bf16_to_float32",
           "float32_to_bf16", "shared_remove", "gpu_available", "library_path"]
