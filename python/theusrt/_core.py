"""States, transactions, errors and regions over the C API (see docs/python.md)."""
import ctypes
import json
import threading
import weakref
from collections import namedtuple

import numpy as np

from . import _lib
from ._dlpack import FieldView

# ---- errors ------------------------------------------------------------------------------


class TheusError(Exception):
    """A theus call failed. ``code`` is the THEUS_E* status (negative int), ``status`` its
    name, ``message`` the library's detail text."""

    def __init__(self, code, message, what=None):
        self.code = code
        self.status = (_lib.strerror(code) or b"").decode().split(":")[0]
        self.message = message
        text = f"{self.status}: {message}" if message else self.status
        super().__init__(f"{what}: {text}" if what else text)


class InvalidArgument(TheusError, ValueError):
    """THEUS_EINVAL: a bad argument, region or option."""


class OutOfMemory(TheusError, MemoryError):
    """THEUS_ENOMEM: nothing was changed."""


class ConflictError(TheusError):
    """THEUS_ECONFLICT: a concurrent commit touched what the transaction relies on.
    ``conflict`` is a dict (kind, field, region, version, base) or None."""

    conflict = None


class SchemaError(TheusError):
    """THEUS_ESCHEMA: a malformed schema, or a commit that breaks a field constraint."""


class AccessError(TheusError, PermissionError):
    """THEUS_EPERM: a contract or a const zone forbids the access."""


class NotFound(TheusError, LookupError):
    """THEUS_ENOENT: no such field, state or file."""


class BusyError(TheusError):
    """THEUS_EBUSY."""


class DeviceError(TheusError):
    """THEUS_EDEVICE / THEUS_ENODEV."""


class StorageError(TheusError, OSError):
    """THEUS_EIO: reading or writing a file failed."""


class CorruptError(TheusError):
    """THEUS_ECORRUPT: stored data (a log record, a checkpoint, a safetensors file) failed a
    check; the message names the file and the byte offset."""


_CLASSES = {-1: InvalidArgument, -2: OutOfMemory, -3: ConflictError, -4: SchemaError,
            -5: AccessError, -6: NotFound, -7: StorageError, -8: DeviceError, -9: DeviceError,
            -10: BusyError, -11: CorruptError}

_CONFLICT_KINDS = ("none", "write_write", "read_write", "strict", "stale_base")


def _check(rc, what=None, state=None):
    if rc == 0:
        return
    msg = (_lib.last_error_message() or b"").decode(errors="replace")
    err = _CLASSES.get(rc, TheusError)(rc, msg, what)
    if rc == -3 and state is not None:
        c = _lib.Conflict()
        if _lib.last_conflict(state, ctypes.byref(c)) == 0:
            n = c.region.ndim
            err.conflict = {"kind": _CONFLICT_KINDS[c.kind] if 0 <= c.kind < 5 else c.kind,
                            "field": c.field.decode(),
                            "region": tuple((c.region.start[d], c.region.stop[d])
                                            for d in range(n)),
                            "version": c.version, "base": c.base}
    raise err


# ---- dtypes, placements, zones -------------------------------------------------------------

DTYPES = ("bool", "u8", "i8", "u16", "i16", "u32", "i32", "u64", "i64", "f16", "bf16", "f32",
          "f64")
# bf16 has no NumPy dtype: its elements travel as their uint16 bit patterns (bf16_to_float32).
_NP = (np.bool_, np.uint8, np.int8, np.uint16, np.int16, np.uint32, np.int32, np.uint64,
       np.int64, np.float16, np.uint16, np.float32, np.float64)
PLACEMENTS = ("device", "pinned", "host")
ZONES = ("data", "signal", "meta", "const")
_ISOLATION = {"serializable": 0, "snapshot": 1, "strict": 2}
_OPS = {"assign": 0, "add": 1}
_MEM_HOST = 0
STAGE_BORROW = 1

_SYNC = {"commit": 0, "group": 1, "none": 2}

DurableInfo = namedtuple("DurableInfo", "version checkpoint_version records_replayed "
                                        "torn_bytes torn_offset")

