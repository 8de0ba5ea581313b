"""VAE objectives built on the KL decomposition: β-VAE, β-TCVAE, RTC-VAE and the decomposition
objective of Mathieu et al. (2019).

Every function is model-agnostic: the caller runs the encoder and decoder and passes

- ``log_px``: (B,) decoder log-likelihood log p(x_i | z_i) per sample, in nats (summed over the
  pixels / features of x_i, *not* averaged);
- ``z``: (B, D) reparameterised samples z_i ~ q(z | x_i) (the ones ``log_px`` was computed at);
- ``mu``, ``logvar``: (B, D) encoder means and log-variances of q(z | x_i) = N(mu_i, diag exp(logvar_i)).

Each returns :class:`Objective` ``(loss, terms)``: ``loss`` is a scalar tensor to *minimise* (a batch
mean, nats per data point) and ``terms`` a dict of Python floats for logging (batch means, nats):
``recon`` = -mean log p(x|z), ``kl`` = mean KL(q(z|x) || p(z)), ``elbo`` = mean log p(x|z) - kl, the
terms of the decomposition where they are computed, the coefficients and ``loss``. The ELBO's KL
is exactly ``mi + tc + dimkl`` (Chen et al. 2018, eq. 1) whenever those are reported.

``dataset_size`` (N) is a required keyword wherever minibatch estimates of q(z) are used: the
stratified weights depend on it; pass ``None`` only when the batch is the whole dataset (N = B).
"""
from __future__ import annotations

import math
import numbers
from typing import Dict, NamedTuple, Optional

import torch

from tcestim._validation import (check_matrix, check_posterior, check_same_dtype_device, check_tensor,
                                 compute_dtype)
from tcestim.estimators import decompose
from tcestim.gaussian import log_normal_diag
from tcestim.mixture import log_aggregate_posterior
from tcestim.priors import (AnisotropicGaussian, NonFactorisedPriorError, StandardNormal, is_factorised,
                            prior_log_prob, sample_prior)

__all__ = [
    "DIVERGENCES",
    "Objective",
    "beta_tcvae",
    "beta_vae",
    "decomposition_objective",
    "gaussian_kl",
    "mmd_imq",
    "rtc_vae",
    "rtc_variance_penalty",
]

DIVERGENCES = ("kl", "inclusive_kl", "mmd")
"""Names accepted by ``divergence=`` of :func:`decomposition_objective`."""


class Objective(NamedTuple):
    """``loss``: scalar tensor to minimise (nats per data point); ``terms``: float diagnostics."""

    loss: torch.Tensor
    terms: Dict[str, float]


# ----------------------------------------------------------------------------------------------
# checks and small helpers


