"""States and transactions through theusrt: reads, writes, adds, regions, errors, borrowed
payloads, multi-region staging, bf16, shared states."""
import numpy as np
import pytest

import theusrt

SCHEMA = {"name": "py", "fields": {
    "w": {"dtype": "f32", "shape": [4, 3]},
    "n": {"dtype": "i32", "shape": [6]},
    "loss": {"dtype": "f64", "shape": [1], "constraints": {"finite": True, "min": 0}},
    "seed": {"dtype": "u64", "shape": [], "zone": "const"},
    "b": {"dtype": "bf16", "shape": [2, 2]},
}}


@pytest.fixture
def st():
    s = theusrt.State(SCHEMA)
    yield s
    s.close()


def test_metadata(st):
    assert st.version == 1
    assert st.name == "py"
    assert st.fields == ("w", "n", "loss", "seed", "b")
    i = st.info("w")
    assert (i.dtype, i.shape, i.nbytes, i.placement, i.zone, i.version) == \
        ("f32", (4, 3), 48, "host", "data", 1)
    assert st.info("loss").min == 0 and st.info("loss").finite
    assert st.info("seed").zone == "const"
    assert st.shared_name is None
    with pytest.raises(theusrt.NotFound):
        st.info("nope")
    assert "theus" in theusrt.library_path() or theusrt.library_path()


def test_write_add_read_and_versions(st):
    with st.transaction() as tx:
        tx.write("w", np.arange(12, dtype=np.float32).reshape(4, 3))
        tx.add("w", 10, region=(slice(1, 3), (0, 2)))      # broadcast scalar
        got = tx.read("w")                                   # read your writes
        assert got[1, 0] == 13 and got[2, 1] == 17 and got[3, 2] == 11
    assert tx.version == 2 and st.version == 2
    w = st.read("w")
    want = np.arange(12, dtype=np.float32).reshape(4, 3)
    want[1:3, 0:2] += 10
    np.testing.assert_array_equal(w, want)
    np.testing.assert_array_equal(st.read("w", (-1,)), want[3:4])
    assert st.info("w").version == 2
    assert st.write("n", np.arange(6)) == 3              # int64 -> i32: same kind, cast
    np.testing.assert_array_equal(st.read("n"), np.arange(6, dtype=np.int32))
    assert st.stats()["commits"] == 2


def test_exception_in_with_aborts(st):
    with pytest.raises(ZeroDivisionError):
        with st.transaction() as tx:
            tx.write("n", np.ones(6, np.int32))
            1 / 0
    assert not tx.open
    assert st.version == 1
    np.testing.assert_array_equal(st.read("n"), np.zeros(6, np.int32))


def test_conflict_carries_its_details(st):
    t1 = st.transaction()
    t1.read("n", ((0, 3),))
    st.write("n", [1, 1, 1, 1, 1, 1])
    t1.write("w", np.zeros((4, 3), np.float32))
    with pytest.raises(theusrt.ConflictError) as e:
        t1.commit()
    assert e.value.code == -3 and e.value.status == "THEUS_ECONFLICT"
    assert e.value.conflict["field"] == "n"
    assert e.value.conflict["kind"] == "read_write"
    assert e.value.conflict["base"] == 1 and e.value.conflict["version"] == 2
    assert not t1.open
    assert st.version == 2


def test_gatekeeper_and_const_and_bad_input(st):
    with pytest.raises(theusrt.SchemaError):
        st.write("loss", [-1.0])
    with pytest.raises(theusrt.SchemaError):
        st.write("loss", [np.inf])
    assert st.version == 1
    with pytest.raises(theusrt.AccessError):
        st.write("seed", 7)
    st.init_field("seed", 7)
    assert st.read("seed") == 7
    with st.transaction() as tx:
        with pytest.raises(theusrt.InvalidArgument):
            tx.write("w", np.ones((5, 3), np.float32))            # shape mismatch
        with pytest.raises(theusrt.InvalidArgument):
            tx.write("n", np.ones(6, np.float32))                 # float -> int refused
        with pytest.raises(theusrt.InvalidArgument):
            tx.write("w", np.ones(2, np.float32), region=(slice(0, 5), 0))  # out of bounds
        with pytest.raises(theusrt.InvalidArgument):
            tx.write("w", 1, region=(slice(0, 4, 2),))            # steps
        tx.write("n", np.full(6, 2, np.int32))                    # still usable
    np.testing.assert_array_equal(st.read("n"), np.full(6, 2, np.int32))
    with pytest.raises(theusrt.SchemaError):
        theusrt.State('{"fields": {"x": {"dtype": "f33", "shape": [1]}}}')
    with pytest.raises(theusrt.InvalidArgument):
        st.transaction("sometimes")


