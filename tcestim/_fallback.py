"""Pure-PyTorch mixture log-densities, for devices without a fused kernel.

Materialises the cube in row chunks (at most ~16M elements each) and differentiates through it
with autograd. Slower and hungrier than the fused kernels, but correct everywhere.
"""
from __future__ import annotations

import torch

from tcestim.gaussian import log_normal_diag

_CHUNK_ELEMENTS = 1 << 24


def mixture_logdensity(z, mu, logvar, log_weights):
    """log_qz (M,) and log_qzd (M, D); log_weights is StructuredLogWeights or an (M, K) tensor."""
    M, D = z.shape
    K = mu.shape[0]
    chunk = max(1, _CHUNK_ELEMENTS // max(1, K * D))
    joint, marginals = [], []
    for start in range(0, M, chunk):
        stop = min(M, start + chunk)
        rows = torch.arange(start, stop, device=z.device)
        if isinstance(log_weights, torch.Tensor):
            lw = log_weights[start:stop]
        else:
            lw = log_weights.rows(rows, M, K, like=z)
        cube = log_normal_diag(z[start:stop, None, :], mu[None], logvar[None])
        joint.append(torch.logsumexp(lw + cube.sum(-1), dim=1))
        marginals.append(torch.logsumexp(lw[:, :, None] + cube, dim=1))
    if not joint:
        return z.new_empty(0), z.new_empty(0, D)
    return torch.cat(joint), torch.cat(marginals)