def _check_coef(name: str, value):
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or not value.is_floating_point():
            raise ValueError(f"{name} must be a real number or a 0-d floating tensor, got shape "
                             f"{tuple(value.shape)} and dtype {value.dtype}")
        if not bool(torch.isfinite(value)):
            raise ValueError(f"{name} must be finite, got {float(value)!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(float(value)):
        raise ValueError(f"{name} must be finite, got {value!r}")
    return float(value)


def _check_log_px(log_px, batch_size: int) -> torch.Tensor:
    check_tensor("log_px", log_px)
    if log_px.shape != (batch_size,):
        raise ValueError(f"log_px must have shape (B,) = ({batch_size},), the decoder log-likelihood "
                         f"log p(x_i | z_i) of each sample, got {tuple(log_px.shape)}")
    return log_px.to(compute_dtype(log_px.dtype))


def _check_mu_logvar(mu, logvar):
    check_matrix("mu", mu, "(B, D)")
    check_matrix("logvar", logvar, "(B, D)")
    if logvar.shape != mu.shape:
        raise ValueError(f"logvar must have the shape of mu {tuple(mu.shape)}, got {tuple(logvar.shape)}")
    check_same_dtype_device(mu=mu, logvar=logvar)
    dtype = compute_dtype(mu.dtype)
    return mu.to(dtype), logvar.to(dtype)


def _float(t) -> float:
    return float(t.detach()) if isinstance(t, torch.Tensor) else float(t)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(B,) closed-form KL(N(mu, diag exp(logvar)) || N(0, I)) = 0.5 sum_d (mu^2 + exp(logvar) - 1 - logvar)."""
    return 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).sum(-1)


def _gaussian_kl_diag(mu, logvar, loc, log_scale) -> torch.Tensor:
    """(B,) KL(N(mu, exp(logvar)) || N(loc, exp(2 log_scale))), diagonal, summed over D."""
    return (log_scale - 0.5 * logvar
            + 0.5 * (logvar.exp() + (mu - loc).square()) * torch.exp(-2.0 * log_scale) - 0.5).sum(-1)


def _analytic_kl(mu, logvar, prior) -> Optional[torch.Tensor]:
    """Closed-form KL(q(z|x) || p(z)) per sample for Gaussian diagonal priors; None otherwise."""
    if prior is None or isinstance(prior, StandardNormal):
        if prior is not None and prior.dim != mu.shape[1]:
            return None
        return gaussian_kl(mu, logvar)
    if isinstance(prior, AnisotropicGaussian) and prior.dim == mu.shape[1]:
        return _gaussian_kl_diag(mu, logvar, 0.0, prior.log_scale.to(mu.dtype))
    if type(prior) is torch.distributions.Normal:
        try:
            loc = torch.broadcast_to(prior.loc, mu.shape).to(mu.dtype)
            scale = torch.broadcast_to(prior.scale, mu.shape).to(mu.dtype)
        except RuntimeError:
            return None
        return _gaussian_kl_diag(mu, logvar, loc, torch.log(scale))
    return None


def rtc_variance_penalty(logvar: torch.Tensor) -> torch.Tensor:
    """RTC-VAE's penalty tr(E_n Cov_q(z|n)[z]) = sum_d E_n[sigma_d^2(n)] (eq. 4), a scalar.

    ``logvar``: (B, D) encoder log-variances; E_n is the batch mean.
    """
    check_matrix("logvar", logvar, "(B, D)")
    return logvar.to(compute_dtype(logvar.dtype)).exp().mean(0).sum()


def _sq_dists(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, m) squared Euclidean distances, without a square root (gradients are finite at 0)."""
    d = x.square().sum(1, keepdim=True) + y.square().sum(1).unsqueeze(0) - 2.0 * (x @ y.T)
    return d.clamp_min(0.0)


def mmd_imq(x: torch.Tensor, y: torch.Tensor, *, c: Optional[float] = None) -> torch.Tensor:
    """Unbiased estimate of MMD^2 between samples x (n, D) and y (m, D), inverse multiquadratic kernel.

        k(a, b) = C / (C + ||a - b||^2),   C = 2 D by default (Tolstikhin et al. 2017 with a unit-variance
                                           prior; Mathieu et al. 2019, appendix B)
        MMD^2 = sum_{i != j} k(x_i, x_j) / (n (n - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
                - 2 sum_{i, j} k(x_i, y_j) / (n m)

    The U-statistic can be slightly negative. Needs n, m >= 2. Returns a scalar tensor.
    """
    check_matrix("x", x, "(n, D)")
    check_matrix("y", y, "(m, D)")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"y must have D = {x.shape[1]} columns like x, got shape {tuple(y.shape)}")
    n, m = x.shape[0], y.shape[0]
    if n < 2 or m < 2:
        raise ValueError(f"the unbiased MMD needs at least 2 samples on each side, got n = {n}, m = {m}")
    if c is None:
        c = 2.0 * x.shape[1]
    c = _check_coef("c", c)
    if not (float(c) > 0):
        raise ValueError(f"c must be positive, got {float(c)!r}")
    dtype = torch.promote_types(compute_dtype(x.dtype), compute_dtype(y.dtype))
    x, y = x.to(dtype), y.to(dtype)

    def off_diagonal_mean(k):
        k = k.masked_fill(torch.eye(k.shape[0], dtype=torch.bool, device=k.device), 0.0)
        return k.sum() / (k.shape[0] * (k.shape[0] - 1))

    kxx = c / (c + _sq_dists(x, x))
    kyy = c / (c + _sq_dists(y, y))
    kxy = c / (c + _sq_dists(x, y))
    return off_diagonal_mean(kxx) + off_diagonal_mean(kyy) - 2.0 * kxy.mean()