FieldInfo = namedtuple("FieldInfo", "name dtype shape nbytes placement requested zone version "
                                    "min max finite")


def bf16_to_float32(bits):
    """bf16 bit patterns (uint16, as theusrt reads bf16 fields) to float32, exactly."""
    b = np.asarray(bits, dtype=np.uint16)
    return (b.astype(np.uint32) << 16).view(np.float32)


def float32_to_bf16(values):
    """float32 (or anything castable) to bf16 bit patterns, rounded to nearest even, NaN
    kept quiet: what a bf16 field stores."""
    u = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    rounded = ((u + np.uint32(0x7FFF) + ((u >> 16) & np.uint32(1))) >> 16).astype(np.uint16)
    nan = (u & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    return np.where(nan, ((u >> 16) | np.uint32(0x40)).astype(np.uint16), rounded)


# ---- regions -------------------------------------------------------------------------------


def _region(spec, shape):
    """A theus_region from None (whole field), or one entry per leading dimension: an int i
    ([i, i+1)), a slice with step 1 (Python's negative indices allowed), or a (start, stop)
    pair. Dimensions not given are whole. Returns (Region or None, the region's shape)."""
    if spec is None:
        return None, tuple(shape)
    if not isinstance(spec, (tuple, list)):
        spec = (spec,)
    if len(spec) > len(shape):
        raise InvalidArgument(-1, f"region has {len(spec)} dimensions, the field {len(shape)}")
    r = _lib.Region()
    r.ndim = len(shape)
    out = []
    for d, n in enumerate(shape):
        s = spec[d] if d < len(spec) else slice(None)
        if isinstance(s, slice):
            start, stop, step = s.indices(n)
            if step != 1:
                raise InvalidArgument(-1, f"dimension {d}: regions take steps of 1 only")
            stop = max(stop, start)
        elif isinstance(s, (tuple, list)) and len(s) == 2:
            start, stop = int(s[0]), int(s[1])
        else:
            start = int(s)
            if start < 0:
                start += n
            stop = start + 1
        r.start[d], r.stop[d] = start, stop
        out.append(max(stop - start, 0))
    return r, tuple(out)


# ---- states --------------------------------------------------------------------------------


def _schema_text(schema):
    if isinstance(schema, (dict, list)):
        return json.dumps(schema).encode()
    if isinstance(schema, bytes):
        return schema
    return str(schema).encode()


def _options(allow_fallback, commit_log_capacity, priority_lease_ms):
    return _lib.StateOptions(1 if allow_fallback else 0, commit_log_capacity, priority_lease_ms)


class State:
    """A theus state: named tensor fields and a version, changed only by transactions.

    ``State(schema)`` creates a private state from a JSON schema (text or a dict);
    :meth:`create_shared` / :meth:`open_shared` make or join one shared between processes.
    Thread-safe like the C library: any number of threads may run transactions on one
    state. :meth:`close` (or the end of a ``with`` block, or garbage collection) destroys the
    handle; transactions still open are aborted first.
    """

    def __init__(self, schema, *, allow_fallback=True, commit_log_capacity=0,
                 priority_lease_ms=0):
        h = ctypes.c_void_p()
        o = _options(allow_fallback, commit_log_capacity, priority_lease_ms)
        _check(_lib.state_create(_schema_text(schema), ctypes.byref(o), ctypes.byref(h)),
               "creating a state")
        self._adopt(h)

    def _adopt(self, h):
        self._h = h
        self._lock = threading.Lock()
        self._txs = weakref.WeakSet()
        self._infos = {}

    @classmethod
    def _wrap(cls, h):
        st = cls.__new__(cls)
        st._adopt(h)
        return st

    @classmethod
    def from_file(cls, path, **opts):
        """Create a private state from the schema file at ``path``."""
        with open(path, "rb") as f:
            return cls(f.read(), **opts)

    @classmethod
    def create_shared(cls, name, schema, *, allow_fallback=True, commit_log_capacity=0,
                      priority_lease_ms=0, redo_bytes=0, max_processes=0):
        """Create the state shared under ``name`` (POSIX shared memory of this user); other
        processes join it with :meth:`open_shared`. It lives until its last handle closes."""
        h = ctypes.c_void_p()
        o = _options(allow_fallback, commit_log_capacity, priority_lease_ms)
        so = _lib.SharedOptions(redo_bytes, max_processes)
        _check(_lib.state_create_shared(name.encode(), _schema_text(schema), ctypes.byref(o),
                                        ctypes.byref(so), ctypes.byref(h)),
               f"creating shared state '{name}'")
        return cls._wrap(h)

    @classmethod
    def open_shared(cls, name, schema=None):
        """Open the shared state ``name``; ``schema`` (optional) must match its own."""
        h = ctypes.c_void_p()
        _check(_lib.state_open_shared(name.encode(),
                                      None if schema is None else _schema_text(schema),
                                      ctypes.byref(h)), f"opening shared state '{name}'")
        return cls._wrap(h)

    # -- durable states (theus_durable.h, docs/durability.md) --
    @classmethod
    def open_durable(cls, path, schema=None, *, sync="commit", group_window_us=200,
                     segment_bytes=0, keep_checkpoints=0, allow_fallback=True,
                     commit_log_capacity=0, priority_lease_ms=0):
        """Open the durable state in directory ``path``: create it (``schema`` needed; a
        missing or empty directory) or recover it from its newest checkpoint and the log
        after it (``schema`` None or equal to the stored one). Every commit then writes a
        log record before it returns. ``sync``: "commit" (fdatasync per commit), "group"
        (threads share one fdatasync; ``group_window_us``) or "none" (survives a crash of
        the process, not a power loss). ``segment_bytes`` (0: 64 MiB) and
        ``keep_checkpoints`` (0: 2) as theus_durable_options. One process at a time holds
        the directory (BusyError otherwise)."""
        _need(_lib.state_open_durable, "theus_state_open_durable")
        if sync not in _SYNC:
            raise InvalidArgument(-1, f"unknown sync policy {sync!r} (commit, group, none)")
        h = ctypes.c_void_p()
        o = _options(allow_fallback, commit_log_capacity, priority_lease_ms)
        do = _lib.DurableOptions(_SYNC[sync], group_window_us, segment_bytes, keep_checkpoints)
        _check(_lib.state_open_durable(_path(path),
                                       None if schema is None else _schema_text(schema),
                                       ctypes.byref(o), ctypes.byref(do), ctypes.byref(h)),
               f"opening durable state '{path}'")
        return cls._wrap(h)

    @classmethod
    def open_version(cls, path, version):
        """Rebuild version ``version`` of the durable state in ``path`` (within
        :meth:`versions`), read-only: commits on it raise AccessError. Reads the directory
        only; another process may have the state open."""
        _need(_lib.state_open_version, "theus_state_open_version")
        h = ctypes.c_void_p()
        _check(_lib.state_open_version(_path(path), int(version), ctypes.byref(h)),
               f"opening version {version} of '{path}'")
        return cls._wrap(h)

    @staticmethod
    def versions(path):
        """(oldest, newest): the versions the durable directory ``path`` can still rebuild."""
        _need(_lib.state_versions, "theus_state_versions")
        lo, hi = ctypes.c_uint64(), ctypes.c_uint64()
        _check(_lib.state_versions(_path(path), ctypes.byref(lo), ctypes.byref(hi)),
               f"versions of '{path}'")
        return int(lo.value), int(hi.value)

    def checkpoint(self, incremental=False):
        """Checkpoint the current committed version into the state's directory (full, or
        only what changed since the previous checkpoint); returns the version written.
        Commits wait only while the changed bytes are copied."""
        _need(_lib.state_checkpoint, "theus_state_checkpoint")
        v = ctypes.c_uint64(0)
        _check(_lib.state_checkpoint(self._live_handle(), 1 if incremental else 0,
                                     ctypes.byref(v)), "checkpoint")
        return int(v.value)

    def durable_info(self):
        """DurableInfo(version, checkpoint_version, records_replayed, torn_bytes,
        torn_offset): what recovery did when this durable state was opened."""
        _need(_lib.state_durable_info, "theus_state_durable_info")
        i = _lib.DurableInfo()
        _check(_lib.state_durable_info(self._live_handle(), ctypes.byref(i)), "durable_info")
        return DurableInfo(*(int(getattr(i, n)) for n in DurableInfo._fields))

    def _live_handle(self):
        h = self._h
        if h is None:
            raise InvalidArgument(-1, "the state is closed")
        return h

    def close(self):
        """Destroy this handle (a shared state lives on for its other handles). Open
        transactions are aborted. Exported DLPack arrays stay valid."""
        with self._lock:
            h, self._h = self._h, None
        if h is None:
            return
        for tx in list(self._txs):
            tx._drop()
        _lib.state_destroy(h)

    def __del__(self):
        if getattr(self, "_h", None) is not None:
            self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- metadata --
    @property
    def version(self):
        return int(_lib.state_version(self._live_handle()))

    @property
    def name(self):
        return (_lib.state_name(self._live_handle()) or b"").decode()

    @property
    def shared_name(self):
        """The shared name, or None for a private state."""
        n = _lib.state_shared_name(self._live_handle())
        return n.decode() if n else None

    @property
    def fields(self):
        h = self._live_handle()
        return tuple(_lib.state_field_name(h, i).decode()
                     for i in range(_lib.state_field_count(h)))

    def _info(self, field):
        info = _lib.FieldInfo()
        _check(_lib.state_field_info(self._live_handle(), field.encode(), ctypes.byref(info)),
               f"field '{field}'")
        return info

    def _meta(self, field):
        """(dtype index, shape, numpy dtype) of a field, cached (they never change)."""
        m = self._infos.get(field)
        if m is None:
            i = self._info(field)
            m = (i.dtype, tuple(i.shape[d] for d in range(i.ndim)), np.dtype(_NP[i.dtype]))
            self._infos[field] = m
        return m

    def info(self, field):
        """FieldInfo(name, dtype, shape, nbytes, placement, requested, zone, version, min,
        max, finite): min/max None when unconstrained."""
        i = self._info(field)
        return FieldInfo(field, DTYPES[i.dtype], tuple(i.shape[d] for d in range(i.ndim)),
                         i.nbytes, PLACEMENTS[i.placement], PLACEMENTS[i.requested],
                         ZONES[i.zone], i.version, i.min if i.has_min else None,
                         i.max if i.has_max else None, bool(i.finite))

    def stats(self):
        s = _lib.Stats()
        _check(_lib.state_stats(self._live_handle(), ctypes.byref(s)))
        return {n: int(getattr(s, n)) for n, _ in _lib.Stats._fields_}

    # -- transactions and shortcuts --
    def transaction(self, isolation="serializable"):
        """Begin a transaction at the current version (a context manager: commits at the end
        of the ``with`` block, aborts when it raises)."""
        return Transaction(self, isolation)

    def read(self, field, region=None):
        """The committed values of a region, as a new NumPy array (one short transaction)."""
        with self.transaction() as tx:
            return tx.read(field, region)

    def write(self, field, data, region=None):
        """Write one region in its own transaction; returns the committed version."""
        with self.transaction() as tx:
            tx.write(field, data, region)
        return tx.version

    def init_field(self, field, data):
        """Set a whole field before the first commit (the only way a const field is set)."""
        _, shape, dt = self._meta(field)
        a = _host_array(data, dt, shape, self._meta(field)[0])
        _check(_lib.state_init_field(self._live_handle(), field.encode(), a.ctypes.data,
                                     _MEM_HOST), f"init_field '{field}'")

    def view(self, field, bits=False):
        """A zero-copy read-only DLPack view of the committed field (numpy/torch/cupy
        ``from_dlpack`` take it). ``bits=True``: elements as same-size unsigned integers."""
        self._meta(field)
        return FieldView(self, field, bits)

    def array(self, field):
        """``numpy.from_dlpack`` of the field's view: zero copy, read-only, following later
        commits in place. bf16 fields come as their uint16 bit patterns."""
        return np.from_dlpack(self.view(field, bits=self._meta(field)[0] == 10))

    def save_safetensors(self, path):
        if _lib.save_safetensors is None:
            raise NotImplementedError("libtheus has no theus_state_save_safetensors")
        _check(_lib.save_safetensors(self._live_handle(), str(path).encode()),
               f"saving '{path}'")

    def load_safetensors(self, path):
        if _lib.load_safetensors is None:
            raise NotImplementedError("libtheus has no theus_state_load_safetensors")
        _check(_lib.load_safetensors(self._live_handle(), str(path).encode()),
               f"loading '{path}'", self._live_handle())

    def __repr__(self):
        if self._h is None:
            return "<theusrt.State closed>"
        return f"<theusrt.State {self.name!r} v{self.version} fields={list(self.fields)}>"


def _need(fn, name):
    if fn is None:
        raise NotImplementedError(f"libtheus has no {name} (built before durable states)")


def _path(path):
    return path if isinstance(path, bytes) else str(path).encode()


def shared_remove(name):
    """Remove the shared state ``name`` (its processes keep their mappings)."""
    _check(_lib.shared_remove(name.encode()), f"removing shared state '{name}'")


def _host_array(data, dt, shape, dtype_index):
    """A C-contiguous host array of the field's dtype in @shape (broadcast when needed)."""
    a = np.asarray(data)
    if dtype_index == 10 and a.dtype.kind == "f":
        a = float32_to_bf16(a)  # bf16 fields take floats, rounded, or uint16 bit patterns
    if a.dtype != dt:
        # Safe casts and casts within a kind; integers to integers of any signedness too
        # (Python ints arrive as int64), as a C cast would convert them.
        casting = "unsafe" if a.dtype.kind in "iub" and dt.kind in "iu" else "same_kind"
        try:
            a = a.astype(dt, casting=casting)
        except TypeError as e:
            raise InvalidArgument(-1, f"cannot write {a.dtype} data to a field of dtype "
                                      f"{DTYPES[dtype_index]}: {e}") from None
    if a.shape != tuple(shape):
        try:
            a = np.broadcast_to(a, shape)
        except ValueError:
            raise InvalidArgument(-1, f"data of shape {a.shape} does not fit a region of "
                                      f"shape {tuple(shape)}") from None
    return np.ascontiguousarray(a)


# ---- transactions --------------------------------------------------------------------------


class Transaction:
    """One transaction: reads see the base version plus this transaction's own writes;
    writes and adds are staged until :meth:`commit`. Use it from one thread at a time.

    ``borrow=True`` on a write lends the array to theus until commit or abort instead of
    copying it (zero copy for host fields; copied anyway for GPU fields): the transaction
    keeps a reference, and the array must not be modified until then.
    """

    def __init__(self, state, isolation="serializable"):
        if isolation not in _ISOLATION:
            raise InvalidArgument(-1, f"unknown isolation {isolation!r} "
                                      f"(serializable, snapshot, strict)")
        self._st = state
        self._keep = []
        self.version = None
        h = ctypes.c_void_p()
        o = _lib.TxOptions(_ISOLATION[isolation], None)
        _check(_lib.tx_begin(state._live_handle(), ctypes.byref(o), ctypes.byref(h)),
               "beginning a transaction")
        self._h = h
        state._txs.add(self)

    def _live(self):
        if self._h is None:
            raise InvalidArgument(-1, "the transaction was committed or aborted")
        return self._h

    @property
    def base(self):
        return int(_lib.tx_base(self._live()))

    @property
    def open(self):
        return self._h is not None

    def read(self, field, region=None, out=None):
        """The region's values at the base version overlaid with this transaction's writes,
        as a new array (or into ``out``: C-contiguous, writable, of the region's shape and
        the field's NumPy dtype). Raises ConflictError when the region changed since the base."""
        h = self._live()
        di, shape, dt = self._st._meta(field)
        r, rshape = _region(region, shape)
        if out is None:
            out = np.empty(rshape, dt)
        elif (out.dtype != dt or out.shape != rshape or not out.flags.c_contiguous
              or not out.flags.writeable):
            raise InvalidArgument(-1, f"out must be a writable C-contiguous {dt} array of "
                                      f"shape {rshape}")
        _check(_lib.tx_read(h, field.encode(), r, out.ctypes.data, _MEM_HOST),
               f"reading '{field}'", self._st._h)
        return out

    def _stage(self, fn_copy, fn_borrow, field, data, region, borrow):
        h = self._live()
        di, shape, dt = self._st._meta(field)
        r, rshape = _region(region, shape)
        a = _host_array(data, dt, rshape, di)
        fn = fn_borrow if borrow else fn_copy
        _check(fn(h, field.encode(), r, a.ctypes.data, _MEM_HOST), f"writing '{field}'")
        if borrow:
            self._keep.append(a)

    def write(self, field, data, region=None, borrow=False):
        """Stage an overwrite of a region (None: the whole field) with ``data`` (cast to the
        field's dtype when that is safe, broadcast to the region's shape)."""
        self._stage(_lib.tx_write, _lib.tx_write_borrowed, field, data, region, borrow)

    def add(self, field, data, region=None, borrow=False):
        """Stage an element-wise add (in the field's dtype; integers wrap)."""
        self._stage(_lib.tx_add, _lib.tx_add_borrowed, field, data, region, borrow)

    def write_regions(self, field, regions, payload, op="assign", borrow=False):
        """Stage many regions of one field from one packed payload (each region's values in
        C order, one region after the other) with one call: theus_tx_stage_regions."""
        h = self._live()
        di, shape, dt = self._st._meta(field)
        regs = (_lib.Region * max(len(regions), 1))()
        total = 0
        for k, spec in enumerate(regions):
            r, rshape = _region(spec, shape)
            if r is None:
                r, rshape = _region((), shape)
            regs[k] = r
            total += int(np.prod(rshape, dtype=np.int64))
        a = _host_array(payload, dt, np.shape(payload), di).reshape(-1)
        if a.size != total:
            raise InvalidArgument(-1, f"the regions hold {total} elements, the payload "
                                      f"{a.size}")
        _check(_lib.tx_stage_regions(h, field.encode(), _op(op), regs, len(regions),
                                     a.ctypes.data, a.nbytes, _MEM_HOST,
                                     STAGE_BORROW if borrow else 0), f"writing '{field}'")
        if borrow:
            self._keep.append(a)

    def write_segments(self, field, offsets, lengths, payload, op="assign", borrow=False):
        """Stage runs of the flattened field (element ``offsets[i]``, ``lengths[i]``
        elements) from one packed payload: theus_tx_stage_segments."""
        h = self._live()
        di, shape, dt = self._st._meta(field)
        segs = np.empty((len(offsets), 2), np.int64)
        segs[:, 0] = offsets
        segs[:, 1] = lengths
        a = _host_array(payload, dt, np.shape(payload), di).reshape(-1)
        _check(_lib.tx_stage_segments(h, field.encode(), _op(op),
                                      segs.ctypes.data_as(ctypes.POINTER(_lib.Segment)),
                                      len(segs), a.ctypes.data, a.nbytes, _MEM_HOST,
                                      STAGE_BORROW if borrow else 0), f"writing '{field}'")
        if borrow:
            self._keep.append(a)

    def commit(self):
        """Commit (consumes the transaction whatever the outcome); returns the new version
        (the base when nothing was written). Raises ConflictError or SchemaError."""
        h = self._live()
        self._h = None
        v = ctypes.c_uint64(0)
        try:
            _check(_lib.tx_commit(h, ctypes.byref(v)), "commit", self._st._h)
        finally:
            self._keep.clear()
        self.version = int(v.value)
        return self.version

    def abort(self):
        """Drop everything staged (consumes the transaction); a no-op once consumed."""
        self._drop()

    def _drop(self):
        h, self._h = self._h, None
        if h is not None:
            _lib.tx_abort(h)
        self._keep.clear()

    def __del__(self):
        if getattr(self, "_h", None) is not None:
            self._drop()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if self._h is None:
            return False
        if exc_type is None:
            self.commit()
        else:
            self.abort()
        return False


def _op(op):
    if op not in _OPS:
        raise InvalidArgument(-1, f"unknown op {op!r} (assign, add)")
    return _OPS[op]
