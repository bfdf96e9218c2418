"""Durable states through theusrt: create, commit, reopen; checkpoints full and incremental;
the versions range; read-only time travel; bad directories. Every directory lives in a
temporary directory removed after the test whatever happened, and every state is closed by
the test."""
import os
import pathlib
import shutil
import tempfile

import numpy as np
import pytest

import theusrt

pytestmark = pytest.mark.skipif(theusrt._lib.state_open_durable is None,
                                reason="libtheus without durable states")

SCHEMA = {"name": "dur", "fields": {
    "w": {"dtype": "f32", "shape": [4]},
    "step": {"dtype": "i64", "shape": [1]},
}}


def _commit_step(st, k):
    """One commit: step = k, w[k % 4] = k."""
    with st.transaction() as tx:
        tx.write("step", k)
        tx.write("w", float(k), region=(k % 4,))
    return tx.version


@pytest.fixture
def tmp_path():
    """A fresh temporary directory, removed after the test (pytest's own keeps the last
    runs' directories)."""
    d = tempfile.mkdtemp(prefix="theusrt-durable-")
    try:
        yield pathlib.Path(d)
    finally:
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def ddir(tmp_path):
    return tmp_path / "state"


def test_create_commit_reopen(ddir):
    with theusrt.State.open_durable(ddir, SCHEMA) as st:
        assert st.version == 1
        assert os.stat(ddir).st_mode & 0o077 == 0
        for k in range(1, 6):
            assert _commit_step(st, k) == k + 1
        want_w = st.read("w")
    with theusrt.State.open_durable(ddir) as st:         # schema from the directory
        assert st.version == 6
        assert st.fields == ("w", "step")
        np.testing.assert_array_equal(st.read("step"), [5])
        np.testing.assert_array_equal(st.read("w"), want_w)
        np.testing.assert_array_equal(want_w, [4, 5, 2, 3])
        info = st.durable_info()
        assert isinstance(info, theusrt.DurableInfo)
        assert info.version == 6 and info.torn_bytes == 0
        assert info.records_replayed == 5 and info.checkpoint_version == 1


@pytest.mark.parametrize("sync", ["commit", "group", "none"])
def test_sync_policies(ddir, sync):
    with theusrt.State.open_durable(ddir, SCHEMA, sync=sync) as st:
        _commit_step(st, 1)
    with theusrt.State.open_durable(ddir, SCHEMA, sync=sync) as st:   # equal schema: OK
        assert st.version == 2
        np.testing.assert_array_equal(st.read("step"), [1])


def test_bad_options_and_schema(ddir):
    with pytest.raises(theusrt.InvalidArgument):
        theusrt.State.open_durable(ddir, SCHEMA, sync="sometimes")
    with pytest.raises(theusrt.InvalidArgument):     # creating needs a schema
        theusrt.State.open_durable(ddir)
    with theusrt.State.open_durable(ddir, SCHEMA):
        pass
    other = {"fields": {"w": {"dtype": "f64", "shape": [4]}}}
    with pytest.raises(theusrt.SchemaError):
        theusrt.State.open_durable(ddir, other)


def test_checkpoints_full_and_incremental(ddir):
    with theusrt.State.open_durable(ddir, SCHEMA) as st:
        _commit_step(st, 1)
        _commit_step(st, 2)
        assert st.checkpoint() == 3
        _commit_step(st, 3)
        assert st.checkpoint(incremental=True) == 4
        _commit_step(st, 4)
        _commit_step(st, 5)
        want = st.read("w")
    with theusrt.State.open_durable(ddir) as st:
        assert st.version == 6
        np.testing.assert_array_equal(st.read("w"), want)
        np.testing.assert_array_equal(st.read("step"), [5])
        info = st.durable_info()
        assert info.checkpoint_version == 4       # the incremental on top of the full one
        assert info.records_replayed == 2
        # and a checkpoint of the recovered state, then reopen from it alone
        assert st.checkpoint(incremental=True) == 6
    with theusrt.State.open_durable(ddir) as st:
        assert st.version == 6 and st.durable_info().records_replayed == 0
        np.testing.assert_array_equal(st.read("w"), want)