# ----------------------------------------------------------------------------------------------
# objectives


def beta_vae(log_px: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, beta: float = 1.0) -> Objective:
    """β-VAE (Higgins et al. 2017): loss = -mean log p(x|z) + beta * mean KL(q(z|x) || N(0, I)).

    The KL is the closed form 0.5 sum_d (mu^2 + exp(logvar) - 1 - logvar).

    Args:
        log_px: (B,) log p(x_i | z_i), nats.
        mu, logvar: (B, D) encoder parameters.
        beta: KL weight (1 gives the negative ELBO).

    Returns:
        :class:`Objective`; terms ``loss, recon, kl, elbo, beta``.
    """
    mu, logvar = _check_mu_logvar(mu, logvar)
    log_px = _check_log_px(log_px, mu.shape[0])
    beta = _check_coef("beta", beta)
    recon = -log_px.mean()
    kl = gaussian_kl(mu, logvar).mean()
    loss = recon + beta * kl
    return Objective(loss, {"loss": _float(loss), "recon": _float(recon), "kl": _float(kl),
                            "elbo": _float(-recon - kl), "beta": _float(beta)})


def beta_tcvae(log_px: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *,
               dataset_size: Optional[int], alpha: float = 1.0, beta: float = 6.0, gamma: float = 1.0,
               estimator: str = "stratified", prior=None, bank=None, jackknife: bool = False) -> Objective:
    """β-TCVAE (Chen et al. 2018, eq. 4; eq. 2 is alpha = gamma = 1):

        loss = -mean log p(x|z) + alpha * MI + beta * TC + gamma * dimKL

    with MI, TC, dimKL the batch means of :func:`tcestim.decompose` (per-sample estimates, nats). With
    alpha = beta = gamma = 1 it is the negative ELBO, -mean(log_px - (log q(z|x) - log p(z))), the
    KL estimated by Monte Carlo at z.

    Args:
        log_px: (B,) log p(x_i | z_i).
        z, mu, logvar: (B, D) samples and encoder parameters.
        dataset_size: N >= B (required keyword; None means N = B).
        alpha, beta, gamma: weights of MI, TC and dimension-wise KL.
        estimator, bank, jackknife: passed to :func:`tcestim.decompose`.
        prior: a factorised prior (None = N(0, I), a :mod:`tcestim.priors` factorised prior, a
            Distribution with elementwise log_prob, or a callable z -> (B, D)).

    Returns:
        :class:`Objective`; terms ``loss, recon, mi, tc, dimkl, kl, elbo, alpha, beta, gamma``.
    """
    check_posterior(z, mu, logvar)
    log_px = _check_log_px(log_px, z.shape[0])
    alpha, beta, gamma = (_check_coef(n, v) for n, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)))
    if not is_factorised(prior):
        raise NonFactorisedPriorError(
            f"beta_tcvae needs a factorised prior for the dimension-wise KL, got {type(prior).__name__}; "
            "for a non-factorised prior use decomposition_objective(..., divergence='kl')")
    d = decompose(z, mu, logvar, dataset_size=dataset_size, estimator=estimator, prior=prior, bank=bank,
                  jackknife=jackknife)
    recon = -log_px.mean()
    loss = recon + (alpha * d.mi + beta * d.tc + gamma * d.dimkl).mean()
    kl = (d.log_qzx - d.log_pz).mean()
    terms = {"loss": _float(loss), "recon": _float(recon),
             **{name: _float(getattr(d, name).mean()) for name in ("mi", "tc", "dimkl")}, "kl": _float(kl),
             "elbo": _float(-recon - kl), "alpha": _float(alpha), "beta": _float(beta), "gamma": _float(gamma)}
    return Objective(loss, terms)


