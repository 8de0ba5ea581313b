"""Input checks shared by the public functions: clear errors that name the argument."""
from __future__ import annotations

import numbers

import torch

_HALF = (torch.float16, torch.bfloat16)


def check_tensor(name: str, value) -> torch.Tensor:
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    if not value.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype (float16/bfloat16/float32/float64), "
                        f"got {value.dtype}")
    return value


def check_matrix(name: str, value, shape_hint: str) -> torch.Tensor:
    value = check_tensor(name, value)
    if value.dim() != 2:
        raise ValueError(f"{name} must be 2-D {shape_hint}, got shape {tuple(value.shape)}")
    if value.numel() == 0:
        raise ValueError(f"{name} must be non-empty {shape_hint}, got shape {tuple(value.shape)}")
    return value


def check_same_dtype_device(**tensors: torch.Tensor) -> None:
    items = list(tensors.items())
    first_name, first = items[0]
    for name, t in items[1:]:
        if t.dtype != first.dtype:
            raise TypeError(f"{name} must have the dtype of {first_name} ({first.dtype}), got {t.dtype}")
        if t.device != first.device:
            raise ValueError(
                f"{name} must be on the device of {first_name} ({first.device}), got {t.device}")


def check_posterior(z, mu, logvar) -> None:
    """z, mu, logvar: matching (B, D) floating tensors on one device."""
    check_matrix("z", z, "(B, D)")
    check_matrix("mu", mu, "(B, D)")
    check_matrix("logvar", logvar, "(B, D)")
    if mu.shape != z.shape:
        raise ValueError(f"mu must have the shape of z {tuple(z.shape)}, got {tuple(mu.shape)}")
    if logvar.shape != z.shape:
        raise ValueError(f"logvar must have the shape of z {tuple(z.shape)}, got {tuple(logvar.shape)}")
    check_same_dtype_device(z=z, mu=mu, logvar=logvar)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float16/bfloat16 inputs are computed (and returned) in float32."""
    return torch.float32 if dtype in _HALF else dtype


def is_int(value) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def check_int(name: str, value, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """The one rule for integer arguments: a non-integer is a TypeError, one out of range a ValueError."""
    if not is_int(value):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {value}")
    return value
