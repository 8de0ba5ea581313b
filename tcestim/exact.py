"""The exact decomposition against all N stored encodings (ground truth up to Monte Carlo over z)."""
from __future__ import annotations

import math
import sys
from typing import Optional

import torch

from tcestim._ops import mixture_logdensity
from tcestim._validation import check_int, check_matrix, check_posterior, check_same_dtype_device, compute_dtype
from tcestim.estimators import KLDecomposition, Prior, assemble_decomposition
from tcestim.weights import StructuredLogWeights

DEFAULT_CHUNK = 8192


def _progress(total: int, enabled: Optional[bool], description: str):
    """tqdm over ``range(total)`` when enabled (None: only for several chunks on a terminal)."""
    if enabled is None:
        enabled = total > 1 and sys.stderr.isatty()
    if enabled:
        try:
            from tqdm.auto import tqdm
            return tqdm(range(total), desc=description, unit="chunk")
        except ImportError:  # pragma: no cover - tqdm is a dependency
            pass
    return range(total)


def decompose_exact(z, mu, logvar, mu_all, logvar_all, *, prior: Prior = None,
                    chunk_size: Optional[int] = None, progress: Optional[bool] = None) -> KLDecomposition:
    """KL decomposition with q(z) = (1/N) sum_n q(z | n) over all N stored encodings.

    The components are streamed through the fused kernel ``chunk_size`` at a time (default 8192)
    and merged with a running logsumexp, so memory stays O((M + chunk) D). The result is exact up
    to the Monte Carlo error over z; ``result.standard_errors()`` reports it.

    Args:
        z: (M, D) samples, z[i] ~ q(z | n_i).
        mu, logvar: (M, D) the encodings z was drawn from (for log q(z | n)).
        mu_all, logvar_all: (N, D) every encoding of the dataset.
        prior: as in :func:`tcestim.decompose`.
        chunk_size: components per kernel call.
        progress: show a progress bar (None: when there are several chunks and stderr is a terminal).

    Returns:
        :class:`tcestim.KLDecomposition` of per-sample tensors (nats). Differentiable in all inputs.

    Example:
        >>> import torch, tcestim
        >>> g = torch.Generator().manual_seed(0)
        >>> mu = torch.randn(50, 2, generator=g, dtype=torch.float64)
        >>> logvar = torch.full_like(mu, -1.0)
        >>> z = mu + 0.6 * torch.randn(50, 2, generator=g, dtype=torch.float64)
        >>> exact = tcestim.decompose_exact(z, mu, logvar, mu, logvar)   # the batch is the whole set
        >>> torch.allclose(exact.tc, tcestim.decompose(z, mu, logvar).tc)  # so "stratified" is exact
        True
    """
    check_posterior(z, mu, logvar)
    check_matrix("mu_all", mu_all, "(N, D)")
    check_matrix("logvar_all", logvar_all, "(N, D)")
    if mu_all.shape[1] != z.shape[1] or logvar_all.shape != mu_all.shape:
        raise ValueError(f"mu_all and logvar_all must both have shape (N, {z.shape[1]}), got "
                         f"{tuple(mu_all.shape)} and {tuple(logvar_all.shape)}")
    check_same_dtype_device(z=z, mu_all=mu_all, logvar_all=logvar_all)
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK
    chunk_size = check_int("chunk_size", chunk_size, minimum=1)
    dtype = compute_dtype(z.dtype)
    z, mu, logvar, mu_all, logvar_all = (t.to(dtype) for t in (z, mu, logvar, mu_all, logvar_all))
    N = mu_all.shape[0]
    weights = StructuredLogWeights.constant(-math.log(N))
    log_qz = log_qzd = None
    chunks = math.ceil(N / chunk_size)
    for c in _progress(chunks, progress, "decompose_exact"):
        part = slice(c * chunk_size, min(N, (c + 1) * chunk_size))
        qz, qzd = mixture_logdensity(z, mu_all[part], logvar_all[part], weights)
        log_qz = qz if log_qz is None else torch.logaddexp(log_qz, qz)
        log_qzd = qzd if log_qzd is None else torch.logaddexp(log_qzd, qzd)
    return assemble_decomposition(z, mu, logvar, log_qz, log_qzd, prior)