def rtc_vae(log_px: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *,
            dataset_size: Optional[int], beta: float, eta: float, estimator: str = "stratified",
            prior=None, bank=None, jackknife: bool = False) -> Objective:
    """RTC-VAE (RTC-VAE paper, eq. 3-4): L_RTC = ELBO - beta TC - eta tr(E_n Cov_q(z|n)[z]); the loss is

        loss = -ELBO + beta * TC + eta * sum_d E_n[sigma_d^2(n)]
             = -mean log p(x|z) + MI + (1 + beta) TC + dimKL + eta * sum_d mean_n exp(logvar_nd)

    Note the paper's convention (eq. 3, L_β-TC = ELBO - β TC): ``beta`` is the TC weight *on top of*
    the ELBO's own TC, so this equals ``beta_tcvae(..., alpha=1, beta=1 + beta, gamma=1)`` plus the
    penalty (terms report ``tc_weight`` = 1 + beta). The paper uses eta = 10.

    Args:
        log_px: (B,) log p(x_i | z_i).
        z, mu, logvar: (B, D).
        dataset_size: N >= B (required keyword; None means N = B).
        beta: extra TC weight. eta: weight of the variance penalty.
        estimator, prior, bank, jackknife: as in :func:`beta_tcvae`.

    Returns:
        :class:`Objective`; the terms of :func:`beta_tcvae` plus ``var_penalty``, ``eta``, ``tc_weight``.
    """
    beta = _check_coef("beta", beta)
    eta = _check_coef("eta", eta)
    base = beta_tcvae(log_px, z, mu, logvar, dataset_size=dataset_size, alpha=1.0, beta=1.0 + beta, gamma=1.0,
                      estimator=estimator, prior=prior, bank=bank, jackknife=jackknife)
    penalty = rtc_variance_penalty(logvar)
    loss = base.loss + eta * penalty
    terms = dict(base.terms)
    terms.update(loss=_float(loss), beta=_float(beta), tc_weight=_float(1.0 + beta), eta=_float(eta),
                 var_penalty=_float(penalty))
    return Objective(loss, terms)


