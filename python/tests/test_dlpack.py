"""DLPack views: zero copy and read-only for NumPy (PyTorch and CuPy when installed), and
the capsule protocol of the DLPack Python specification: an unconsumed capsule's deleter runs
when the capsule dies, a consumed one (renamed) is left to its consumer."""
import ctypes
import gc

import numpy as np
import pytest

import theusrt
from theusrt import _lib

SCHEMA = {"fields": {"w": {"dtype": "f32", "shape": [2, 3]},
                     "b": {"dtype": "bf16", "shape": [4]},
                     "d": {"dtype": "f32", "shape": [5], "placement": "device"}}}

_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_is_valid = ctypes.pythonapi.PyCapsule_IsValid
_is_valid.restype = ctypes.c_int
_is_valid.argtypes = [ctypes.py_object, ctypes.c_char_p]


@pytest.fixture
def st():
    s = theusrt.State(SCHEMA)
    s.write("w", np.arange(6, dtype=np.float32).reshape(2, 3))
    yield s
    s.close()


def test_numpy_view_is_zero_copy_read_only_and_follows_commits(st):
    a = np.from_dlpack(st.view("w"))
    assert a.dtype == np.float32 and a.shape == (2, 3)
    assert not a.flags.writeable
    with pytest.raises(ValueError):
        a[0, 0] = 1
    b = st.array("w")
    assert a.ctypes.data == b.ctypes.data            # the field's own memory, twice
    st.write("w", 7.0, region=(0, 1))
    assert a[0, 1] == 7.0                             # in place
    st.close()
    assert a[0, 1] == 7.0 and a[1, 2] == 5.0          # the export keeps the memory alive


def test_device_and_refusals(st):
    v = st.view("w")
    assert v.__dlpack_device__() == (1, 0)
    if not theusrt.gpu_available():
        assert st.view("d").__dlpack_device__() == (1, 0)   # fell back to host memory
    with pytest.raises(BufferError):
        v.__dlpack__(max_version=(1, 0), copy=True)
    with pytest.raises(BufferError):
        v.__dlpack__(max_version=(1, 0), dl_device=(2, 0))
    with pytest.raises(theusrt.NotFound):
        st.view("nope")


def _hook_deleter(capsule, name):
    """Replace the capsule's tensor deleter with one that counts its calls (and then runs
    the real one). Returns the list of calls and the callback (keep it alive)."""
    p = _get_pointer(capsule, name)
    cls = _lib.DLManagedTensorVersioned if name == b"dltensor_versioned" else _lib.DLManagedTensor
    t = cls.from_address(p)
    real = _lib.DELETER(t.deleter)
    calls = []

    def counting(ptr):
        calls.append(ptr)
        real(ptr)

    cb = _lib.DELETER(counting)
    t.deleter = ctypes.cast(cb, ctypes.c_void_p).value
    return calls, cb


@pytest.mark.parametrize("versioned", [True, False])
def test_unconsumed_capsule_runs_the_deleter_once(st, versioned):
    name = b"dltensor_versioned" if versioned else b"dltensor"
    cap = st.view("w").__dlpack__(max_version=(1, 0) if versioned else None)
    assert _is_valid(cap, name) == 1
    t = _lib.DLManagedTensorVersioned.from_address(_get_pointer(cap, name)) if versioned \
        else None
    if versioned:
        assert t.version.major == 1 and t.flags & 1      # read-only flag
    calls, cb = _hook_deleter(cap, name)
    del cap, t
    gc.collect()
    assert len(calls) == 1


def test_consumed_capsule_is_left_to_numpy(st):
    class Once:
        def __init__(self, view):
            self.view, self.calls, self.cb = view, None, None

        def __dlpack_device__(self):
            return self.view.__dlpack_device__()

        def __dlpack__(self, **kw):
            cap = self.view.__dlpack__(**kw)
            assert kw.get("max_version") is not None and kw["max_version"][0] >= 1
            self.calls, self.cb = _hook_deleter(cap, b"dltensor_versioned")
            return cap

    src = Once(st.view("w"))
    a = np.from_dlpack(src)        # numpy renames the capsule, then drops it: no deleter yet
    gc.collect()
    assert src.calls == []
    np.testing.assert_array_equal(a, np.arange(6, dtype=np.float32).reshape(2, 3))
    del a
    gc.collect()
    assert len(src.calls) == 1      # numpy's own release of the array


def test_bf16_needs_bits_in_numpy(st):
    st.write("b", [1.0, 2.0, -0.5, 65280.0])
    with pytest.raises((BufferError, RuntimeError, TypeError)):
        np.from_dlpack(st.view("b"))      # numpy has no bfloat16
    bits = np.from_dlpack(st.view("b", bits=True))
    assert bits.dtype == np.uint16 and not bits.flags.writeable
    np.testing.assert_array_equal(theusrt.bf16_to_float32(bits), [1.0, 2.0, -0.5, 65280.0])
    np.testing.assert_array_equal(st.array("b"), bits)


def test_torch_view():
    torch = pytest.importorskip("torch")
    with theusrt.State(SCHEMA) as st:
        st.write("w", np.arange(6, dtype=np.float32).reshape(2, 3))
        st.write("b", [1.0, 2.0, 3.0, 4.0])
        t = torch.from_dlpack(st.view("w"))
        assert t.dtype == torch.float32 and tuple(t.shape) == (2, 3)
        assert t[1, 2].item() == 5.0
        b = torch.from_dlpack(st.view("b"))
        assert b.dtype == torch.bfloat16 and b.tolist() == [1.0, 2.0, 3.0, 4.0]
        if theusrt.gpu_available():
            st.write("d", np.arange(5, dtype=np.float32))
            d = torch.from_dlpack(st.view("d"))
            assert d.is_cuda and d.cpu().tolist() == [0, 1, 2, 3, 4]


def test_cupy_view():
    cupy = pytest.importorskip("cupy")
    if not theusrt.gpu_available():
        pytest.skip("no GPU answers libtheus")
    with theusrt.State(SCHEMA) as st:
        st.write("d", np.arange(5, dtype=np.float32))
        d = cupy.from_dlpack(st.view("d"))
        assert cupy.asnumpy(d).tolist() == [0, 1, 2, 3, 4]
