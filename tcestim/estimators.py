"""Minibatch estimators of the ELBO's KL decomposition (Chen et al. 2018, eq. 1).

    E_n KL(q(z|n) || p(z)) = I(z; n) + KL(q(z) || prod_d q(z_d)) + sum_d KL(q(z_d) || p(z_d))
                              index-code MI   total correlation      dimension-wise KL

All quantities are in nats. Per-sample terms satisfy mi + tc + dimkl == log_qzx - log_pz exactly.
"""
from __future__ import annotations

from typing import Callable, NamedTuple, Optional, Union

import torch

from tcestim._validation import check_posterior, compute_dtype
from tcestim.gaussian import log_normal_diag, standard_normal_log_prob
from tcestim.mixture import mixture_logdensity
from tcestim.weights import check_estimator, estimator_log_weights, resolve_dataset_size

Prior = Union[None, torch.distributions.Distribution, Callable[[torch.Tensor], torch.Tensor]]


class KLDecomposition(NamedTuple):
    """Per-sample terms of the KL decomposition, each of shape (B,) unless noted, in nats."""

    mi: torch.Tensor       # log q(z|n) - log q(z): index-code mutual information
    tc: torch.Tensor       # log q(z) - sum_d log q(z_d): total correlation
    dimkl: torch.Tensor    # sum_d (log q(z_d) - log p(z_d)): dimension-wise KL
    log_qzx: torch.Tensor  # log q(z|n), the encoder's own density
    log_qz: torch.Tensor   # log q(z), the estimated aggregate posterior
    log_qzd: torch.Tensor  # (B, D) log q(z_d), its marginals
    log_pz: torch.Tensor   # log p(z), the prior

    def means(self) -> dict:
        """Batch means of mi, tc and dimkl as Python floats."""
        return {name: float(getattr(self, name).mean()) for name in ("mi", "tc", "dimkl")}


def _batch_log_weights(estimator: str, z: torch.Tensor, dataset_size):
    B = z.shape[0]
    check_estimator(estimator)
    weights = estimator_log_weights(estimator, B, dataset_size, dtype=z.dtype, device=z.device)
    return weights


def _prepare(z, mu, logvar, dataset_size, estimator):
    check_posterior(z, mu, logvar)
    resolve_dataset_size(dataset_size, z.shape[0])
    dtype = compute_dtype(z.dtype)
    z, mu, logvar = z.to(dtype), mu.to(dtype), logvar.to(dtype)
    return z, mu, logvar, _batch_log_weights(estimator, z, dataset_size)


def _prior_log_prob(prior: Prior, z: torch.Tensor) -> torch.Tensor:
    if prior is None:
        return standard_normal_log_prob(z)
    if isinstance(prior, torch.distributions.Distribution):
        log_p = prior.log_prob(z)
    elif callable(prior):
        log_p = prior(z)
    else:
        raise TypeError("prior must be None, a torch.distributions.Distribution or a callable, "
                        f"got {type(prior).__name__}")
    if not isinstance(log_p, torch.Tensor) or log_p.shape != z.shape:
        shape = tuple(log_p.shape) if isinstance(log_p, torch.Tensor) else type(log_p).__name__
        raise ValueError(f"prior must give per-dimension log densities of shape (B, D) = "
                         f"{tuple(z.shape)} (a factorised prior), got {shape}")
    return log_p.to(z.dtype)


def decompose(z, mu, logvar, *, dataset_size: Optional[int] = None, estimator: str = "stratified",
              prior: Prior = None) -> KLDecomposition:
    """Per-sample KL decomposition of a minibatch from a Gaussian encoder.

    Args:
        z: (B, D) samples, z[i] ~ q(z | x_i).
        mu, logvar: (B, D) encoder means and log-variances of the same batch.
        dataset_size: N, the number of points the batch was drawn from (>= B). None means the batch
            is the whole population (N = B), for which "stratified" is exact.
        estimator: one of :data:`tcestim.ESTIMATORS`.
        prior: factorised prior: None (standard normal), a torch Distribution whose ``log_prob``
            is elementwise, or a callable ``z -> (B, D)`` of per-dimension log densities.

    Returns:
        :class:`KLDecomposition` of per-sample tensors (nats); average them for batch estimates.
    """
    z, mu, logvar, weights = _prepare(z, mu, logvar, dataset_size, estimator)
    log_qz, log_qzd = mixture_logdensity(z, mu, logvar, weights)
    log_qzx = log_normal_diag(z, mu, logvar).sum(1)
    log_pzd = _prior_log_prob(prior, z)
    return KLDecomposition(
        mi=log_qzx - log_qz,
        tc=log_qz - log_qzd.sum(1),
        dimkl=(log_qzd - log_pzd).sum(1),
        log_qzx=log_qzx,
        log_qz=log_qz,
        log_qzd=log_qzd,
        log_pz=log_pzd.sum(1),
    )


def total_correlation(z, mu, logvar, *, dataset_size: Optional[int] = None,
                      estimator: str = "stratified") -> torch.Tensor:
    """Minibatch estimate of the total correlation KL(q(z) || prod_d q(z_d)) in nats.

    Args:
        z: (B, D) samples, z[i] ~ q(z | x_i).
        mu, logvar: (B, D) encoder means and log-variances of the same batch.
        dataset_size: N >= B; None means N = B.
        estimator: "stratified" (default), "mss", "mws" or "mss-legacy" (see :mod:`tcestim.weights`).
            "mws" is offset by about (D - 1) log N in value (its gradients are fine).

    Returns:
        Scalar tensor: the batch mean of log q(z_i) - sum_d log q(z_id). Differentiable.
    """
    z, mu, logvar, weights = _prepare(z, mu, logvar, dataset_size, estimator)
    log_qz, log_qzd = mixture_logdensity(z, mu, logvar, weights)
    return (log_qz - log_qzd.sum(1)).mean()
