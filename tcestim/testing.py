"""What a test suite runs over: every backend the estimators can run on here, the dtypes, tolerances.

A *backend* is a device plus the code path that serves it: the fused CPU kernels once per instruction
set this CPU supports (``cpu-avx512``, ``cpu-avx2``, ``cpu-default``), the pure-PyTorch fallback
(``fallback``, on the CPU), and the CUDA kernels (``cuda``) when a GPU and a CUDA build are present.
Parametrise a test over :func:`backends` and run it inside :func:`use_backend`, and the same assertions
check every path, as pytorch_scatter does with its ``devices``::

    @pytest.mark.parametrize("backend", tcestim.testing.backends())
    @pytest.mark.parametrize("dtype", tcestim.testing.DTYPES)
    def test_tc(backend, dtype):
        with tcestim.testing.use_backend(backend):
            z = torch.randn(8, 3, dtype=dtype, device=backend.device)
            ...

Example:
    >>> import tcestim.testing as T
    >>> any(b.name == "fallback" for b in T.backends())
    True
"""
from __future__ import annotations

import contextlib
from typing import Iterator, NamedTuple

import torch

from tcestim import _extension

__all__ = ["Backend", "DTYPES", "backends", "cuda_available", "devices", "tolerances", "use_backend", "use_cpu_isa",
           "use_fallback"]

DTYPES = (torch.float32, torch.float64)
"""The dtypes the kernels compute in (float16/bfloat16 inputs are computed in float32)."""

_TOLERANCES = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-10)}


class Backend(NamedTuple):
    """``name``: e.g. "cpu-avx2", "fallback", "cuda"; ``device``: where its tensors live; ``cpu_isa``:
    the instruction set of the CPU kernels (None for the others); ``fused``: whether a fused kernel runs.

    Example:
        >>> import tcestim.testing as T
        >>> T.backends()[0].device
        'cpu'
    """

    name: str
    device: str
    cpu_isa: str | None
    fused: bool


def cuda_available() -> bool:
    """True when CUDA tensors reach the fused CUDA kernels (a GPU and a CUDA build of tcestim).

    Example:
        >>> import torch, tcestim.testing as T
        >>> T.cuda_available() <= torch.cuda.is_available()
        True
    """
    return torch.cuda.is_available() and _extension.has_fused_kernel(torch.device("cuda"))


def backends() -> list:
    """Every :class:`Backend` available on this machine, fused CPU kernels first.

    Example:
        >>> import tcestim.testing as T
        >>> names = [b.name for b in T.backends()]
        >>> "fallback" in names
        True
    """
    found = [Backend(f"cpu-{isa}", "cpu", isa, True) for isa in _extension.supported_cpu_isas()]
    found.append(Backend("fallback", "cpu", None, False))
    if cuda_available():
        found.append(Backend("cuda", "cuda", None, True))
    return found


def devices() -> list:
    """The devices with a fused kernel here: ["cpu"] and, with a GPU and a CUDA build, "cuda".

    Example:
        >>> import tcestim.testing as T
        >>> T.devices()[0]
        'cpu'
    """
    return ["cpu"] + (["cuda"] if cuda_available() else [])


@contextlib.contextmanager
def use_cpu_isa(name: str) -> Iterator[None]:
    """Run the CPU kernels with instruction set ``name`` inside the block, then restore the previous one.

    Example:
        >>> import tcestim, tcestim.testing as T
        >>> with T.use_cpu_isa("default"):
        ...     tcestim.cpu_isa()
        'default'
    """
    previous = _extension.cpu_isa()
    _extension.set_cpu_isa(name)
    try:
        yield
    finally:
        _extension.set_cpu_isa(previous)


@contextlib.contextmanager
def use_fallback() -> Iterator[None]:
    """Route every device to the pure-PyTorch fallback inside the block (not thread-safe; for tests).

    Example:
        >>> import torch, tcestim, tcestim.testing as T
        >>> z = torch.randn(8, 3, dtype=torch.float64)
        >>> with T.use_fallback():
        ...     slow = tcestim.total_correlation(z, z, torch.zeros_like(z))
        >>> torch.allclose(slow, tcestim.total_correlation(z, z, torch.zeros_like(z)))
        True
    """
    previous = _extension.FUSED_DEVICE_TYPES
    _extension.FUSED_DEVICE_TYPES = frozenset()
    try:
        yield
    finally:
        _extension.FUSED_DEVICE_TYPES = previous


@contextlib.contextmanager
def use_backend(backend: Backend) -> Iterator[None]:
    """Inside the block, tensors on ``backend.device`` are served by ``backend``'s code path.

    Example:
        >>> import torch, tcestim, tcestim.testing as T
        >>> z = torch.randn(8, 3, dtype=torch.float64)
        >>> values = []
        >>> for backend in T.backends():
        ...     with T.use_backend(backend):
        ...         values.append(tcestim.total_correlation(z.to(backend.device), z.to(backend.device),
        ...                                                 torch.zeros_like(z, device=backend.device)).cpu())
        >>> all(torch.allclose(v, values[0]) for v in values)
        True
    """
    if backend.cpu_isa is not None:
        with use_cpu_isa(backend.cpu_isa):
            yield
    elif not backend.fused:
        with use_fallback():
            yield
    else:
        yield


def tolerances(dtype: torch.dtype) -> dict:
    """``rtol``/``atol`` for comparing a result computed in ``dtype`` with a float64 reference.

    Example:
        >>> import torch, tcestim.testing as T
        >>> T.tolerances(torch.float64)
        {'rtol': 1e-10, 'atol': 1e-10}
    """
    return dict(_TOLERANCES[torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype])
