"""VAE objectives built on the KL decomposition: β-VAE, β-TCVAE, RTC-VAE and the decomposition
objective of Mathieu et al. (2019).

Every function is model-agnostic: the caller runs the encoder and decoder and passes

- ``log_px``: (B,) decoder log-likelihood log p(x_i | z_i) per sample, in nats (summed over the
  pixels / features of x_i, *not* averaged);
- ``z``: (B, D) reparameterised samples z_i ~ q(z | x_i) (the ones ``log_px`` was computed at);
- ``mu``, ``logvar``: (B, D) encoder means and log-variances of q(z | x_i) = N(mu_i, diag exp(logvar_i)).

Each returns :class:`Objective` ``(loss, terms, weights)``: ``loss`` is a scalar tensor to
*minimise* (a batch mean, nats per data point); ``terms`` a dict of detached 0-d tensors on the loss's
device (batch means, nats): ``loss``, ``recon`` = -mean log p(x|z), ``kl`` = mean KL(q(z|x) || p(z)),
``elbo`` = mean log p(x|z) - kl, and the terms of the decomposition where they are computed;
``weights`` the coefficients as Python floats. Terms stay on the device, so a training step never
waits for the GPU; :meth:`Objective.floats` turns them into floats with one transfer when you log.
The ELBO's KL is exactly ``mi + tc + dimkl`` (Chen et al. 2018, eq. 1) whenever those are reported.

**One vocabulary for the weights**: each is named for the term it multiplies, the same in every
objective: ``kl_weight`` (the whole KL(q(z|x) || p(z))), ``mi_weight``, ``tc_weight``, ``dimkl_weight``
(the three parts of the KL), ``divergence_weight`` (a divergence between q(z) and p(z)) and
``variance_weight`` (RTC-VAE's penalty). The papers' Greek letters map onto them as follows:

=====================  =====================================================================
objective              paper symbols -> tcestim weights
=====================  =====================================================================
β-VAE (Higgins)        β -> ``kl_weight``
β-TCVAE (Chen)         α, β, γ -> ``mi_weight``, ``tc_weight``, ``dimkl_weight``
RTC-VAE                β -> ``tc_weight = 1 + β`` (the paper's β is *added* to the ELBO's own
                       TC weight of 1); η -> ``variance_weight``
Mathieu et al. eq. 7   β -> ``kl_weight``, α -> ``divergence_weight``
=====================  =====================================================================

The 0.1 keywords ``alpha``, ``beta``, ``gamma`` and ``eta`` are still accepted, with a
DeprecationWarning, for one release.

``dataset_size`` (N): every objective that estimates q(z) from the minibatch takes it as a
*required* keyword (no default), because a training batch is never the whole dataset and the
stratified weights depend on N; ``None`` is accepted and means N = B, as everywhere in tcestim.

Example:
    >>> import torch
    >>> from tcestim import losses
    >>> mu, logvar = torch.randn(32, 4), torch.zeros(32, 4)
    >>> z = mu + torch.randn_like(mu)
    >>> log_px = -torch.rand(32) * 100            # the decoder's log p(x_i | z_i), nats per image
    >>> objective = losses.beta_tcvae(log_px, z, mu, logvar, dataset_size=60_000, tc_weight=6.0)
    >>> objective.loss.backward() if objective.loss.requires_grad else None
    >>> sorted(objective.terms)
    ['dimkl', 'elbo', 'kl', 'loss', 'mi', 'recon', 'tc']
    >>> objective.weights
    {'mi_weight': 1.0, 'tc_weight': 6.0, 'dimkl_weight': 1.0}
"""
from __future__ import annotations

import math
import numbers
import warnings
from typing import Dict, NamedTuple, Optional

import torch

