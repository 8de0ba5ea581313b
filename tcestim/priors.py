"""Priors p(z) for VAEs, usable directly as ``prior=`` in :func:`tcestim.decompose` and in
:mod:`tcestim.losses`.

Each prior is an :class:`torch.nn.Module` over a D-dimensional latent space with

- ``log_prob(z)``: (B, D) -> (B,) joint log density log p(z), in nats;
- ``sample(n, generator=None)``: (n, D) samples (reparameterised: differentiable with respect to the
  prior's scale and location parameters; discrete choices such as mixture components are not);
- ``log_prob_per_dim(z)``: (B, D) -> (B, D) log p(z_d), only for **factorised** priors
  (p(z) = prod_d p(z_d)); it sums to ``log_prob(z)``.

Calling a prior (``prior(z)``, i.e. ``forward``) returns ``log_prob_per_dim(z)``: that is the
callable ``z -> (B, D)`` that :func:`tcestim.decompose` accepts, so
``tcestim.decompose(z, mu, logvar, dataset_size=N, prior=FactorisedStudentT(D, 3.0))`` works.
The dimension-wise KL sum_d KL(q(z_d) || p(z_d)) of the decomposition needs a factorised prior:
non-factorised priors (:class:`MixtureOfGaussians`) raise :class:`NonFactorisedPriorError` (a
``TypeError`` and a ``NotImplementedError``) from ``log_prob_per_dim`` and ``forward``.

The priors of Mathieu et al. (2019, "Disentangling Disentanglement in VAEs", sections 6 and B):
:class:`AnisotropicGaussian` (learnable scales), :class:`FactorisedStudentT`, :class:`MixtureOfGaussians`
(eq. 9) and the sparse :class:`SpikeAndSlab` prior.

Parameters are stored in float32 (``.double()`` / ``.to(device)`` move them like any module); log
densities are computed in the dtype of ``z`` (float16/bfloat16 in float32), and gradients flow into
learnable parameters.
"""
from __future__ import annotations

import math
import numbers
from typing import Optional

import torch
from torch import nn

from tcestim._validation import check_int, compute_dtype
from tcestim.gaussian import standard_normal_log_prob

__all__ = [
    "AnisotropicGaussian",
    "FactorisedStudentT",
    "MixtureOfGaussians",
    "NonFactorisedPriorError",
    "Prior",
    "SpikeAndSlab",
    "StandardNormal",
    "is_factorised",
    "prior_log_prob",
    "sample_prior",
]

LOG_2PI = math.log(2 * math.pi)


class NonFactorisedPriorError(TypeError, NotImplementedError):
    """Raised when a per-dimension log density is asked of a prior that does not factorise.

    Example:
        >>> import torch
        >>> from tcestim import priors
        >>> try:
        ...     priors.MixtureOfGaussians(torch.zeros(2, 3)).log_prob_per_dim(torch.zeros(1, 3))
        ... except priors.NonFactorisedPriorError:
        ...     print("not factorised")
        not factorised
    """


# ----------------------------------------------------------------------------------------------
# argument checks


def _check_dim(dim) -> int:
    return check_int("dim", dim, minimum=1)


def _check_positive_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive real number, got {type(value).__name__}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value!r}")
    return value


def _as_float_tensor(name: str, value) -> torch.Tensor:
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or a floating tensor, got bool")
    if isinstance(value, torch.Tensor):
        if not (value.is_floating_point() or value.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must be a real tensor, got dtype {value.dtype}")
        return value.detach().to(torch.float32).clone()
    try:
        return torch.as_tensor(value, dtype=torch.float32)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a number, a sequence of numbers or a tensor, "
                        f"got {type(value).__name__}") from err


