"""Fixtures shared by every test module; puts tests/ on sys.path so ``import reference`` and
``import helpers`` work from the subdirectories too (basenames of test modules are unique: no
``__init__.py`` files are needed).

``backend``: runs a test once per :func:`tcestim.testing.backends` entry (every fused CPU
instruction set, the pure-PyTorch ``fallback``, ``cuda`` where present), inside
:func:`tcestim.testing.use_backend`. Two marks narrow it, and the other backends skip with a reason:

* ``@pytest.mark.backends("cuda", ...)``: only the named backends;
* ``@pytest.mark.fused``: only backends with a fused kernel (the tests of ``torch.ops.tcestim.*``).
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(__file__))

import tcestim  # noqa: E402
import tcestim.testing  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "backends(*names): run only on these tcestim.testing backends")
    config.addinivalue_line("markers", "fused: run only on backends with a fused kernel (not the fallback)")


def pytest_sessionstart(session):
    if os.environ.get("TCESTIM_REQUIRE_EXTENSION", "0") not in ("0", ""):
        assert tcestim.extension_available(), "TCESTIM_REQUIRE_EXTENSION is set but tcestim._C is not loaded"


@pytest.fixture(params=tcestim.testing.backends(), ids=lambda backend: backend.name)
def backend(request):
    """One tcestim.testing.Backend per run; the test body runs inside its use_backend block."""
    backend = request.param
    names = request.node.get_closest_marker("backends")
    if names is not None and backend.name not in names.args:
        pytest.skip(f"runs on {', '.join(names.args)} only")
    if request.node.get_closest_marker("fused") is not None and not backend.fused:
        pytest.skip("tests the fused operators; the fallback calls none")
    with tcestim.testing.use_backend(backend):
        yield backend


@pytest.fixture(params=list(tcestim.supported_cpu_isas()) or ["none"])
def cpu_isa(request):
    """One run per instruction set of the fused CPU kernels (for tests of the CPU kernels alone)."""
    if request.param == "none":
        pytest.skip("compiled extension not available")
    with tcestim.testing.use_cpu_isa(request.param):
        yield request.param


@pytest.fixture
def requires_extension():
    if not tcestim.extension_available():
        pytest.skip("compiled extension not available")
