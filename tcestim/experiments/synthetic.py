"""Synthetic aggregate posteriors with known ground truth (docs/design.md, section 4).

mu_n ~ N(0, Sigma) with Sigma equicorrelated (unit variances, correlation rho), and a Gaussian
encoder z | n ~ N(mu_n, s^2 I). As N -> infinity, q(z) = N(0, Sigma + s^2 I), whose TC is closed
form; for finite N, q(z) is a uniform mixture of N Gaussians whose TC is computed by Monte Carlo.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from tcestim.gaussian import gaussian_total_correlation
from tcestim.mixture import log_aggregate_posterior


class SyntheticPosterior(NamedTuple):
    mu: torch.Tensor      # (N, D) encoder means
    logvar: torch.Tensor  # (N, D) encoder log-variances (all log(s^2) when noise_std is a number)
    rho: float
    noise_std: float | None  # None: the log-variances differ between points or dimensions

    @property
    def dim(self) -> int:
        return self.mu.shape[1]

    def sample(self, index: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """z ~ q(z | n) for each n in ``index``: (len(index), D)."""
        mu = self.mu[index]
        noise = torch.randn(mu.shape, generator=generator, dtype=mu.dtype)
        if self.noise_std is None:
            return mu + torch.exp(0.5 * self.logvar[index]) * noise
        return mu + self.noise_std * noise


def equicorrelated_cov(dim: int, rho: float, dtype=torch.float64) -> torch.Tensor:
    """(D, D) covariance with unit variances and correlation rho everywhere off the diagonal."""
    return (1 - rho) * torch.eye(dim, dtype=dtype) + rho * torch.ones(dim, dim, dtype=dtype)


def make_posterior(num_points: int, dim: int, *, rho: float = 0.5, noise_std: float = 0.5,
                   generator: torch.Generator | None = None,
                   dtype: torch.dtype = torch.float32) -> SyntheticPosterior:
    """N encodings with mu_n ~ N(0, equicorrelated(rho)) and variance noise_std^2 in every dimension."""
    if not -1.0 / max(dim - 1, 1) < rho < 1.0:
        raise ValueError(f"rho must lie in (-1/(D-1), 1) for a valid covariance, got {rho}")
    chol = torch.linalg.cholesky(equicorrelated_cov(dim, rho))
    mu = torch.randn(num_points, dim, generator=generator, dtype=torch.float64) @ chol.T
    logvar = torch.full((num_points, dim), 2 * math.log(noise_std), dtype=torch.float64)
    return SyntheticPosterior(mu.to(dtype), logvar.to(dtype), rho, noise_std)


def gaussian_limit_tc(posterior: SyntheticPosterior) -> float:
    """TC of N(0, Sigma + s^2 I): the N -> infinity ground truth, in nats."""
    noise = posterior.noise_std ** 2 * torch.eye(posterior.dim, dtype=torch.float64)
    cov = equicorrelated_cov(posterior.dim, posterior.rho) + noise
    return float(gaussian_total_correlation(cov))


def finite_mixture_tc(posterior: SyntheticPosterior, num_samples: int,
                      generator: torch.Generator | None = None) -> tuple[float, float]:
    """Monte Carlo TC of the finite aggregate posterior: (estimate, standard error) in nats.

    Draws z ~ q(z) (a uniform component, then its Gaussian) and evaluates log q(z) and log q(z_d)
    exactly against all N components with the fused kernel.
    """
    N = posterior.mu.shape[0]
    index = torch.randint(N, (num_samples,), generator=generator)
    z = posterior.sample(index, generator)
    log_qz, log_qzd = log_aggregate_posterior(z, posterior.mu, posterior.logvar)
    tc = (log_qz - log_qzd.sum(1)).double()
    return float(tc.mean()), float(tc.std() / math.sqrt(num_samples))


POSTERIOR_FAMILIES = ("equicorrelated", "grid", "heteroscedastic", "collapsed")
"""Shapes of aggregate posterior for the large-N study (:func:`posterior_family`)."""

GRID_FACTOR_SIZES = (6, 40, 32, 32)
"""The dSprites-like grid (scale, orientation, x, y) of the "grid" family: 245 760 points."""


def posterior_family(name: str, num_points: int, dim: int, *, noise_std: float = 0.1, rho: float = 0.5,
                     generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32) -> SyntheticPosterior:
    """N encodings of one of :data:`POSTERIOR_FAMILIES`:

    - ``equicorrelated``: :func:`make_posterior` (mu ~ N(0, equicorrelated(rho)), variance s^2);
    - ``grid``: N distinct points of the dSprites-like factor grid :data:`GRID_FACTOR_SIZES`, each
      factor evenly spaced in [-1, 1], mapped to D dimensions by a random linear map (D x 4, N(0, 1)
      entries); variance s^2 (the means lie on a 4-dimensional grid: strongly dependent dimensions);
    - ``heteroscedastic``: as equicorrelated, each (n, d) with its own scale s * exp(u), u ~ U(-1.2, 1.2);
    - ``collapsed``: as equicorrelated in the first D - D // 3 dimensions; the last D // 3 collapsed
      to the prior (mu = 0, variance 1), as dead units of a VAE are.
    """
    if name not in POSTERIOR_FAMILIES:
        raise ValueError(f"name must be one of {POSTERIOR_FAMILIES}, got {name!r}")
    if name == "equicorrelated":
        return make_posterior(num_points, dim, rho=rho, noise_std=noise_std, generator=generator, dtype=dtype)
    log_s2 = 2 * math.log(noise_std)
    if name == "grid":
        total = math.prod(GRID_FACTOR_SIZES)
        if num_points > total:
            raise ValueError(f"the grid has {total} points, got num_points = {num_points}")
        cells = torch.randperm(total, generator=generator)[:num_points]
        factors = []
        for size in reversed(GRID_FACTOR_SIZES):
            factors.append(torch.linspace(-1.0, 1.0, size, dtype=torch.float64)[cells % size])
            cells = cells // size
        mapping = torch.randn(dim, len(GRID_FACTOR_SIZES), generator=generator, dtype=torch.float64)
        mu = torch.stack(factors[::-1], 1) @ mapping.T
        logvar = torch.full_like(mu, log_s2)
        return SyntheticPosterior(mu.to(dtype), logvar.to(dtype), rho, noise_std)
    base = make_posterior(num_points, dim, rho=rho, noise_std=noise_std, generator=generator, dtype=torch.float64)
    mu, logvar = base.mu.clone(), base.logvar.clone()
    if name == "heteroscedastic":
        logvar = logvar + 2.0 * (2.4 * torch.rand(mu.shape, generator=generator, dtype=torch.float64) - 1.2)
    else:
        dead = dim // 3
        if dead:
            mu[:, dim - dead:] = 0.0
            logvar[:, dim - dead:] = 0.0
    return SyntheticPosterior(mu.to(dtype), logvar.to(dtype), rho, None)
