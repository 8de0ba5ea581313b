"""Pure-PyTorch mixture log-densities, for devices without a fused kernel.

Materialises the cube in row chunks (at most ~16M elements each) and differentiates through it
with autograd. Slower and hungrier than the fused kernels, but correct everywhere.
"""
from __future__ import annotations

import torch

from tcestim.gaussian import log_normal_diag
from tcestim.weights import StructuredLogWeights

_CHUNK_ELEMENTS = 1 << 24


def structured_rows(weights: StructuredLogWeights, rows: torch.Tensor, num_queries: int,
                    num_components: int, like: torch.Tensor) -> torch.Tensor:
    """(len(rows), K) matrix of the structured log-weights for the given query rows."""
    cols = torch.arange(num_components, device=like.device)
    out = torch.full((rows.numel(), num_components), weights.other, dtype=like.dtype, device=like.device)
    nxt = (rows + 1) % num_queries
    out = torch.where(cols[None, :] == nxt[:, None], torch.as_tensor(weights.next, dtype=like.dtype), out)
    out = torch.where(cols[None, :] == rows[:, None], torch.as_tensor(weights.self, dtype=like.dtype), out)
    return out


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
            lw = structured_rows(log_weights, rows, M, K, z)
        cube = log_normal_diag(z[start:stop, None, :], mu[None], logvar[None])
        joint.append(torch.logsumexp(lw + cube.sum(-1), dim=1))
        marginals.append(torch.logsumexp(lw[:, :, None] + cube, dim=1))
    if not joint:
        return z.new_empty(0), z.new_empty(0, D)
    return torch.cat(joint), torch.cat(marginals)