def test_borrowed_writes_keep_the_array_until_commit(st):
    a = np.arange(6, dtype=np.int32)
    with st.transaction() as tx:
        tx.write("n", a, borrow=True)
        tx.add("n", np.ones(6, np.int32), borrow=True)
        assert len(tx._keep) == 2
        np.testing.assert_array_equal(tx.read("n"), a + 1)
    assert tx._keep == []
    np.testing.assert_array_equal(st.read("n"), a + 1)
    tx = st.transaction()
    tx.write("n", a * 5, borrow=True)
    tx.abort()
    np.testing.assert_array_equal(st.read("n"), a + 1)


@pytest.mark.parametrize("borrow", [False, True])
def test_regions_and_segments_apply_in_order(st, borrow):
    with st.transaction() as tx:
        tx.write_regions("w", [(slice(0, 2),), (slice(1, 3), (1, 3))],
                         np.arange(10, dtype=np.float32), borrow=borrow)
        tx.write_segments("n", [1, 2], [3, 2], np.array([5, 5, 5, 7, 7], np.int32),
                          op="add", borrow=borrow)
    want = np.zeros((4, 3), np.float32)
    want[0:2] = np.arange(6).reshape(2, 3)
    want[1:3, 1:3] = np.arange(6, 10).reshape(2, 2)
    np.testing.assert_array_equal(st.read("w"), want)
    np.testing.assert_array_equal(st.read("n"), [0, 5, 12, 12, 0, 0])
    with st.transaction() as tx:
        with pytest.raises(theusrt.InvalidArgument):
            tx.write_regions("w", [(0,)], np.ones(4, np.float32))    # 3 elements, not 4
        with pytest.raises(theusrt.InvalidArgument):
            tx.write_segments("n", [4], [3], np.ones(3, np.int32))   # past the end
        with pytest.raises(theusrt.AccessError):
            tx.write_segments("seed", [0], [1], np.ones(1, np.uint64))
        with pytest.raises(theusrt.InvalidArgument):
            tx.write_regions("w", [(0,)], np.ones(3, np.float32), op="mul")
    assert st.version == 2


def test_bf16_fields_take_floats_and_read_as_bits(st):
    vals = np.array([[1.0, -2.5], [3.140625, 1e-3]], np.float32)
    st.write("b", vals)
    bits = st.read("b")
    assert bits.dtype == np.uint16
    np.testing.assert_array_equal(bits, theusrt.float32_to_bf16(vals))
    back = theusrt.bf16_to_float32(bits)
    np.testing.assert_allclose(back, vals, rtol=1 / 128)
    assert back[0, 0] == 1.0 and back[0, 1] == -2.5 and back[1, 0] == 3.140625
    # round to nearest even, NaN stays NaN
    x = np.array([1.0 + 2 ** -8, 1.0 + 3 * 2 ** -8, np.nan], np.float32)
    assert list(theusrt.bf16_to_float32(theusrt.float32_to_bf16(x))[:2]) == \
        [1.0, 1.0 + 2 ** -6]
    assert np.isnan(theusrt.bf16_to_float32(theusrt.float32_to_bf16(x))[2])


def test_closed_state_and_consumed_transaction(st):
    tx = st.transaction()
    tx.write("n", np.ones(6, np.int32))
    st.close()
    assert not tx.open                       # aborted by close
    with pytest.raises(theusrt.InvalidArgument):
        _ = st.version
    with pytest.raises(theusrt.InvalidArgument):
        tx.commit()
    st.close()                               # twice: a no-op


def test_shared_state_between_two_handles(shared_name):
    a = theusrt.State.create_shared(shared_name, SCHEMA)
    try:
        b = theusrt.State.open_shared(shared_name)
        try:
            assert a.shared_name == shared_name
            with a.transaction() as tx:
                tx.write("n", np.arange(6, dtype=np.int32), borrow=True)
            np.testing.assert_array_equal(b.read("n"), np.arange(6))
            assert b.version == 2
            with pytest.raises(theusrt.SchemaError):
                theusrt.State.open_shared(shared_name, {"fields": {"x": {"dtype": "u8",
                                                                         "shape": [1]}}})
        finally:
            b.close()
    finally:
        a.close()
    with pytest.raises(theusrt.NotFound):
        theusrt.State.open_shared(shared_name)
