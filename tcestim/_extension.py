"""Loads the compiled operators (tcestim._C) and says which backend serves which device."""
from __future__ import annotations

import os
import warnings

import torch

_LOAD_ERROR: Exception | None = None

try:
    from tcestim import _C  # importing registers torch.ops.tcestim.*
except ImportError as error:  # pragma: no cover - exercised only on broken installs
    _LOAD_ERROR = error
    if os.environ.get("TCESTIM_REQUIRE_EXTENSION", "0") not in ("0", ""):
        raise ImportError(
            "tcestim: the compiled extension tcestim._C failed to load and TCESTIM_REQUIRE_EXTENSION "
            f"is set: {error}"
        ) from error
    warnings.warn(
        f"tcestim: compiled extension unavailable ({error}); using the slower pure-PyTorch path",
        RuntimeWarning,
        stacklevel=2,
    )


def extension_available() -> bool:
    """True when the compiled operators (fused CPU kernels) are loaded.

    Example:
        >>> import tcestim
        >>> isinstance(tcestim.extension_available(), bool)
        True
    """
    return _LOAD_ERROR is None


def _fused_device_types() -> frozenset:
    if not extension_available():
        return frozenset()
    keys = {"cpu": "CPU", "cuda": "CUDA"}
    return frozenset(device_type for device_type, key in keys.items()
                     if torch._C._dispatch_has_kernel_for_dispatch_key("tcestim::mixture_logdensity", key))


# Largest D the CUDA kernels take, as the extension declares it (csrc/kernel_args.h); larger D on
# CUDA uses the fallback. 0 without the extension (nothing is fused then).
CUDA_MAX_DIM = _C.CUDA_MAX_DIM if _LOAD_ERROR is None else 0
# Sizes of the jackknife_sums outputs (csrc/kernel_args.h): power sums and big terms per target.
JACKKNIFE_SERIES = _C.JACKKNIFE_SERIES if _LOAD_ERROR is None else 0
JACKKNIFE_MAX_BIG = _C.JACKKNIFE_MAX_BIG if _LOAD_ERROR is None else 0

# Fixed at import (a plain set, so torch.compile treats the lookup as a constant).
FUSED_DEVICE_TYPES = _fused_device_types()


def has_fused_kernel(device: torch.device) -> bool:
    """True when a fused kernel is registered for tensors on ``device``."""
    return device.type in FUSED_DEVICE_TYPES


def cpu_isa() -> str:
    """Instruction set the CPU kernels run with: 'avx512', 'avx2' or 'default'.

    Example:
        >>> import tcestim
        >>> tcestim.cpu_isa() in tcestim.supported_cpu_isas()
        True
    """
    if not extension_available():
        raise RuntimeError("tcestim: the compiled extension is not loaded")
    return torch.ops.tcestim.cpu_isa()


def supported_cpu_isas() -> tuple:
    """Instruction sets this CPU and build support, best first (e.g. ('avx512', 'avx2', 'default')).

    Example:
        >>> import tcestim
        >>> tcestim.supported_cpu_isas()[-1]                # the portable baseline is always there
        'default'
    """
    if not extension_available():
        return ()
    return tuple(torch.ops.tcestim.supported_cpu_isas())


def set_cpu_isa(name: str) -> None:
    """Select the CPU kernels' instruction set ('avx512', 'avx2', 'default'); for benchmarks and tests.

    Example:
        >>> import tcestim
        >>> previous = tcestim.cpu_isa()
        >>> tcestim.set_cpu_isa("default")
        >>> tcestim.cpu_isa()
        'default'
        >>> tcestim.set_cpu_isa(previous)
    """
    if not extension_available():
        raise RuntimeError("tcestim: the compiled extension is not loaded")
    torch.ops.tcestim.set_cpu_isa(name)
