"""Bounds on the total correlation that hold in expectation over minibatches.

The stratified estimate of q(z_i) is unbiased, so its log is biased low (Jensen). The "plug-in"
estimate weighs every batch member 1/B, its own component included; its log is biased high.
Pairing them the opposite way for the joint and the marginals gives

    TC_lo = E[log q_strat(z)] - sum_d E[log q_plugin(z_d)]
    TC_hi = E[log q_plugin(z)] - sum_d E[log q_strat(z_d)]
"""
from __future__ import annotations

import math
from typing import Optional

import torch

from tcestim._ops import mixture_logdensity
from tcestim.estimators import minibatch_log_densities
from tcestim.weights import StructuredLogWeights


def tc_bracket(z, mu, logvar, *, dataset_size: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(lower, upper) minibatch bounds on TC, valid in expectation, in nats.

    Args:
        z, mu, logvar: (B, D) samples and their encoder parameters, B >= 2.
        dataset_size: N >= B (None: N = B).

    Returns:
        Two scalar tensors, batch means; differentiable.

    Example:
        >>> import torch, tcestim
        >>> mu = torch.randn(64, 3)
        >>> lower, upper = tcestim.tc_bracket(mu + 0.3 * torch.randn_like(mu), mu, torch.full_like(mu, -2.4),
        ...                                   dataset_size=1000)
        >>> lower.shape, upper.shape
        (torch.Size([]), torch.Size([]))
    """
    z, mu, logvar, strat_qz, strat_qzd = minibatch_log_densities(
        z, mu, logvar, dataset_size=dataset_size, estimator="stratified")
    plugin = StructuredLogWeights.constant(-math.log(z.shape[0]))
    plugin_qz, plugin_qzd = mixture_logdensity(z, mu, logvar, plugin)
    lower = (strat_qz - plugin_qzd.sum(1)).mean()
    upper = (plugin_qz - strat_qzd.sum(1)).mean()
    return lower, upper