def decomposition_objective(log_px: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *,
                            dataset_size: Optional[int], beta: float = 1.0, alpha: float = 0.0,
                            divergence: str = "kl", prior=None, prior_samples: Optional[torch.Tensor] = None,
                            estimator: str = "stratified", bank=None, kl: str = "auto",
                            mmd_c: Optional[float] = None,
                            generator: Optional[torch.Generator] = None) -> Objective:
    """Mathieu et al. (2019) eq. 7, as a loss to minimise:

        L_{α,β} = E log p(x|z) - beta KL(q(z|x) || p(z)) - alpha D(q(z), p(z));   loss = -L_{α,β}

    KL(q(z|x) || p(z)) (per sample, batch mean): closed form for N(0, I) (None or
    :class:`~tcestim.priors.StandardNormal`), :class:`~tcestim.priors.AnisotropicGaussian` and
    ``torch.distributions.Normal``; otherwise the Monte Carlo estimate log q(z|x) - log p(z) at z
    (``kl="auto"``; force with ``kl="analytic"`` or ``kl="sample"``).

    D(q(z), p(z)), ``divergence=``:

    - ``"kl"``: KL(q(z) || p(z)) ~ mean_i (log q(z_i) - log p(z_i)), log q(z_i) from the minibatch
      estimator ``estimator`` (default "stratified", Mathieu et al. eq. 10b) of :func:`tcestim.decompose`
      (with ``dataset_size``, ``bank``). Works with non-factorised priors (only the joint log p is used).
    - ``"inclusive_kl"``: KL(p(z) || q(z)) ~ mean_s (log p(y_s) - log q(y_s)) over prior samples y_s,
      with q(y) = (1/B) sum_i q(y | x_i) the batch's aggregate encoding
      (:func:`tcestim.log_aggregate_posterior`, uniform weights). Mathieu et al. sec. 6.2 / appendix B.
    - ``"mmd"``: unbiased MMD^2 between z and the prior samples, inverse multiquadratic kernel
      C / (C + ||a - b||^2) with C = 2 D (``mmd_c`` overrides); see :func:`mmd_imq`.

    Prior samples (``"inclusive_kl"``, ``"mmd"``): ``prior_samples`` (S, D) if given, else B samples drawn
    with :func:`tcestim.priors.sample_prior` (``generator`` for reproducibility); those of
    :mod:`tcestim.priors` are reparameterised, so learnable prior scales get the full gradient.

    Args:
        log_px: (B,) log p(x_i | z_i). z, mu, logvar: (B, D).
        dataset_size: N >= B, used by ``divergence="kl"`` (required keyword; None means N = B).
        beta, alpha: weights of the KL and the divergence (alpha = 0 gives a β-VAE with this prior).
        prior: None (N(0, I)), any :mod:`tcestim.priors` prior (factorised or not), a Distribution, or a
            callable giving (B, D) or (B,) log densities (a callable cannot be sampled).

    Returns:
        :class:`Objective`; terms ``loss, recon, kl, divergence, elbo, beta, alpha, kl_analytic``
        (1.0 when the KL was the closed form).
    """
    check_posterior(z, mu, logvar)
    log_px = _check_log_px(log_px, z.shape[0])
    beta = _check_coef("beta", beta)
    alpha = _check_coef("alpha", alpha)
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
    if kl not in ("auto", "analytic", "sample"):
        raise ValueError(f"kl must be 'auto', 'analytic' or 'sample', got {kl!r}")
    B, D = z.shape
    dtype = compute_dtype(z.dtype)
    zc, muc, logvarc = z.to(dtype), mu.to(dtype), logvar.to(dtype)

    kl_per_sample = _analytic_kl(muc, logvarc, prior) if kl != "sample" else None
    if kl == "analytic" and kl_per_sample is None:
        raise ValueError("kl='analytic' needs a diagonal Gaussian prior (None, StandardNormal, "
                         f"AnisotropicGaussian or torch.distributions.Normal), got {type(prior).__name__}")
    analytic = kl_per_sample is not None
    log_pz = None
    if not analytic:
        log_pz = prior_log_prob(prior, zc)
        kl_per_sample = log_normal_diag(zc, muc, logvarc).sum(1) - log_pz

    if divergence == "kl":
        d = decompose(z, mu, logvar, dataset_size=dataset_size, estimator=estimator, bank=bank)
        if log_pz is None:
            log_pz = prior_log_prob(prior, zc)
        div = (d.log_qz - log_pz).mean()
    else:
        if prior_samples is None:
            prior_samples = sample_prior(prior, B, D, generator=generator, dtype=dtype, device=z.device)
        else:
            check_matrix("prior_samples", prior_samples, "(S, D)")
            if prior_samples.shape[1] != D:
                raise ValueError(f"prior_samples must have D = {D} columns like z, got shape "
                                 f"{tuple(prior_samples.shape)}")
            if prior_samples.device != z.device:
                raise ValueError(f"prior_samples must be on the device of z ({z.device}), "
                                 f"got {prior_samples.device}")
            prior_samples = prior_samples.to(dtype)
        if divergence == "inclusive_kl":
            log_q, _ = log_aggregate_posterior(prior_samples, muc, logvarc)
            div = (prior_log_prob(prior, prior_samples) - log_q).mean()
        else:
            div = mmd_imq(zc, prior_samples, c=mmd_c)

    recon = -log_px.mean()
    kl_mean = kl_per_sample.mean()
    loss = recon + beta * kl_mean + alpha * div
    terms = {"loss": _float(loss), "recon": _float(recon), "kl": _float(kl_mean), "divergence": _float(div),
             "elbo": _float(-recon - kl_mean), "beta": _float(beta), "alpha": _float(alpha),
             "kl_analytic": 1.0 if analytic else 0.0}
    return Objective(loss, terms)

