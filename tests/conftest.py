import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import tcestim  # noqa: E402

def pytest_sessionstart(session):
    if os.environ.get("TCESTIM_REQUIRE_EXTENSION", "0") not in ("0", ""):
        assert tcestim.extension_available(), "TCESTIM_REQUIRE_EXTENSION is set but tcestim._C is not loaded"


@pytest.fixture(params=list(tcestim.supported_cpu_isas()) or ["none"])
def cpu_isa(request):
    """Runs a test once per instruction set the CPU kernels support here."""
    if request.param == "none":
        pytest.skip("compiled extension not available")
    previous = tcestim.cpu_isa()
    tcestim.set_cpu_isa(request.param)
    yield request.param
    tcestim.set_cpu_isa(previous)


@pytest.fixture
def requires_extension():
    if not tcestim.extension_available():
        pytest.skip("compiled extension not available")
