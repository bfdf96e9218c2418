"""Loading libtheus and declaring the C API that the package uses (ctypes).

The library is found, in order, at $THEUS_LIBRARY (a path to libtheus.so), by the dynamic
loader's own search ("libtheus.so.0", then "libtheus.so": LD_LIBRARY_PATH, the ld.so cache,
an rpath), and through ctypes.util.find_library. The struct layouts below mirror
include/theus/theus.h, theus_shared.h, theus_durable.h and theus/dlpack.h exactly: change
them together.
"""
import ctypes
import ctypes.util
import os

MAX_DIMS = 8
NAME_MAX = 63

c_int, c_uint32, c_uint64, c_int64, c_size_t = (ctypes.c_int, ctypes.c_uint32, ctypes.c_uint64,
                                                ctypes.c_int64, ctypes.c_size_t)
c_void_p, c_char_p, c_double = ctypes.c_void_p, ctypes.c_char_p, ctypes.c_double
POINTER, byref = ctypes.POINTER, ctypes.byref


class Region(ctypes.Structure):
    _fields_ = [("ndim", c_int), ("start", c_int64 * MAX_DIMS), ("stop", c_int64 * MAX_DIMS)]


class FieldInfo(ctypes.Structure):
    _fields_ = [("dtype", c_int), ("ndim", c_int), ("shape", c_int64 * MAX_DIMS),
                ("nbytes", c_size_t), ("placement", c_int), ("zone", c_int),
                ("version", c_uint64), ("requested", c_int), ("has_min", c_int),
                ("has_max", c_int), ("finite", c_int), ("min", c_double), ("max", c_double)]


class StateOptions(ctypes.Structure):
    _fields_ = [("allow_fallback", c_int), ("commit_log_capacity", c_uint32),
                ("priority_lease_ms", c_uint32)]


class SharedOptions(ctypes.Structure):
    _fields_ = [("redo_bytes", c_uint64), ("max_processes", c_uint32)]


class DurableOptions(ctypes.Structure):
    _fields_ = [("sync", c_int), ("group_window_us", c_uint32), ("segment_bytes", c_uint64),
                ("keep_checkpoints", c_uint32), ("prealloc_bytes", c_uint64)]


class DurableInfo(ctypes.Structure):
    _fields_ = [(n, c_uint64) for n in ("version", "checkpoint_version", "records_replayed",
                                        "torn_bytes", "torn_offset")]


class TxOptions(ctypes.Structure):
    _fields_ = [("isolation", c_int), ("contract", c_void_p)]


class Stats(ctypes.Structure):
    _fields_ = [(n, c_uint64) for n in ("commits", "conflicts", "aborts", "schema_refusals",
                                        "retries", "priority_runs")]


class Conflict(ctypes.Structure):
    _fields_ = [("kind", c_int), ("field", ctypes.c_char * (NAME_MAX + 1)), ("region", Region),
                ("version", c_uint64), ("base", c_uint64)]


class Segment(ctypes.Structure):
    _fields_ = [("offset", c_int64), ("length", c_int64)]


# ---- DLPack (theus/dlpack.h: DLPack 1.x, and the legacy 0.x managed tensor) ----------------
class DLDevice(ctypes.Structure):
    _fields_ = [("device_type", c_int), ("device_id", ctypes.c_int32)]


class DLDataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class DLTensor(ctypes.Structure):
    _fields_ = [("data", c_void_p), ("device", DLDevice), ("ndim", ctypes.c_int32),
                ("dtype", DLDataType), ("shape", POINTER(c_int64)),
                ("strides", POINTER(c_int64)), ("byte_offset", c_uint64)]


class DLPackVersion(ctypes.Structure):
    _fields_ = [("major", c_uint32), ("minor", c_uint32)]


class DLManagedTensorVersioned(ctypes.Structure):
    _fields_ = [("version", DLPackVersion), ("manager_ctx", c_void_p), ("deleter", c_void_p),
                ("flags", c_uint64), ("dl_tensor", DLTensor)]


class DLManagedTensor(ctypes.Structure):
    _fields_ = [("dl_tensor", DLTensor), ("manager_ctx", c_void_p), ("deleter", c_void_p)]


DELETER = ctypes.CFUNCTYPE(None, c_void_p)


def _candidates():
    env = os.environ.get("THEUS_LIBRARY")
    if env:
        return [env]
    names = ["libtheus.so.0", "libtheus.so"]
    found = ctypes.util.find_library("theus")
    if found:
        names.append(found)
    return names


def _load():
    errors = []
    for name in _candidates():
        try:
            return ctypes.CDLL(name)
        except OSError as e:
            errors.append(f"{name}: {e}")
    raise ImportError("theusrt: cannot load libtheus (set THEUS_LIBRARY to the path of "
                      "libtheus.so, or put its directory in LD_LIBRARY_PATH): "
                      + "; ".join(errors))


lib = _load()

