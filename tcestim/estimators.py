"""Minibatch estimators of the ELBO's KL decomposition (Chen et al. 2018, eq. 1).

    E_n KL(q(z|n) || p(z)) = I(z; n) + KL(q(z) || prod_d q(z_d)) + sum_d KL(q(z_d) || p(z_d))
                              index-code MI   total correlation      dimension-wise KL

All quantities are in nats. Per-sample terms satisfy mi + tc + dimkl == log_qzx - log_pz exactly.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple, Optional, Union

import torch

from tcestim._ops import mixture_logdensity
from tcestim._validation import check_posterior, compute_dtype
from tcestim.bank import DatasetBankBatch, bank_components, check_bank_dataset_size
from tcestim.gaussian import log_normal_diag
from tcestim.priors import prior_log_prob
from tcestim.weights import check_estimator, estimator_log_weights, resolve_dataset_size, stratified_log_weights

Prior = Union[None, torch.distributions.Distribution, Callable[[torch.Tensor], torch.Tensor]]


class KLDecomposition(NamedTuple):
    """Per-sample terms of the KL decomposition, each of shape (B,) unless noted, in nats.

    Example:
        >>> import torch, tcestim
        >>> mu = torch.randn(32, 3, dtype=torch.float64)
        >>> logvar = torch.full_like(mu, -1.0)
        >>> d = tcestim.decompose(mu + 0.6 * torch.randn_like(mu), mu, logvar, dataset_size=1000)
        >>> torch.allclose(d.mi + d.tc + d.dimkl, d.log_qzx - d.log_pz)      # the decomposition is exact
        True
        >>> sorted(d.means())
        ['dimkl', 'mi', 'tc']
    """

    mi: torch.Tensor       # log q(z|n) - log q(z): index-code mutual information
    tc: torch.Tensor       # log q(z) - sum_d log q(z_d): total correlation
    dimkl: torch.Tensor    # sum_d (log q(z_d) - log p(z_d)): dimension-wise KL
    log_qzx: torch.Tensor  # log q(z|n), the encoder's own density
    log_qz: torch.Tensor   # log q(z), the estimated aggregate posterior
    log_qzd: torch.Tensor  # (B, D) log q(z_d), its marginals
    log_pz: torch.Tensor   # log p(z), the prior

    def means(self) -> dict:
        """Batch means of mi, tc and dimkl as Python floats, for logging (one device transfer)."""
        values = torch.stack([getattr(self, name).detach().mean() for name in _TERMS]).tolist()
        return dict(zip(_TERMS, values))

    def standard_errors(self) -> dict:
        """Monte Carlo standard errors (std / sqrt(B)) of the means of mi, tc and dimkl, as floats."""
        n = self.tc.shape[0]
        if n < 2:
            return dict.fromkeys(_TERMS, math.nan)
        values = (torch.stack([getattr(self, name).detach().std() for name in _TERMS]) / math.sqrt(n)).tolist()
        return dict(zip(_TERMS, values))


_TERMS = ("mi", "tc", "dimkl")


def check_stratified_extensions(estimator: str, bank, jackknife: bool) -> None:
    """bank= and jackknife=True are defined for the stratified weights only; the jackknife corrects a
    sample of the other data points, which a DatasetBank is not (it holds them all)."""
    if (bank is not None or jackknife) and estimator != "stratified":
        raise ValueError(f"bank= and jackknife=True need estimator='stratified', got {estimator!r}")
    if jackknife and isinstance(bank, DatasetBankBatch):
        raise ValueError("jackknife=True corrects a sample of the other data points (a MemoryBank); a DatasetBank "
                         "holds every data point, so it needs no jackknife: drop jackknife=True")


def minibatch_log_densities(z, mu, logvar, *, dataset_size=None, estimator="stratified", bank=None,
                            jackknife=False):
    """Validated (log_qz (B,), log_qzd (B, D)) of an estimator; inputs cast to the compute dtype.

    Returns (z, mu, logvar, log_qz, log_qzd) with z, mu, logvar in the compute dtype.
    """
    check_posterior(z, mu, logvar)
    check_estimator(estimator)
    B = z.shape[0]
    N = resolve_dataset_size(dataset_size, B)
    check_stratified_extensions(estimator, bank, jackknife)
    check_bank_dataset_size(bank, dataset_size, B)
    dtype = compute_dtype(z.dtype)
    z, mu, logvar = z.to(dtype), mu.to(dtype), logvar.to(dtype)
    if bank is None and not jackknife:
        weights = estimator_log_weights(estimator, B, N, dtype=dtype, device=z.device)
        return (z, mu, logvar, *mixture_logdensity(z, mu, logvar, weights))
    components_mu, components_logvar, others = ((mu, logvar, B - 1) if bank is None
                                                else bank_components(bank, mu, logvar))
    return (z, mu, logvar, *stratified_log_densities(z, components_mu, components_logvar, N, jackknife, others,
                                                     grad_components=B))


def stratified_log_densities(z, components_mu, components_logvar, dataset_size: int, jackknife: bool = False,
                             num_others: Optional[int] = None, grad_components: Optional[int] = None):
    """Stratified (log_qz, log_qzd) with query i's own encoding at component row i.

    Every other component (batch mates, other ranks' batches, a bank) weighs (N - 1) / (N num_others);
    the own one 1/N. ``num_others`` defaults to K - 1; it is smaller when components are masked out
    (a DatasetBank's unwritten and own slots, of density 0). ``grad_components``: the leading
    components that carry gradient (the batch; a bank's rows after it are detached), so that the
    fused backward skips the rest; None: all.
    """
    N = dataset_size
    if jackknife:
        from tcestim.jackknife import _jackknife_by_order
        return _jackknife_by_order(z, components_mu, components_logvar, N, (2,), grad_components)[2]
    others = components_mu.shape[0] - 1 if num_others is None else num_others
    if others < 1:
        raise ValueError("estimator 'stratified' needs a batch size of at least 2 or a non-empty bank, "
                         f"got {components_mu.shape[0]} component(s)")
    return mixture_logdensity(z, components_mu, components_logvar, stratified_log_weights(N, others),
                              grad_components=grad_components)


def assemble_decomposition(z, mu, logvar, log_qz, log_qzd, prior: Prior) -> KLDecomposition:
    """The per-sample terms from log q(z) and log q(z_d) (any estimator of them)."""
    log_qzx = log_normal_diag(z, mu, logvar).sum(1)
    log_pzd = prior_log_prob(prior, z, per_dim=True)
    return KLDecomposition(
        mi=log_qzx - log_qz,
        tc=log_qz - log_qzd.sum(1),
        dimkl=(log_qzd - log_pzd).sum(1),
        log_qzx=log_qzx,
        log_qz=log_qz,
        log_qzd=log_qzd,
        log_pz=log_pzd.sum(1),
    )


def decompose(z, mu, logvar, *, dataset_size: Optional[int] = None, estimator: str = "stratified",
              prior: Prior = None, bank=None, jackknife: bool = False) -> KLDecomposition:
    """Per-sample KL decomposition of a minibatch from a Gaussian encoder.

    Args:
        z: (B, D) samples, z[i] ~ q(z | x_i).
        mu, logvar: (B, D) encoder means and log-variances of the same batch.
        dataset_size: N, the number of points the batch was drawn from (>= B). None means the batch
            is the whole population (N = B), for which "stratified" is exact.
        estimator: one of :data:`tcestim.ESTIMATORS`.
        prior: factorised prior: None (standard normal), a torch Distribution whose ``log_prob``
            is elementwise, or a callable ``z -> (B, D)`` of per-dimension log densities.
        bank: past encodings to add as components ("stratified" weights: own component 1/N, every
            other (N - 1) / (N (B - 1 + K)), K the bank's components): a :class:`tcestim.MemoryBank`,
            or ``dataset_bank.for_batch(indices)`` of a :class:`tcestim.DatasetBank` (the batch's
            own slots are left out; a full, fresh one gives the exact aggregate posterior).
        jackknife: second-order finite-population jackknife correction of log q(z) and log q(z_d)
            from the leave-one- and leave-two-component-out estimates ("stratified" only; needs
            at least 3 components, first order with exactly 3; no correction when batch + bank
            hold the whole dataset; O(B K D) extra work, inside the fused kernels on the CPU; see
            :mod:`tcestim.jackknife`).

    Returns:
        :class:`KLDecomposition` of per-sample tensors (nats); average them for batch estimates.

    Example:
        >>> import torch, tcestim
        >>> mu = torch.randn(64, 4)
        >>> logvar = torch.full_like(mu, -2.0)
        >>> d = tcestim.decompose(mu + 0.37 * torch.randn_like(mu), mu, logvar, dataset_size=10_000)
        >>> d.tc.shape, d.log_qzd.shape
        (torch.Size([64]), torch.Size([64, 4]))
    """
    z, mu, logvar, log_qz, log_qzd = minibatch_log_densities(
        z, mu, logvar, dataset_size=dataset_size, estimator=estimator, bank=bank, jackknife=jackknife)
    return assemble_decomposition(z, mu, logvar, log_qz, log_qzd, prior)


def total_correlation(z, mu, logvar, *, dataset_size: Optional[int] = None,
                      estimator: str = "stratified", bank=None, jackknife: bool = False) -> torch.Tensor:
    """Minibatch estimate of the total correlation KL(q(z) || prod_d q(z_d)) in nats.

    Args:
        z: (B, D) samples, z[i] ~ q(z | x_i).
        mu, logvar: (B, D) encoder means and log-variances of the same batch.
        dataset_size: N >= B; None means N = B.
        estimator: "stratified" (default), "mss", "mws" or "mss-legacy" (see :mod:`tcestim.weights`).
            "mws" is offset by about (D - 1) log N in value (its gradients are fine).
        bank: a :class:`tcestim.MemoryBank` or ``DatasetBank.for_batch(indices)``: past encodings join
            the components (see :func:`decompose`).
        jackknife: second-order jackknife bias correction ("stratified" only; see :func:`decompose`).

    Returns:
        Scalar tensor: the batch mean of log q(z_i) - sum_d log q(z_id). Differentiable.

    Example:
        >>> import torch, tcestim
        >>> z = torch.randn(32, 1)                      # one latent: nothing to correlate with
        >>> abs(float(tcestim.total_correlation(z, z, torch.zeros_like(z), dataset_size=100))) < 1e-5
        True
    """
    _, _, _, log_qz, log_qzd = minibatch_log_densities(
        z, mu, logvar, dataset_size=dataset_size, estimator=estimator, bank=bank, jackknife=jackknife)
    return (log_qz - log_qzd.sum(1)).mean()
