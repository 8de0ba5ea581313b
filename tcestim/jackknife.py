"""Leave-one-component-out jackknife of the stratified log-density estimates.

For query i the stratified estimate is q_hat = a t_self + c sum_{k in others} t_k with
a = 1/N, c = (N - 1) / (N n) over the n "other" components (batch mates and bank). The log of this
unbiased estimate of q(z_i) is biased low (Jensen). The jackknife combines it with the n
leave-one-out estimates (weights c' = (N - 1) / (N (n - 1))):

    theta_J = n theta - (n - 1) mean_k theta_(k)

which removes the O(1/n) term of the bias. The same is done for every marginal log q(z_id).
The components are drawn without replacement from the N - 1 other data points, so the correction
(n - 1) (theta - mean_k theta_(k)) is scaled by the finite-population factor 1 - n / (N - 1): no
correction when the others are the whole rest of the dataset (then the estimate is exact), the
plain jackknife when N >> n.

Leave-one-out sums are formed stably: with m = max_k x_k and e_k = exp(x_k - m), every term but the
largest leaves at least e_max = 1 behind (no cancellation), and the largest is left out by summing
the others directly. Runs in PyTorch on row chunks of the (B, K, D) cube: O(K) extra work per
output element, memory bounded by the chunk size.
"""
from __future__ import annotations

import math

import torch

from tcestim.gaussian import log_normal_diag

_CHUNK_ELEMENTS = 1 << 22


def _loo_logsumexp(x: torch.Tensor, others: torch.Tensor):
    """For x (m, K, ...) and a mask of the summed entries (m, K, 1...): log sum over the mask
    and, for each k, log of that sum without term k. Returns (full (m, ...), loo (m, K, ...))."""
    x = x.masked_fill(~others, -math.inf)
    top, arg = x.max(dim=1, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    e = torch.exp(x - top)
    total = e.sum(dim=1, keepdim=True)
    is_top = torch.zeros_like(e, dtype=torch.bool).scatter_(1, arg, True)
    without_top = e.masked_fill(is_top, 0.0).sum(dim=1, keepdim=True)
    loo = torch.where(is_top, without_top, total - e)
    # log(0) = -inf is a valid value, but its gradient (inf) times a zero upstream gradient is NaN:
    # take the log only where the sum is positive.
    positive = loo > 0
    log_loo = torch.where(positive, torch.log(torch.where(positive, loo, torch.ones_like(loo))),
                          torch.full_like(loo, -math.inf))
    return (top + torch.log(total)).squeeze(1), top + log_loo


def _jackknife_log_density(values: torch.Tensor, self_mask: torch.Tensor, log_a: float,
                           log_c: float, log_c_loo: float, num_others: int,
                           population_factor: float) -> torch.Tensor:
    """values (m, K, ...) log q(z_i | component k); self_mask (m, K, 1...) marks the query's own."""
    log_self = values.masked_fill(~self_mask, -math.inf).logsumexp(dim=1)
    others = ~self_mask
    full, loo = _loo_logsumexp(values, others)
    theta = torch.logaddexp(log_a + log_self, log_c + full)
    theta_loo = torch.logaddexp((log_a + log_self).unsqueeze(1), log_c_loo + loo)
    mean_loo = theta_loo.masked_fill(~others.expand_as(theta_loo), 0.0).sum(dim=1) / num_others
    return theta + population_factor * (num_others - 1) * (theta - mean_loo)


def jackknife_log_densities(z: torch.Tensor, components_mu: torch.Tensor, components_logvar: torch.Tensor,
                            dataset_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Jackknifed (log_qz (B,), log_qzd (B, D)) for queries z whose own component is row i.

    components_mu/logvar: (K, D) with the batch's encodings first (component i belongs to query i),
    then any further components (a memory bank). Needs at least 3 components in all.
    """
    B, D = z.shape
    K = components_mu.shape[0]
    num_others = K - 1
    if num_others < 2:
        raise ValueError(f"jackknife needs at least 3 mixture components (batch + bank), got {K}")
    N = dataset_size
    log_a = -math.log(N)
    log_c = math.log(N - 1) - math.log(N) - math.log(num_others) if N > 1 else -math.inf
    log_c_loo = math.log(N - 1) - math.log(N) - math.log(num_others - 1) if N > 1 else -math.inf
    population_factor = max(0.0, 1.0 - num_others / (N - 1)) if N > 1 else 0.0
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, K * D))
    joint, marginals = [], []
    columns = torch.arange(K, device=z.device)
    for start in range(0, B, rows_per_chunk):
        rows = torch.arange(start, min(B, start + rows_per_chunk), device=z.device)
        cube = log_normal_diag(z[rows, None, :], components_mu[None], components_logvar[None])
        self_mask = (columns[None, :] == rows[:, None])
        joint.append(_jackknife_log_density(cube.sum(-1), self_mask, log_a, log_c, log_c_loo, num_others,
                                            population_factor))
        marginals.append(_jackknife_log_density(cube, self_mask[:, :, None], log_a, log_c, log_c_loo,
                                                num_others, population_factor))
    return torch.cat(joint), torch.cat(marginals)
