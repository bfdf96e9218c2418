# The suite runs against an installed libtheus: THEUS_LIBRARY (a path to libtheus.so) or
# LD_LIBRARY_PATH tells theusrt where it is (.ci/test.d/40-python.sh sets one).
import os

import pytest


@pytest.fixture
def shared_name():
    """A shared state name unique to this test process, removed afterwards whatever
    happened (it is normally gone already, with its last handle)."""
    import theusrt
    name = f"py{os.getpid()}-t"
    yield name
    try:
        theusrt.shared_remove(name)
    except theusrt.NotFound:
        pass
