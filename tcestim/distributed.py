"""Estimators over the global batch of a data-parallel job (torch.distributed).

Each rank keeps its own queries z and contributes its encodings (mu, logvar) as mixture components
to every rank: the components are the concatenated global batch (B_global = sum of the ranks'
batch sizes, uneven sizes allowed), gathered with autograd-aware collectives, and the estimator's
weights are those of the global batch. Values and gradients equal the single-process computation
on the concatenated batch.

Gradients: calling ``backward`` on the returned value on every rank gives each rank's inputs
exactly the gradient of the global quantity (component gradients come back through the
all-gather's backward, a reduce-scatter). The returned value is the global mean, but its gradient
is that of this rank's share, (1/B_global) sum over this rank's queries, so that the shares add up
to the global gradient. Under DistributedDataParallel, which averages parameter gradients over the
W ranks, multiply the TC term by W to give it the weight it has in a single process.

Communication per rank and step, with b bytes per element (4 for float32): the forward gathers
mu and logvar, receiving 2 (W - 1) B D b bytes (B the largest rank's batch, padded) and sending
2 B D b to each peer (ring: about 2 (W - 1) B D b in all); the backward moves the same amount
again; plus W integers (batch sizes) and one scalar all-reduce for the reported value.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from tcestim._ops import mixture_logdensity
from tcestim._validation import check_posterior, compute_dtype
from tcestim.bank import bank_components
from tcestim.estimators import (
    KLDecomposition,
    Prior,
    assemble_decomposition,
    check_bank_dataset_size,
    check_stratified_extensions,
    stratified_log_densities,
)
from tcestim.weights import StructuredLogWeights, check_estimator, estimator_log_weights, resolve_dataset_size


def _require_initialised() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("tcestim.distributed needs an initialised process group: call "
                           "torch.distributed.init_process_group(...) first (or use tcestim.total_correlation "
                           "for a single process)")


def _batch_sizes(local: int, device: torch.device, group) -> list[int]:
    world = dist.get_world_size(group)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local], dtype=torch.int64, device=device), group=group)
    return [int(s) for s in sizes]


def _all_gather_uneven(t: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """Concatenation of every rank's (B_r, D) tensor, differentiable (padded to max B_r in transit)."""
    longest = max(sizes)
    padded = torch.cat([t, t.new_zeros(longest - t.shape[0], *t.shape[1:])]) if t.shape[0] < longest else t
    parts = dist_fn.all_gather(padded, group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def _global_log_densities(z, mu, logvar, dataset_size, estimator, bank, jackknife, group):
    _require_initialised()
    check_posterior(z, mu, logvar)
    check_estimator(estimator)
    dtype = compute_dtype(z.dtype)
    z, mu, logvar = z.to(dtype), mu.to(dtype), logvar.to(dtype)
    sizes = _batch_sizes(z.shape[0], z.device, group)
    rank = dist.get_rank(group)
    offset, global_batch = sum(sizes[:rank]), sum(sizes)
    N = resolve_dataset_size(dataset_size, global_batch)
    check_stratified_extensions(estimator, bank, jackknife)
    check_bank_dataset_size(bank, dataset_size, global_batch)
    mu_all = _all_gather_uneven(mu, sizes, group)
    logvar_all = _all_gather_uneven(logvar, sizes, group)
    if estimator == "stratified" or bank is not None or jackknife:
        if global_batch < 2 and (bank is None or len(bank) == 0):
            raise ValueError(f"estimator 'stratified' needs a global batch of at least 2, got {global_batch}")
        # Rotate so that this rank's query i finds its own encoding at component row i.
        comp_mu, comp_logvar = torch.roll(mu_all, -offset, 0), torch.roll(logvar_all, -offset, 0)
        if bank is not None:
            comp_mu, comp_logvar = bank_components(bank, comp_mu, comp_logvar)
        log_qz, log_qzd = stratified_log_densities(z, comp_mu, comp_logvar, N, jackknife)
    else:
        weights = estimator_log_weights(estimator, global_batch, N, dtype=dtype, device=z.device)
        rows = torch.arange(offset, offset + z.shape[0], device=z.device)
        if isinstance(weights, StructuredLogWeights):
            weights = weights.rows(rows, global_batch, global_batch, like=z)
        else:
            weights = weights[rows]
        log_qz, log_qzd = mixture_logdensity(z, mu_all, logvar_all, weights)
    return z, mu, logvar, log_qz, log_qzd, global_batch


def total_correlation(z, mu, logvar, *, dataset_size: Optional[int] = None, estimator: str = "stratified",
                      group=None, bank=None, jackknife: bool = False) -> torch.Tensor:
    """TC over the global batch of all ranks in ``group`` (nats): the global mean on every rank.

    Args as :func:`tcestim.total_correlation`; z, mu, logvar are this rank's (B_r, D) batch
    (sizes may differ between ranks); ``dataset_size`` is N >= the global batch (None: N = it);
    ``group`` a process group (None: the default one). Must be called on every rank of the group.
    """
    _, _, _, log_qz, log_qzd, global_batch = _global_log_densities(
        z, mu, logvar, dataset_size, estimator, bank, jackknife, group)
    share = (log_qz - log_qzd.sum(1)).sum() / global_batch
    total = share.detach().clone()
    dist.all_reduce(total, group=group)
    return share + (total - share.detach())


def decompose(z, mu, logvar, *, dataset_size: Optional[int] = None, estimator: str = "stratified",
              prior: Prior = None, group=None, bank=None, jackknife: bool = False) -> KLDecomposition:
    """Per-sample decomposition of this rank's queries against the global batch's components.

    The rows equal the matching rows of :func:`tcestim.decompose` on the concatenated batch.
    """
    z, mu, logvar, log_qz, log_qzd, _ = _global_log_densities(
        z, mu, logvar, dataset_size, estimator, bank, jackknife, group)
    return assemble_decomposition(z, mu, logvar, log_qz, log_qzd, prior)


@torch.no_grad()
def update_bank(bank, mu, logvar, *, group=None) -> None:
    """Push the whole global batch (every rank's mu, logvar) into ``bank`` on every rank.

    Keeps the banks of all ranks identical, which the global estimator assumes.
    """
    _require_initialised()
    sizes = _batch_sizes(mu.shape[0], mu.device, group)
    bank.update(_all_gather_uneven(mu.detach(), sizes, group), _all_gather_uneven(logvar.detach(), sizes, group))
