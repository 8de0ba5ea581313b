"""Inputs, operator calls and float64 reference outputs shared by the CPU and CUDA op tests."""
import math

import torch

from tcestim.weights import StructuredLogWeights

import reference

WEIGHTS = StructuredLogWeights(math.log(0.02), math.log(0.3), math.log(0.04))


def make_inputs(M, K, D, dtype, seed=0, device="cpu", requires_grad=False):
    """(z (M, D), mu (K, D), logvar (K, D), log_weights (M, K)), drawn in float64 then cast."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(M, D, generator=g, dtype=torch.float64)
    mu = torch.randn(K, D, generator=g, dtype=torch.float64)
    logvar = 0.6 * torch.randn(K, D, generator=g, dtype=torch.float64) - 0.3
    log_weights = 0.5 * torch.randn(M, K, generator=g, dtype=torch.float64) - math.log(K)
    return [t.to(dtype=dtype, device=device).requires_grad_(requires_grad)
            for t in (z, mu, logvar, log_weights)]


def run_op(z, mu, logvar, log_weights, mode):
    """The fused op: ``mode`` "dense" uses log_weights, "structured" the WEIGHTS triple."""
    if mode == "dense":
        return torch.ops.tcestim.mixture_logdensity_dense(z, mu, logvar, log_weights)
    return torch.ops.tcestim.mixture_logdensity(z, mu, logvar, *WEIGHTS)


def reference_outputs(z, mu, logvar, log_weights, mode):
    """float64 NumPy (log_qz, log_qzd) for the same call."""
    M, K = z.shape[0], mu.shape[0]
    lw = reference.to_numpy(log_weights) if mode == "dense" else reference.structured_matrix(M, K, *WEIGHTS)
    return reference.mixture_logdensity(reference.to_numpy(z), reference.to_numpy(mu),
                                        reference.to_numpy(logvar), lw)
