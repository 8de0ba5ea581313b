"""Closed-form Gaussian quantities: diagonal log-densities and total correlation of N(m, S)."""
from __future__ import annotations

import math

import torch

from tcestim._validation import check_matrix, check_tensor, compute_dtype

LOG_2PI = math.log(2 * math.pi)


def log_normal_diag(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, exp(logvar)) in nats (broadcasting)."""
    return -0.5 * (LOG_2PI + logvar + (x - mean).square() * torch.exp(-logvar))


def standard_normal_log_prob(z: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(z; 0, 1) in nats."""
    return -0.5 * (LOG_2PI + z.square())


def gaussian_total_correlation(cov: torch.Tensor) -> torch.Tensor:
    """TC of N(m, cov) in nats: 0.5 * (sum_d log cov_dd - log det cov).

    Args:
        cov: (..., D, D) symmetric positive-definite covariance(s); float16/bfloat16 are computed
            (and returned) in float32.

    Returns:
        (...) total correlation, >= 0, zero iff cov is diagonal.

    Example:
        >>> import math, torch, tcestim
        >>> cov = torch.tensor([[1.0, 0.5], [0.5, 1.0]], dtype=torch.float64)
        >>> math.isclose(float(tcestim.gaussian_total_correlation(cov)), -0.5 * math.log(0.75))
        True
    """
    cov = check_tensor("cov", cov)
    if cov.dim() < 2 or cov.shape[-1] != cov.shape[-2] or cov.shape[-1] == 0:
        raise ValueError(f"cov must have shape (..., D, D) with D >= 1, got {tuple(cov.shape)}")
    cov = cov.to(compute_dtype(cov.dtype))
    if not torch.allclose(cov, cov.mT, rtol=1e-5, atol=1e-8):
        raise ValueError("cov must be symmetric (cov == cov.mT up to rounding)")
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info != 0).any()):
        raise ValueError("cov must be symmetric positive definite (its Cholesky factorisation failed)")
    log_det = 2.0 * torch.log(torch.diagonal(chol, dim1=-2, dim2=-1)).sum(-1)
    log_diag = torch.log(torch.diagonal(cov, dim1=-2, dim2=-1)).sum(-1)
    return 0.5 * (log_diag - log_det)


def gaussian_tc_of_means(mu: torch.Tensor) -> torch.Tensor:
    """TC of N(0, Cov(mu)) in nats: the "TC of the mean representation" (Locatello et al. 2019).

    A constant column (a collapsed unit: zero variance over the batch) is independent of the others
    and contributes nothing; it is left out rather than making the covariance singular.

    Args:
        mu: (B, D) encoder means; Cov is the unbiased sample covariance over the batch, so B > D.

    Returns:
        Scalar tensor, differentiable with respect to mu.

    Example:
        >>> import torch
        >>> mu = torch.randn(1000, 2, dtype=torch.float64) @ torch.tensor([[1.0, 0.9], [0.0, 0.4]], dtype=torch.float64)
        >>> mu = torch.cat([mu, torch.zeros(1000, 1, dtype=torch.float64)], 1)   # one dead unit
        >>> bool(gaussian_tc_of_means(mu) > 0.3)
        True
    """
    mu = check_matrix("mu", mu, "(B, D)")
    B, D = mu.shape
    if B <= D:
        raise ValueError(f"mu needs more rows than columns (B > D) for a non-singular covariance, "
                         f"got shape {tuple(mu.shape)}")
    cov = torch.cov(mu.to(compute_dtype(mu.dtype)).T).reshape(D, D)
    alive = torch.diagonal(cov) > 0
    if not bool(alive.all()):
        if not bool(alive.any()):
            return cov.sum() * 0.0
        cov = cov[alive][:, alive]
    return gaussian_total_correlation(cov)