from tcestim._validation import check_matrix, check_posterior, check_same_dtype_device, check_tensor, compute_dtype
from tcestim.estimators import decompose
from tcestim.gaussian import log_normal_diag
from tcestim.mixture import log_aggregate_posterior
from tcestim.priors import (
    AnisotropicGaussian,
    NonFactorisedPriorError,
    StandardNormal,
    is_factorised,
    prior_log_prob,
    sample_prior,
)

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
    """What every objective returns.

    Attributes:
        loss: scalar tensor to minimise (nats per data point), differentiable.
        terms: name -> detached 0-d tensor on the loss's device (batch means, nats): ``loss``,
            ``recon``, ``kl``, ``elbo`` and the objective's own terms.
        weights: name -> float, the coefficients the loss was built with (``tc_weight``, ...).

    Example:
        >>> import torch
        >>> from tcestim import losses
        >>> mu, logvar = torch.zeros(8, 2), torch.zeros(8, 2)      # q(z|x) = p(z): no KL
        >>> objective = losses.beta_vae(torch.full((8,), -10.0), mu, logvar)
        >>> terms = objective.floats()
        >>> terms["recon"], terms["kl"], float(objective.loss)
        (10.0, 0.0, 10.0)
    """

    loss: torch.Tensor
    terms: Dict[str, torch.Tensor]
    weights: Dict[str, float]

    def floats(self) -> Dict[str, float]:
        """``terms`` as Python floats, moved to the host in one transfer (call it when you log)."""
        names = list(self.terms)
        values = torch.stack([self.terms[n].to(torch.float64) for n in names]).tolist()
        return dict(zip(names, values))


def _terms(**values: torch.Tensor) -> Dict[str, torch.Tensor]:
    return {name: value.detach() for name, value in values.items()}


def _deprecated_weights(function: str, given: dict, renames: dict, chosen: dict, defaults: dict) -> dict:
    """Map the 0.1 keywords (``alpha``, ``beta``, ...) onto the weights' names, with a warning.

    ``renames``: old name -> (new name, conversion); ``chosen``: the new-name values as passed;
    ``defaults``: their defaults (a new name given away from its default and its old alias together
    is an error). Unknown keywords raise TypeError as Python would.
    """
    chosen = dict(chosen)
    for old, value in given.items():
        if old not in renames:
            raise TypeError(f"{function}() got an unexpected keyword argument {old!r}")
        new, convert = renames[old]
        if chosen[new] is not defaults[new]:
            raise TypeError(f"{function}() got both {new}= and its deprecated alias {old}=")
        warnings.warn(f"{function}({old}=...) is deprecated since tcestim 0.2: use {new}= (see "
                      "tcestim.losses for the mapping of the papers' symbols)", DeprecationWarning, stacklevel=3)
        chosen[new] = convert(_check_coef(old, value))
    return chosen


class _Default(float):
    """A weight's default value (1.0 unless noted), told apart from the same number passed explicitly."""


_DEFAULT = _Default(1.0)
_DEFAULT_TC = _Default(6.0)
_DEFAULT_ZERO = _Default(0.0)


def _same(value):
    return value


def _plus_one(value):
    return 1.0 + value


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


def _weight(value) -> float:
    return float(value.detach()) if isinstance(value, torch.Tensor) else float(value)