def test_versions_and_open_version(ddir):
    with theusrt.State.open_durable(ddir, SCHEMA) as st:
        for k in range(1, 5):
            _commit_step(st, k)
        assert theusrt.State.versions(ddir) == (1, 5)    # runs while the state is open
    assert theusrt.State.versions(str(ddir)) == (1, 5)
    with theusrt.State.open_version(ddir, 3) as old:
        assert old.version == 3
        np.testing.assert_array_equal(old.read("step"), [2])
        np.testing.assert_array_equal(old.read("w"), [0, 1, 2, 0])
        with pytest.raises(theusrt.AccessError):
            old.write("step", 9)
        with pytest.raises(theusrt.AccessError):
            with old.transaction() as tx:
                tx.add("w", 1.0)
        assert old.version == 3
        np.testing.assert_array_equal(old.read("step"), [2])
        with pytest.raises(theusrt.InvalidArgument):     # a read-only state: no checkpoint
            old.checkpoint()
    with theusrt.State.open_version(ddir, 1) as first:
        np.testing.assert_array_equal(first.read("w"), [0, 0, 0, 0])
    with pytest.raises(theusrt.NotFound):
        theusrt.State.open_version(ddir, 99)
    with theusrt.State.open_durable(ddir) as st:         # the directory is unchanged
        assert st.version == 5


def test_directory_is_locked(ddir):
    with theusrt.State.open_durable(ddir, SCHEMA):
        with pytest.raises(theusrt.BusyError):
            theusrt.State.open_durable(ddir, SCHEMA)


def test_not_a_directory(tmp_path):
    f = tmp_path / "plain-file"
    f.write_bytes(b"not a theus state")
    with pytest.raises(theusrt.InvalidArgument) as e:
        theusrt.State.open_durable(f, SCHEMA)
    assert e.value.code == -1
    assert f.read_bytes() == b"not a theus state"
    with pytest.raises(theusrt.InvalidArgument):
        theusrt.State.versions(f)
    with pytest.raises(theusrt.InvalidArgument):
        theusrt.State.open_version(f, 1)
    with pytest.raises(theusrt.NotFound):
        theusrt.State.versions(tmp_path / "missing")


def test_not_durable_state():
    with theusrt.State(SCHEMA) as st:
        with pytest.raises(theusrt.InvalidArgument):
            st.checkpoint()
        with pytest.raises(theusrt.InvalidArgument):
            st.durable_info()


def _log_segments(d):
    return sorted(p for p in d.iterdir() if p.name.startswith("wal-") and p.suffix == ".log")


def test_torn_tail_dropped_and_reported(ddir):
    with theusrt.State.open_durable(ddir, SCHEMA) as st:
        for k in range(1, 5):
            _commit_step(st, k)
    seg = _log_segments(ddir)[-1]
    size = seg.stat().st_size
    os.truncate(seg, size - 3)                         # cut the last record
    with theusrt.State.open_durable(ddir) as st:
        assert st.version == 4                         # the last complete version
        np.testing.assert_array_equal(st.read("step"), [3])
        info = st.durable_info()
        assert info.torn_bytes > 0 and 0 < info.torn_offset < size


def test_corrupt_record_raises(ddir):
    with theusrt.State.open_durable(ddir, SCHEMA) as st:
        for k in range(1, 5):
            _commit_step(st, k)
    seg = _log_segments(ddir)[0]
    data = bytearray(seg.read_bytes())
    data[32 + 28 + 4] ^= 0xFF                          # inside the first record's body
    seg.write_bytes(bytes(data))
    with pytest.raises(theusrt.CorruptError) as e:
        theusrt.State.open_durable(ddir)
    assert e.value.code == -11 and seg.name in str(e.value)
