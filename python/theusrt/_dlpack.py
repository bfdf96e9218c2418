"""Zero-copy, read-only DLPack views of committed fields (the DLPack Python specification).

A FieldView is what ``numpy.from_dlpack``, ``torch.from_dlpack`` and ``cupy.from_dlpack``
take: it has ``__dlpack__`` and ``__dlpack_device__``. Each ``__dlpack__`` call exports the
field afresh (theus_field_export_dlpack) and wraps the tensor in a capsule:

- named "dltensor_versioned" (a DLManagedTensorVersioned, read-only flag set) when the
  consumer passes ``max_version`` >= (1, 0); "dltensor" (the legacy DLManagedTensor, which has
  no read-only flag) for older consumers that pass none;
- with theus_dlpack_capsule_destructor as the capsule's destructor, a C function of libtheus:
  it calls the tensor's deleter only when the capsule was never consumed (still carries its
  original name: a consumer renames it "used_dltensor_versioned" / "used_dltensor" and calls
  the deleter itself when done), keeps any pending exception, and never raises. A destructor
  written in Python could not do the last two.

The capsule names live in memory that is never freed, since PyCapsule keeps the pointer.
"""
import ctypes

from . import _lib

kDLCPU, kDLCUDA, kDLCUDAHost = 1, 2, 3
kDLUInt = 1

_libc = ctypes.CDLL(None)
_libc.strdup.restype = ctypes.c_void_p
_libc.strdup.argtypes = [ctypes.c_char_p]
# Never freed: a capsule may outlive this module (interpreter shutdown).
_NAME_VERSIONED = _libc.strdup(b"dltensor_versioned")
_NAME_LEGACY = _libc.strdup(b"dltensor")

_capsule_new = ctypes.pythonapi.PyCapsule_New
_capsule_new.restype = ctypes.py_object
_capsule_new.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
_DESTRUCTOR = ctypes.cast(_lib.capsule_destructor, ctypes.c_void_p).value


def _delete(tensor_ptr, versioned):
    t = (_lib.DLManagedTensorVersioned if versioned else _lib.DLManagedTensor).from_address(
        tensor_ptr)
    if t.deleter:
        _lib.DELETER(t.deleter)(tensor_ptr)


class FieldView:
    """A zero-copy, read-only view of a committed field for any DLPack consumer.

    The bytes are the field's committed bytes in place: they change at every later commit
    that writes the field (hold commits, or copy, to keep one version). An exported array
    keeps the field's memory alive even after the state is closed. ``bits=True`` exports the
    elements as unsigned integers of the same size (bf16 and f16 as uint16, bool as uint8):
    the way to get a bf16 field into NumPy, which refuses DLPack's bfloat16.
    """

    __slots__ = ("_state", "_field", "_bits", "_device")

    def __init__(self, state, field, bits=False):
        self._state = state
        self._field = field
        self._bits = bool(bits)
        self._device = None

    @property
    def field(self):
        return self._field

    def _export(self, versioned):
        from ._core import _check  # late: _core imports this module
        h = self._state._live_handle()
        if versioned:
            out = ctypes.POINTER(_lib.DLManagedTensorVersioned)()
            rc = _lib.field_export_dlpack(h, self._field.encode(), ctypes.byref(out))
        else:
            out = ctypes.POINTER(_lib.DLManagedTensor)()
            rc = _lib.field_export_dlpack_unversioned(h, self._field.encode(), ctypes.byref(out))
        _check(rc, f"exporting field '{self._field}'")
        return ctypes.cast(out, ctypes.c_void_p).value, out.contents

    def __dlpack_device__(self):
        if self._device is None:
            ptr, t = self._export(True)
            dev = (int(t.dl_tensor.device.device_type), int(t.dl_tensor.device.device_id))
            _delete(ptr, True)
            self._device = dev
        return self._device

    def __dlpack__(self, *, stream=None, max_version=None, dl_device=None, copy=None):
        # stream: committed bytes are final when theus_tx_commit returns (its replay has
        # completed), so no consumer stream needs to wait for anything.
        if copy:
            raise BufferError("theusrt: a field view is zero-copy; copy=True is not offered "
                              "(copy the array the consumer makes instead)")
        if dl_device is not None and tuple(dl_device) != self.__dlpack_device__():
            raise BufferError(f"theusrt: field '{self._field}' lives on device "
                              f"{self.__dlpack_device__()}, not {tuple(dl_device)}")
        versioned = max_version is not None and int(max_version[0]) >= 1
        ptr, t = self._export(versioned)
        try:
            if self._bits:
                dt = t.dl_tensor.dtype
                dt.code, dt.lanes = kDLUInt, 1
            return _capsule_new(ptr, _NAME_VERSIONED if versioned else _NAME_LEGACY,
                                _DESTRUCTOR)
        except BaseException:
            _delete(ptr, versioned)
            raise

    def __repr__(self):
        return f"<theusrt.FieldView {self._field!r}{' bits' if self._bits else ''}>"