_P = c_void_p  # theus_state *, theus_tx *


def _proto(name, restype, *argtypes, optional=False):
    try:
        f = getattr(lib, name)
    except AttributeError:
        if optional:
            return None
        raise ImportError(f"theusrt: libtheus lacks {name}: the library is older than this "
                          "package")
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


strerror = _proto("theus_strerror", c_char_p, c_int)
last_error_message = _proto("theus_last_error_message", c_char_p)
dtype_name = _proto("theus_dtype_name", c_char_p, c_int)
dtype_size = _proto("theus_dtype_size", c_size_t, c_int)
gpu_available = _proto("theus_gpu_available", c_int)

state_create = _proto("theus_state_create", c_int, c_char_p, POINTER(StateOptions), POINTER(_P))
state_destroy = _proto("theus_state_destroy", None, _P)
state_version = _proto("theus_state_version", c_uint64, _P)
state_name = _proto("theus_state_name", c_char_p, _P)
state_field_count = _proto("theus_state_field_count", c_size_t, _P)
state_field_name = _proto("theus_state_field_name", c_char_p, _P, c_size_t)
state_field_info = _proto("theus_state_field_info", c_int, _P, c_char_p, POINTER(FieldInfo))
state_init_field = _proto("theus_state_init_field", c_int, _P, c_char_p, c_void_p, c_int)
state_stats = _proto("theus_state_stats", c_int, _P, POINTER(Stats))
last_conflict = _proto("theus_last_conflict", c_int, _P, POINTER(Conflict))

tx_begin = _proto("theus_tx_begin", c_int, _P, POINTER(TxOptions), POINTER(_P))
tx_base = _proto("theus_tx_base", c_uint64, _P)
tx_read = _proto("theus_tx_read", c_int, _P, c_char_p, POINTER(Region), c_void_p, c_int)
tx_write = _proto("theus_tx_write", c_int, _P, c_char_p, POINTER(Region), c_void_p, c_int)
tx_add = _proto("theus_tx_add", c_int, _P, c_char_p, POINTER(Region), c_void_p, c_int)
tx_write_borrowed = _proto("theus_tx_write_borrowed", c_int, _P, c_char_p, POINTER(Region),
                           c_void_p, c_int)
tx_add_borrowed = _proto("theus_tx_add_borrowed", c_int, _P, c_char_p, POINTER(Region),
                         c_void_p, c_int)
tx_stage_regions = _proto("theus_tx_stage_regions", c_int, _P, c_char_p, c_int,
                          POINTER(Region), c_size_t, c_void_p, c_size_t, c_int, ctypes.c_uint)
tx_stage_segments = _proto("theus_tx_stage_segments", c_int, _P, c_char_p, c_int,
                           POINTER(Segment), c_size_t, c_void_p, c_size_t, c_int, ctypes.c_uint)
tx_commit = _proto("theus_tx_commit", c_int, _P, POINTER(c_uint64))
tx_abort = _proto("theus_tx_abort", None, _P)

state_create_shared = _proto("theus_state_create_shared", c_int, c_char_p, c_char_p,
                             POINTER(StateOptions), POINTER(SharedOptions), POINTER(_P))
state_open_shared = _proto("theus_state_open_shared", c_int, c_char_p, c_char_p, POINTER(_P))
state_shared_name = _proto("theus_state_shared_name", c_char_p, _P)
shared_remove = _proto("theus_shared_remove", c_int, c_char_p)

field_export_dlpack = _proto("theus_field_export_dlpack", c_int, _P, c_char_p,
                             POINTER(POINTER(DLManagedTensorVersioned)))
field_export_dlpack_unversioned = _proto("theus_field_export_dlpack_unversioned", c_int, _P,
                                         c_char_p, POINTER(POINTER(DLManagedTensor)))
capsule_destructor = _proto("theus_dlpack_capsule_destructor", None, c_void_p)

# Durable states and standalone safetensors files (theus_durable.h); optional so that the
# package works with a library built before them.
save_safetensors = _proto("theus_state_save_safetensors", c_int, _P, c_char_p, optional=True)
load_safetensors = _proto("theus_state_load_safetensors", c_int, _P, c_char_p, optional=True)
state_open_durable = _proto("theus_state_open_durable", c_int, c_char_p, c_char_p,
                            POINTER(StateOptions), POINTER(DurableOptions), POINTER(_P),
                            optional=True)
state_checkpoint = _proto("theus_state_checkpoint", c_int, _P, c_int, POINTER(c_uint64),
                          optional=True)
state_versions = _proto("theus_state_versions", c_int, c_char_p, POINTER(c_uint64),
                        POINTER(c_uint64), optional=True)
state_open_version = _proto("theus_state_open_version", c_int, c_char_p, c_uint64, POINTER(_P),
                            optional=True)
state_durable_info = _proto("theus_state_durable_info", c_int, _P, POINTER(DurableInfo),
                            optional=True)
