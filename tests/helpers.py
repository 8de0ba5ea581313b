"""Inputs and comparisons shared by the test modules (importable as ``helpers``: conftest puts tests/ on sys.path).

* Operator inputs: :func:`make_inputs`, :func:`run_op` (the raw ``torch.ops.tcestim`` operators),
  :func:`mixture` (the code path of a :class:`tcestim.testing.Backend`), :func:`reference_outputs`.
* Encoder batches: :func:`posterior` (z, mu, logvar of one batch), :func:`encodings` and :func:`sample`
  (a dataset's encodings and a draw from them), :func:`separated_batch`,
  :func:`gaussian_samples` (correlated Gaussian samples).
* Comparisons: :func:`close`, :func:`assert_decompositions_close`.
"""
import math

import torch

import tcestim
from tcestim.weights import StructuredLogWeights

import reference

WEIGHTS = StructuredLogWeights(math.log(0.02), math.log(0.3), math.log(0.04))
FIELDS = ("mi", "tc", "dimkl", "log_qzx", "log_qz", "log_qzd", "log_pz")
NEED_TWO = ("stratified", "mss", "mss-legacy")


# ----------------------------------------------------------------------------------------------
# operators


def make_inputs(M, K, D, dtype, seed=0, device="cpu", requires_grad=False):
    """(z (M, D), mu (K, D), logvar (K, D), log_weights (M, K)), drawn in float64 then cast."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(M, D, generator=g, dtype=torch.float64)
    mu = torch.randn(K, D, generator=g, dtype=torch.float64)
    logvar = 0.6 * torch.randn(K, D, generator=g, dtype=torch.float64) - 0.3
    log_weights = 0.5 * torch.randn(M, K, generator=g, dtype=torch.float64) - math.log(K)
    return [t.to(dtype=dtype, device=device).requires_grad_(requires_grad)
            for t in (z, mu, logvar, log_weights)]


def run_op(z, mu, logvar, log_weights, mode, weights=WEIGHTS):
    """The fused op: ``mode`` "dense" uses log_weights, "structured" the ``weights`` triple."""
    if mode == "dense":
        return torch.ops.tcestim.mixture_logdensity_dense(z, mu, logvar, log_weights)
    return torch.ops.tcestim.mixture_logdensity(z, mu, logvar, *weights)


def mixture(backend, z, mu, logvar, log_weights, mode, weights=WEIGHTS):
    """``run_op`` on the code path of ``backend`` (a tcestim.testing.Backend; call inside its use_backend).

    Fused backends call the raw operator; the fallback calls no operator, so it is reached through
    the public ``tcestim.log_aggregate_posterior`` (same inputs, same outputs). Inputs are used as
    given: move them to ``backend.device`` first.
    """
    if backend.fused:
        return run_op(z, mu, logvar, log_weights, mode, weights)
    return tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=log_weights if mode == "dense" else weights)


def reference_outputs(z, mu, logvar, log_weights, mode, weights=WEIGHTS):
    """float64 NumPy (log_qz, log_qzd) for the same call."""
    M, K = z.shape[0], mu.shape[0]
    lw = reference.to_numpy(log_weights) if mode == "dense" else reference.structured_matrix(M, K, *weights)
    return reference.mixture_logdensity(reference.to_numpy(z), reference.to_numpy(mu),
                                        reference.to_numpy(logvar), lw)


# ----------------------------------------------------------------------------------------------
# encoder batches


def posterior(B=5, D=3, dtype=torch.float64, seed=0):
    """(z, mu, logvar) of one batch of B encodings: logvar around -1, z drawn from N(mu, exp(logvar))."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(B, D, generator=g, dtype=torch.float64)
    logvar = -1.0 + 0.3 * torch.randn(B, D, generator=g, dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(B, D, generator=g, dtype=torch.float64)
    return z.to(dtype), mu.to(dtype), logvar.to(dtype)


def encodings(N, D, seed=0, std=0.5, dtype=torch.float64):
    """(mu_all, logvar_all) of N encodings with standard deviations around ``std``."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(N, D, generator=g, dtype=dtype)
    logvar = (2 * math.log(std) + 0.3 * torch.randn(N, D, generator=g, dtype=dtype))
    return mu, logvar


def sample(mu, logvar, seed=1):
    """One draw z ~ N(mu, exp(logvar)) per row."""
    g = torch.Generator().manual_seed(seed)
    return mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g, dtype=mu.dtype)


def separated_batch(B=8, D=16, seed=0):
    """Leaves (z, mu, logvar) of well-separated, narrow components (logvar = -4, means of scale 5)."""
    g = torch.Generator().manual_seed(seed)
    mu = (5 * torch.randn(B, D, generator=g, dtype=torch.float64)).requires_grad_()
    logvar = torch.full((B, D), -4.0, dtype=torch.float64, requires_grad=True)
    z = (mu + torch.randn(B, D, generator=g, dtype=torch.float64) * (0.5 * logvar).exp()).detach().requires_grad_()
    return z, mu, logvar


def gaussian_samples(n, rho, seed=0, dim=2):
    """n samples of a dim-dimensional Gaussian with unit variances and correlation rho; (samples, cov)."""
    cov = (1 - rho) * torch.eye(dim, dtype=torch.float64) + rho * torch.ones(dim, dim, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T, cov


# ----------------------------------------------------------------------------------------------
# comparisons


def close(a, b, rtol=1e-12, atol=1e-12):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def assert_decompositions_close(a, b, rtol=1e-12, atol=1e-12):
    for name in FIELDS:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"{name}: {m}")