def _per_dim(name: str, value, dim: int, *, positive: bool) -> torch.Tensor:
    """A scalar or (dim,) value as a (dim,) float32 tensor."""
    t = _as_float_tensor(name, value)
    if t.dim() == 0:
        t = t.expand(dim).clone()
    if t.shape != (dim,):
        raise ValueError(f"{name} must be a scalar or have shape (dim,) = ({dim},), got {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    if positive and not bool((t > 0).all()):
        raise ValueError(f"{name} must be positive, got min {float(t.min())!r}")
    return t


def _check_n(n) -> int:
    return check_int("n", n, minimum=0)


# ----------------------------------------------------------------------------------------------
# base class


class Prior(nn.Module):
    """Base class: a prior over R^D. Subclasses set ``factorised`` and implement the densities.

    Example:
        >>> import math, torch
        >>> from tcestim import priors
        >>> prior = priors.StandardNormal(2)                 # every Prior has log_prob and sample
        >>> math.isclose(float(prior.log_prob(torch.zeros(1, 2))), -math.log(2 * math.pi), rel_tol=1e-6)
        True
        >>> prior.sample(5).shape
        torch.Size([5, 2])
    """

    factorised: bool = True

    _anchor: torch.Tensor

    def __init__(self, dim: int):
        super().__init__()
        self.dim = _check_dim(dim)
        # Carries the module's dtype and device (follows .to(), .double(), .cuda()); not saved.
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)

    # -- helpers ---------------------------------------------------------------------------------
    def _check_z(self, z) -> torch.Tensor:
        if not isinstance(z, torch.Tensor):
            raise TypeError(f"z must be a torch.Tensor, got {type(z).__name__}")
        if not z.is_floating_point():
            raise TypeError(f"z must have a floating dtype, got {z.dtype}")
        if z.dim() < 1 or z.shape[-1] != self.dim:
            raise ValueError(f"z must have shape (B, D) with D = {self.dim} (the prior's dim), "
                             f"got {tuple(z.shape)}")
        if z.device != self._anchor.device:
            raise ValueError(f"z must be on the prior's device ({self._anchor.device}), got {z.device}")
        return z.to(compute_dtype(z.dtype))

    def _p(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """A parameter or buffer in z's dtype (differentiable cast)."""
        return t.to(z.dtype)

    def _randn(self, shape, generator):
        return torch.randn(shape, generator=generator, dtype=self._anchor.dtype, device=self._anchor.device)

    def _rand(self, shape, generator):
        return torch.rand(shape, generator=generator, dtype=self._anchor.dtype, device=self._anchor.device)

    # -- public API --------------------------------------------------------------------------------
    def log_prob_per_dim(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D) per-dimension log densities log p(z_d), in nats (factorised priors only)."""
        raise NonFactorisedPriorError(
            f"{type(self).__name__} is not a factorised prior (p(z) != prod_d p(z_d)), so it has no "
            "per-dimension log density; the dimension-wise KL of tcestim.decompose needs a factorised "
            "prior. Use log_prob(z) for the joint density (e.g. the KL(q(z) || p(z)) divergence of "
            "tcestim.losses.decomposition_objective).")

    def log_prob(self, z: torch.Tensor) -> torch.Tensor:
        """(B,) joint log density log p(z), in nats."""
        return self.log_prob_per_dim(z).sum(-1)

    def sample(self, n: int, generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """(n, D) samples in the module's dtype and device."""
        raise NotImplementedError

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """``prior(z)`` is ``log_prob_per_dim(z)`` (B, D): the callable form tcestim.decompose takes."""
        return self.log_prob_per_dim(z)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


# ----------------------------------------------------------------------------------------------
# factorised priors


class StandardNormal(Prior):
    """p(z) = N(0, I), the usual VAE prior (the same as ``prior=None``).

    Example:
        >>> import torch
        >>> from tcestim import priors
        >>> priors.StandardNormal(3).log_prob_per_dim(torch.zeros(4, 3)).shape
        torch.Size([4, 3])
    """

    def __init__(self, dim: int):
        super().__init__(dim)

    def log_prob_per_dim(self, z):
        return standard_normal_log_prob(self._check_z(z))

    def sample(self, n, generator=None):
        return self._randn((_check_n(n), self.dim), generator)


class AnisotropicGaussian(Prior):
    """p(z) = prod_d N(z_d; 0, s_d^2) with per-dimension scales s_d (Mathieu et al. 2019, sec. 6.1).

    Args:
        dim: D.
        scales: initial standard deviations s_d > 0, a scalar or (D,); default 1.
        learnable: if True (default) ``log_scale`` is an ``nn.Parameter`` (train it with the model);
            otherwise a buffer.

    Note: Mathieu et al. normalise PCA-initialised scales (a softmax) so that beta is not implicitly
    rescaled; this class leaves the scales as given.

    Example:
        >>> import torch
        >>> from tcestim import priors
        >>> prior = priors.AnisotropicGaussian(2, scales=torch.tensor([1.0, 2.0]), learnable=False)
        >>> prior.sample(10_000, generator=torch.Generator().manual_seed(0)).std(0).round(decimals=1)
        tensor([1., 2.])
    """

    log_scale: torch.Tensor

    def __init__(self, dim: int, scales=1.0, *, learnable: bool = True):
        super().__init__(dim)
        log_scale = torch.log(_per_dim("scales", scales, self.dim, positive=True))
        if learnable:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    @property
    def scale(self) -> torch.Tensor:
        """(D,) standard deviations exp(log_scale)."""
        return self.log_scale.exp()

    def log_prob_per_dim(self, z):
        z = self._check_z(z)
        log_s = self._p(self.log_scale, z)
        return -0.5 * LOG_2PI - log_s - 0.5 * (z * torch.exp(-log_s)).square()

    def sample(self, n, generator=None):
        return self._randn((_check_n(n), self.dim), generator) * self.log_scale.exp().to(self._anchor.dtype)


def _standard_gamma(concentration: float, shape, generator, dtype, device) -> torch.Tensor:
    """Gamma(concentration, 1) samples from a torch.Generator (Marsaglia & Tsang 2000), in float64.

    torch's own gamma sampler takes no generator; this one is reproducible from ``generator``.
    """
    a = float(concentration)
    boost = a < 1.0
    a_eff = a + 1.0 if boost else a
    d = a_eff - 1.0 / 3.0
    c = 1.0 / math.sqrt(9.0 * d)
    numel = math.prod(shape)
    out = torch.empty(numel, dtype=torch.float64, device=device)
    todo = torch.arange(numel, device=device)
    while todo.numel():
        m = todo.numel()
        x = torch.randn(m, generator=generator, dtype=torch.float64, device=device)
        u = torch.rand(m, generator=generator, dtype=torch.float64, device=device)
        v = (1.0 + c * x) ** 3
        ok = (v > 0) & (torch.log(u) < 0.5 * x * x + d - d * v + d * torch.log(v.clamp_min(1e-300)))
        out[todo[ok]] = d * v[ok]
        todo = todo[~ok]
    if boost:  # Gamma(a) = Gamma(a + 1) * U^(1/a)
        u = torch.rand(numel, generator=generator, dtype=torch.float64, device=device)
        out = out * u.pow(1.0 / a)
    return out.reshape(shape).to(dtype)


class FactorisedStudentT(Prior):
    """p(z) = prod_d StudentT(z_d; nu, 0, s_d) (Mathieu et al. 2019, sec. 6.1; N(0, I) as nu -> inf).

        log p(z_d) = lgamma((nu+1)/2) - lgamma(nu/2) - 0.5 log(nu pi) - log s_d
                     - (nu+1)/2 log(1 + (z_d/s_d)^2 / nu)

    Args:
        dim: D.
        nu: degrees of freedom, > 0 (Mathieu et al. use 3 to 100; small nu = heavy tails).
        scale: s_d > 0, scalar or (D,); default 1 (a fixed buffer).

    Example:
        >>> import torch
        >>> from tcestim import priors
        >>> heavy, light = priors.FactorisedStudentT(1, nu=3.0), priors.FactorisedStudentT(1, nu=100.0)
        >>> far = torch.tensor([[6.0]])
        >>> bool(heavy.log_prob(far) > light.log_prob(far))  # heavier tails
        True
    """

    scale: torch.Tensor

    def __init__(self, dim: int, nu: float, scale=1.0):
        super().__init__(dim)
        self.nu = _check_positive_float("nu", nu)
        self.register_buffer("scale", _per_dim("scale", scale, self.dim, positive=True))

    def log_prob_per_dim(self, z):
        z = self._check_z(z)
        nu, s = self.nu, self._p(self.scale, z)
        const = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
        return const - torch.log(s) - 0.5 * (nu + 1) * torch.log1p((z / s).square() / nu)

    def sample(self, n, generator=None):
        n = _check_n(n)
        g = _standard_gamma(self.nu / 2, (n, self.dim), generator, torch.float64, self._anchor.device)
        eps = torch.randn((n, self.dim), generator=generator, dtype=torch.float64, device=self._anchor.device)
        t = (eps * torch.sqrt(self.nu / (2.0 * g))).to(self._anchor.dtype)  # N / sqrt(chi2_nu / nu)
        return t * self.scale.to(self._anchor.dtype)

    def extra_repr(self):
        return f"dim={self.dim}, nu={self.nu}"


class SpikeAndSlab(Prior):
    """The sparse prior of Mathieu et al. (2019, sec. 6.3 and B), a factorised two-component mixture:

        p(z) = prod_d [ (1 - gamma) N(z_d; 0, slab_scale^2) + gamma N(z_d; 0, spike_scale^2) ]

    gamma is the probability that a dimension is "off" (drawn from the narrow spike at 0).

    Args:
        dim: D.
        gamma: spike weight, 0 < gamma < 1 (the paper's sparse runs use 0.9 at most).
        spike_scale: standard deviation of the spike, > 0; default 0.05 (appendix B: sigma_0 = 5e-2;
            section 6 writes sigma_0^2 = 0.05 instead, i.e. spike_scale ~ 0.224).
        slab_scale: standard deviation of the slab, > 0; default 1.

    Example:
        >>> import torch
        >>> from tcestim import priors
        >>> prior = priors.SpikeAndSlab(4, gamma=0.5)
        >>> prior.log_prob_per_dim(torch.zeros(2, 4)).shape
        torch.Size([2, 4])
    """

    gamma: float
    spike_scale: float
    slab_scale: float

    def __init__(self, dim: int, gamma: float, spike_scale: float = 0.05, slab_scale: float = 1.0):
        super().__init__(dim)
        if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
            raise TypeError(f"gamma must be a real number in (0, 1), got {type(gamma).__name__}")
        if not 0.0 < float(gamma) < 1.0:
            raise ValueError(f"gamma (the spike weight) must satisfy 0 < gamma < 1, got {gamma!r}")
        self.gamma = float(gamma)
        self.spike_scale = _check_positive_float("spike_scale", spike_scale)
        self.slab_scale = _check_positive_float("slab_scale", slab_scale)

    def log_prob_per_dim(self, z):
        z = self._check_z(z)
        z2 = z.square()
        slab = math.log1p(-self.gamma) - 0.5 * LOG_2PI - math.log(self.slab_scale) \
            - 0.5 * z2 / self.slab_scale ** 2
        spike = math.log(self.gamma) - 0.5 * LOG_2PI - math.log(self.spike_scale) \
            - 0.5 * z2 / self.spike_scale ** 2
        return torch.logaddexp(slab, spike)

    def sample(self, n, generator=None):
        n = _check_n(n)
        off = self._rand((n, self.dim), generator) < self.gamma
        eps = self._randn((n, self.dim), generator)
        return eps * torch.where(off, self.spike_scale, self.slab_scale).to(eps.dtype)

    def extra_repr(self):
        return (f"dim={self.dim}, gamma={self.gamma}, spike_scale={self.spike_scale}, "
                f"slab_scale={self.slab_scale}")


# ----------------------------------------------------------------------------------------------
# non-factorised prior


class MixtureOfGaussians(Prior):
    """p(z) = sum_c pi_c prod_d N(z_d; m_cd, s_cd^2) (Mathieu et al. 2019, eq. 9). Not factorised.

    Args:
        means: (C, D) component means; D is the prior's dim.
        log_scales: log standard deviations, broadcastable to (C, D) (a scalar, (C, 1), (D,) or
            (C, D)); default 0 (unit scales). Mathieu et al.'s clustering prior has D = 2, C = 4,
            means in {0, 1}^2 and variance 0.03 (log_scales = 0.5 log 0.03).
        weights: (C,) non-negative mixture weights (normalised here); default uniform.
        learnable: if True, ``means`` and ``log_scales`` are ``nn.Parameter``s; default False.

    ``log_prob_per_dim`` and ``forward`` raise :class:`NonFactorisedPriorError`.

    Example:
        >>> import torch
        >>> from tcestim import priors
        >>> prior = priors.MixtureOfGaussians(torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
        >>> prior.log_prob(torch.zeros(3, 2)).shape
        torch.Size([3])
    """

    factorised = False

    means: torch.Tensor
    log_scales: torch.Tensor
    weights: torch.Tensor

    def __init__(self, means, log_scales=0.0, weights=None, *, learnable: bool = False):
        means = _as_float_tensor("means", means)
        if means.dim() != 2 or means.shape[0] < 1 or means.shape[1] < 1:
            raise ValueError(f"means must have shape (C, D) with C, D >= 1, got {tuple(means.shape)}")
        if not bool(torch.isfinite(means).all()):
            raise ValueError("means must be finite")
        C, D = means.shape
        super().__init__(D)
        log_scales = _as_float_tensor("log_scales", log_scales)
        try:
            log_scales = log_scales.expand(C, D).clone()
        except RuntimeError as err:
            raise ValueError(f"log_scales must be broadcastable to (C, D) = ({C}, {D}), "
                             f"got {tuple(log_scales.shape)}") from err
        if not bool(torch.isfinite(log_scales).all()):
            raise ValueError("log_scales must be finite (scales must be positive and finite)")
        if weights is None:
            weights = torch.full((C,), 1.0 / C)
        weights = _as_float_tensor("weights", weights)
        if weights.shape != (C,):
            raise ValueError(f"weights must have shape (C,) = ({C},), got {tuple(weights.shape)}")
        if not bool(torch.isfinite(weights).all()) or bool((weights < 0).any()) or float(weights.sum()) <= 0:
            raise ValueError("weights must be finite, non-negative and not all zero")
        weights = weights / weights.sum()
        if learnable:
            self.means = nn.Parameter(means)
            self.log_scales = nn.Parameter(log_scales)
        else:
            self.register_buffer("means", means)
            self.register_buffer("log_scales", log_scales)
        self.register_buffer("weights", weights)

    @property
    def num_components(self) -> int:
        return self.means.shape[0]

    def log_prob(self, z):
        z = self._check_z(z)
        m, ls = self._p(self.means, z), self._p(self.log_scales, z)
        log_w = torch.log(self._p(self.weights, z))
        diff = (z.unsqueeze(-2) - m) * torch.exp(-ls)                  # (..., C, D)
        comp = (-0.5 * LOG_2PI - ls - 0.5 * diff.square()).sum(-1)     # (..., C)
        return torch.logsumexp(comp + log_w, dim=-1)

    def sample(self, n, generator=None):
        n = _check_n(n)
        idx = (torch.multinomial(self.weights, n, replacement=True, generator=generator) if n
               else torch.zeros(0, dtype=torch.long, device=self.weights.device))
        eps = self._randn((n, self.dim), generator)
        return self.means[idx].to(eps.dtype) + eps * self.log_scales[idx].exp().to(eps.dtype)

    def extra_repr(self):
        return f"dim={self.dim}, components={self.num_components}"


# ----------------------------------------------------------------------------------------------
# helpers for any prior accepted by tcestim.decompose


def is_factorised(prior) -> bool:
    """Whether ``prior`` (None, a :class:`Prior`, a Distribution or a callable) is usable per dimension.

    Example:
        >>> import torch
        >>> from tcestim import priors
        >>> mixture = priors.MixtureOfGaussians(torch.zeros(2, 2))
        >>> priors.is_factorised(priors.StandardNormal(2)), priors.is_factorised(mixture)
        (True, False)
    """
    if prior is None:
        return True
    if isinstance(prior, Prior):
        return prior.factorised
    return True  # Distributions with elementwise log_prob and (B, D) callables are taken as factorised


def prior_log_prob(prior, z: torch.Tensor, *, per_dim: bool = False) -> torch.Tensor:
    """log p(z) in nats for any ``prior=`` the library accepts: the one resolver of ``prior``.

    Args:
        prior: None (N(0, I)), a :class:`Prior`, a ``torch.distributions.Distribution`` whose
            ``log_prob`` gives (B, D) or (B,), or a callable ``z -> (B, D)`` or ``(B,)``.
        z: (B, D) points.
        per_dim: return the (B, D) per-dimension log densities (a factorised prior only: a
            non-factorised :class:`Prior` raises :class:`NonFactorisedPriorError`, any other prior
            must give (B, D)); otherwise the (B,) joint log density.

    Example:
        >>> import torch
        >>> prior_log_prob(None, torch.zeros(2, 3)).shape
        torch.Size([2])
    """
    if prior is None:
        log_p = standard_normal_log_prob(z)
    elif isinstance(prior, Prior):
        log_p = prior.log_prob_per_dim(z) if per_dim else prior.log_prob(z)
    elif isinstance(prior, torch.distributions.Distribution):
        log_p = prior.log_prob(z)
    elif callable(prior):
        log_p = prior(z)
    else:
        raise TypeError("prior must be None, a tcestim.priors.Prior, a torch.distributions.Distribution "
                        f"or a callable, got {type(prior).__name__}")
    if not isinstance(log_p, torch.Tensor):
        raise TypeError(f"prior gave {type(log_p).__name__}, expected a tensor of log densities")
    if per_dim:
        if log_p.shape != z.shape:
            raise ValueError(f"prior must give per-dimension log densities of shape (B, D) = "
                             f"{tuple(z.shape)} (a factorised prior), got {tuple(log_p.shape)}")
        return log_p.to(z.dtype)
    if log_p.shape == z.shape:
        return log_p.sum(-1)
    if log_p.shape == z.shape[:-1]:
        return log_p
    raise ValueError(f"prior must give log densities of shape (B, D) = {tuple(z.shape)} or (B,) = "
                     f"{tuple(z.shape[:-1])}, got {tuple(log_p.shape)}")


def sample_prior(prior, n: int, dim: int, *, generator: Optional[torch.Generator] = None,
                 dtype: torch.dtype = torch.float32, device=None) -> torch.Tensor:
    """(n, dim) samples from ``prior``: None (N(0, I)), a :class:`Prior` or a Distribution.

    :class:`Prior` samples are reparameterised (differentiable in the prior's scales); a Distribution
    is sampled with ``rsample`` where it has one, and ignores ``generator``. Returned in ``dtype``
    on ``device``. Plain callables cannot be sampled: pass samples explicitly instead.

    Example:
        >>> from tcestim import priors
        >>> priors.sample_prior(None, 4, 3).shape
        torch.Size([4, 3])
    """
    n = _check_n(n)
    if prior is None:
        return torch.randn((n, dim), generator=generator, dtype=dtype, device=device)
    if isinstance(prior, Prior):
        if prior.dim != dim:
            raise ValueError(f"prior has dim {prior.dim}, but z has D = {dim}")
        s = prior.sample(n, generator=generator)
    elif isinstance(prior, torch.distributions.Distribution):
        s = prior.rsample((n,)) if prior.has_rsample else prior.sample((n,))
    else:
        raise TypeError(f"cannot sample from a prior of type {type(prior).__name__}: pass prior "
                        "samples explicitly (prior_samples=)")
    if s.shape != (n, dim):
        raise ValueError(f"prior samples must have shape (n, D) = ({n}, {dim}), got {tuple(s.shape)}; "
                         "pass prior_samples= explicitly")
    return s.to(dtype=dtype, device=device if device is not None else s.device)