def gaussian_kl(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """(B,) closed-form KL(N(mu, diag exp(logvar)) || N(0, I)) = 0.5 sum_d (mu^2 + exp(logvar) - 1 - logvar).

    Example:
        >>> import torch
        >>> from tcestim import losses
        >>> losses.gaussian_kl(torch.tensor([[0.0, 1.0]]), torch.zeros(1, 2))     # 0.5 * mu^2
        tensor([0.5000])
    """
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

    Example:
        >>> import math, torch
        >>> from tcestim import losses
        >>> float(losses.rtc_variance_penalty(torch.full((4, 3), math.log(0.5))))   # 3 dims x 0.5
        1.5
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

    Example:
        >>> import torch
        >>> from tcestim import losses
        >>> g = torch.Generator().manual_seed(0)
        >>> x, y = torch.randn(200, 2, generator=g), torch.randn(200, 2, generator=g)
        >>> bool(losses.mmd_imq(x, y + 3.0) > 10 * losses.mmd_imq(x, y).abs())
        True
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


def beta_vae(log_px: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, kl_weight: float = _DEFAULT,
             **deprecated) -> Objective:
    """β-VAE (Higgins et al. 2017): loss = -mean log p(x|z) + kl_weight * mean KL(q(z|x) || N(0, I)).

    The KL is the closed form 0.5 sum_d (mu^2 + exp(logvar) - 1 - logvar).

    Args:
        log_px: (B,) log p(x_i | z_i), nats.
        mu, logvar: (B, D) encoder parameters.
        kl_weight: the paper's β (1 gives the negative ELBO). ``beta=`` is its deprecated alias.

    Returns:
        :class:`Objective`; terms ``loss, recon, kl, elbo``; weights ``kl_weight``.

    Example:
        >>> import torch
        >>> out = beta_vae(-torch.rand(8) * 50, torch.randn(8, 3), torch.zeros(8, 3), kl_weight=4.0)
        >>> out.weights
        {'kl_weight': 4.0}
    """
    kl_weight = _deprecated_weights("beta_vae", deprecated, {"beta": ("kl_weight", _same)},
                                    {"kl_weight": kl_weight}, {"kl_weight": _DEFAULT})["kl_weight"]
    mu, logvar = _check_mu_logvar(mu, logvar)
    log_px = _check_log_px(log_px, mu.shape[0])
    kl_weight = _check_coef("kl_weight", kl_weight)
    recon = -log_px.mean()
    kl = gaussian_kl(mu, logvar).mean()
    loss = recon + kl_weight * kl
    return Objective(loss, _terms(loss=loss, recon=recon, kl=kl, elbo=-recon - kl), {"kl_weight": _weight(kl_weight)})


def beta_tcvae(log_px: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *,
               dataset_size: Optional[int], mi_weight: float = _DEFAULT, tc_weight: float = _DEFAULT_TC,
               dimkl_weight: float = _DEFAULT, estimator: str = "stratified", prior=None, bank=None,
               jackknife: bool = False, **deprecated) -> Objective:
    """β-TCVAE (Chen et al. 2018, eq. 4; eq. 2 is mi_weight = dimkl_weight = 1):

        loss = -mean log p(x|z) + mi_weight * MI + tc_weight * TC + dimkl_weight * dimKL

    with MI, TC, dimKL the batch means of :func:`tcestim.decompose` (per-sample estimates, nats). With
    all three weights 1 it is the negative ELBO, -mean(log_px - (log q(z|x) - log p(z))), the KL
    estimated by Monte Carlo at z.

    Args:
        log_px: (B,) log p(x_i | z_i).
        z, mu, logvar: (B, D) samples and encoder parameters.
        dataset_size: N >= B (required keyword; None means N = B).
        mi_weight, tc_weight, dimkl_weight: the paper's α, β (default 6), γ. ``alpha=``, ``beta=``,
            ``gamma=`` are their deprecated aliases.
        estimator, bank, jackknife: passed to :func:`tcestim.decompose`.
        prior: a factorised prior (None = N(0, I), a :mod:`tcestim.priors` factorised prior, a
            Distribution with elementwise log_prob, or a callable z -> (B, D)).

    Returns:
        :class:`Objective`; terms ``loss, recon, mi, tc, dimkl, kl, elbo``; weights ``mi_weight,
        tc_weight, dimkl_weight``.

    Example:
        >>> import torch
        >>> mu, logvar = torch.randn(16, 3), torch.zeros(16, 3)
        >>> out = beta_tcvae(-torch.rand(16), mu + torch.randn_like(mu), mu, logvar, dataset_size=1000)
        >>> values = out.floats()                     # one device-to-host transfer
        >>> abs(values["kl"] - (values["mi"] + values["tc"] + values["dimkl"])) < 1e-5
        True
    """
    weights = _deprecated_weights(
        "beta_tcvae", deprecated,
        {"alpha": ("mi_weight", _same), "beta": ("tc_weight", _same), "gamma": ("dimkl_weight", _same)},
        {"mi_weight": mi_weight, "tc_weight": tc_weight, "dimkl_weight": dimkl_weight},
        {"mi_weight": _DEFAULT, "tc_weight": _DEFAULT_TC, "dimkl_weight": _DEFAULT})
    return _beta_tcvae(log_px, z, mu, logvar, dataset_size=dataset_size, estimator=estimator, prior=prior,
                       bank=bank, jackknife=jackknife, **weights)


def _beta_tcvae(log_px, z, mu, logvar, *, dataset_size, mi_weight, tc_weight, dimkl_weight, estimator, prior,
                bank, jackknife) -> Objective:
    check_posterior(z, mu, logvar)
    log_px = _check_log_px(log_px, z.shape[0])
    mi_weight, tc_weight, dimkl_weight = (_check_coef(n, v) for n, v in (
        ("mi_weight", mi_weight), ("tc_weight", tc_weight), ("dimkl_weight", dimkl_weight)))
    if not is_factorised(prior):
        raise NonFactorisedPriorError(
            f"beta_tcvae needs a factorised prior for the dimension-wise KL, got {type(prior).__name__}; "
            "for a non-factorised prior use decomposition_objective(..., divergence='kl')")
    d = decompose(z, mu, logvar, dataset_size=dataset_size, estimator=estimator, prior=prior, bank=bank,
                  jackknife=jackknife)
    recon = -log_px.mean()
    mi, tc, dimkl = d.mi.mean(), d.tc.mean(), d.dimkl.mean()
    loss = recon + mi_weight * mi + tc_weight * tc + dimkl_weight * dimkl
    kl = (d.log_qzx - d.log_pz).mean()
    return Objective(loss, _terms(loss=loss, recon=recon, mi=mi, tc=tc, dimkl=dimkl, kl=kl, elbo=-recon - kl),
                     {"mi_weight": _weight(mi_weight), "tc_weight": _weight(tc_weight),
                      "dimkl_weight": _weight(dimkl_weight)})


def rtc_vae(log_px: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *,
            dataset_size: Optional[int], tc_weight: Optional[float] = None,
            variance_weight: Optional[float] = None, estimator: str = "stratified", prior=None, bank=None,
            jackknife: bool = False, **deprecated) -> Objective:
    """RTC-VAE (RTC-VAE paper, eq. 3-4): L_RTC = ELBO - β TC - η tr(E_n Cov_q(z|n)[z]); the loss is

        loss = -mean log p(x|z) + MI + tc_weight * TC + dimKL + variance_weight * sum_d mean_n exp(logvar_nd)

    The paper's β is added to the ELBO's own TC weight of 1 (eq. 3, L_β-TC = ELBO - β TC), so
    ``tc_weight = 1 + β``; η is ``variance_weight`` (the paper uses 10). This equals
    ``beta_tcvae(..., tc_weight=tc_weight)`` plus the penalty. The deprecated ``beta=`` keeps the
    paper's convention (``tc_weight = 1 + beta``) and ``eta=`` is ``variance_weight``.

    Args:
        log_px: (B,) log p(x_i | z_i).
        z, mu, logvar: (B, D).
        dataset_size: N >= B (required keyword; None means N = B).
        tc_weight: the total weight of TC (required). variance_weight: weight of the penalty (required).
        estimator, prior, bank, jackknife: as in :func:`beta_tcvae`.

    Returns:
        :class:`Objective`; the terms of :func:`beta_tcvae` plus ``var_penalty``; weights ``mi_weight,
        tc_weight, dimkl_weight, variance_weight``.

    Example:
        >>> import torch
        >>> mu, logvar = torch.randn(16, 3), torch.zeros(16, 3)
        >>> out = rtc_vae(-torch.rand(16), mu + torch.randn_like(mu), mu, logvar, dataset_size=1000,
        ...               tc_weight=6.0, variance_weight=10.0)
        >>> round(out.floats()["var_penalty"], 3)
        3.0
    """
    weights = _deprecated_weights(
        "rtc_vae", deprecated, {"beta": ("tc_weight", _plus_one), "eta": ("variance_weight", _same)},
        {"tc_weight": tc_weight, "variance_weight": variance_weight}, {"tc_weight": None, "variance_weight": None})
    for name, value in weights.items():
        if value is None:
            raise TypeError(f"rtc_vae() missing required keyword argument {name!r}")
    variance_weight = _check_coef("variance_weight", weights["variance_weight"])
    base = _beta_tcvae(log_px, z, mu, logvar, dataset_size=dataset_size, mi_weight=1.0,
                       tc_weight=weights["tc_weight"], dimkl_weight=1.0, estimator=estimator, prior=prior,
                       bank=bank, jackknife=jackknife)
    penalty = rtc_variance_penalty(logvar)
    loss = base.loss + variance_weight * penalty
    terms = dict(base.terms)
    terms.update(_terms(loss=loss, var_penalty=penalty))
    return Objective(loss, terms, {**base.weights, "variance_weight": _weight(variance_weight)})


def decomposition_objective(log_px: torch.Tensor, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor, *,
                            dataset_size: Optional[int], kl_weight: float = _DEFAULT,
                            divergence_weight: float = _DEFAULT_ZERO, divergence: str = "kl", prior=None,
                            prior_samples: Optional[torch.Tensor] = None,
                            estimator: str = "stratified", bank=None, kl: str = "auto",
                            mmd_c: Optional[float] = None,
                            generator: Optional[torch.Generator] = None, **deprecated) -> Objective:
    """Mathieu et al. (2019) eq. 7, as a loss to minimise:

        L_{α,β} = E log p(x|z) - β KL(q(z|x) || p(z)) - α D(q(z), p(z));   loss = -L_{α,β}

    with β = ``kl_weight`` and α = ``divergence_weight`` (``beta=`` and ``alpha=`` are their
    deprecated aliases).

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
        kl_weight, divergence_weight: weights of the KL and the divergence (divergence_weight = 0, the
            default, gives a β-VAE with this prior).
        prior: None (N(0, I)), any :mod:`tcestim.priors` prior (factorised or not), a Distribution, or a
            callable giving (B, D) or (B,) log densities (a callable cannot be sampled).

    Returns:
        :class:`Objective`; terms ``loss, recon, kl, divergence, elbo, kl_analytic`` (1 when the KL
        was the closed form); weights ``kl_weight, divergence_weight``.

    Example:
        >>> import torch
        >>> mu, logvar = torch.randn(16, 3), torch.zeros(16, 3)
        >>> out = decomposition_objective(-torch.rand(16), mu + torch.randn_like(mu), mu, logvar,
        ...                               dataset_size=1000, divergence_weight=2.0, divergence="mmd")
        >>> out.weights
        {'kl_weight': 1.0, 'divergence_weight': 2.0}
    """
    weights = _deprecated_weights(
        "decomposition_objective", deprecated,
        {"beta": ("kl_weight", _same), "alpha": ("divergence_weight", _same)},
        {"kl_weight": kl_weight, "divergence_weight": divergence_weight},
        {"kl_weight": _DEFAULT, "divergence_weight": _DEFAULT_ZERO})
    check_posterior(z, mu, logvar)
    log_px = _check_log_px(log_px, z.shape[0])
    kl_weight = _check_coef("kl_weight", weights["kl_weight"])
    divergence_weight = _check_coef("divergence_weight", weights["divergence_weight"])
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
    assert kl_per_sample is not None
    kl_mean = kl_per_sample.mean()
    loss = recon + kl_weight * kl_mean + divergence_weight * div
    terms = _terms(loss=loss, recon=recon, kl=kl_mean, divergence=div, elbo=-recon - kl_mean,
                   kl_analytic=torch.full_like(loss, 1.0 if analytic else 0.0))
    return Objective(loss, terms, {"kl_weight": _weight(kl_weight), "divergence_weight": _weight(divergence_weight)})

