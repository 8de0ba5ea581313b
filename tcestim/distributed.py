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
again; plus one all-gather of 9 integers per rank (the agreement below) and one scalar all-reduce
for the reported value.

Agreement: before any work, the ranks exchange what they were called with (batch size, D, dtype,
dataset_size, estimator, bank length, jackknife, whether mu/logvar need gradients — the backward's
reduce-scatter is a collective that every rank must join — and whether their own inputs passed the
checks). If
any rank's inputs are invalid, or the ranks disagree on anything but the batch size, *every* rank
raises the same ValueError naming the rank and the problem, so no rank is left waiting in a
collective. A rank may have an empty batch (B_r = 0): it contributes nothing and still takes part in
every collective, backward included.
"""
from __future__ import annotations

import warnings
from typing import Optional

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn

from tcestim._ops import mixture_logdensity
from tcestim._validation import check_same_dtype_device, check_tensor, compute_dtype, is_int
from tcestim.bank import DatasetBank, DatasetBankBatch, bank_components, check_bank_dataset_size
from tcestim.estimators import (
    KLDecomposition,
    Prior,
    assemble_decomposition,
    check_stratified_extensions,
    stratified_log_densities,
)
from tcestim.weights import (
    ESTIMATORS,
    StructuredLogWeights,
    check_estimator,
    estimator_log_weights,
    resolve_dataset_size,
)

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_AGREED = ("D", "dtype", "dataset_size", "estimator", "bank length", "jackknife", "whether mu/logvar need gradients",
           "bank kind", "the DatasetBank's dataset_size")
_BANK_KINDS = ("none", "MemoryBank", "DatasetBank")


def _require_initialised() -> None:
    if not (dist.is_available() and dist.is_initialized()):
        raise RuntimeError("tcestim.distributed needs an initialised process group: call "
                           "torch.distributed.init_process_group(...) first (or use tcestim.total_correlation "
                           "for a single process)")


def _check_local(z, mu, logvar, dataset_size, estimator, bank) -> None:
    """This rank's own checks; as tcestim.decompose's, except that an empty batch (B_r = 0) is allowed."""
    for name, t in (("z", z), ("mu", mu), ("logvar", logvar)):
        check_tensor(name, t)
        if t.dim() != 2 or t.shape[1] == 0:
            raise ValueError(f"{name} must be 2-D (B, D) with D >= 1, got shape {tuple(t.shape)}")
    for name, t in (("mu", mu), ("logvar", logvar)):
        if t.shape != z.shape:
            raise ValueError(f"{name} must have the shape of z {tuple(z.shape)}, got {tuple(t.shape)}")
    check_same_dtype_device(z=z, mu=mu, logvar=logvar)
    check_estimator(estimator)
    if dataset_size is not None and not is_int(dataset_size):
        raise TypeError(f"dataset_size must be an int or None, got {type(dataset_size).__name__}")
    if bank is not None and bank.dim != z.shape[1]:
        raise ValueError(f"bank holds encodings of width {bank.dim}, but z has D = {z.shape[1]}")
    if isinstance(bank, DatasetBank):
        raise TypeError("a DatasetBank needs the batch's dataset indices: pass bank=bank.for_batch(indices)")
    if isinstance(bank, DatasetBankBatch) and bank.indices.shape[0] != z.shape[0]:
        raise ValueError(f"the bank's batch has {bank.indices.shape[0]} indices, but z has B = {z.shape[0]} rows")


def _collective_device(z, group) -> torch.device:
    if isinstance(z, torch.Tensor):
        return z.device
    if dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _agree(z, mu, logvar, dataset_size, estimator, bank, jackknife, group) -> list[int]:
    """Exchange what every rank was called with; raise the same error on every rank if any rank's
    inputs are invalid or the ranks disagree. Returns the ranks' batch sizes."""
    error = None
    try:
        _check_local(z, mu, logvar, dataset_size, estimator, bank)
    except (TypeError, ValueError) as caught:
        error = caught
    if error is None:
        needs_grad = torch.is_grad_enabled() and (mu.requires_grad or logvar.requires_grad)
        description = [0, z.shape[0], z.shape[1], _DTYPES.index(z.dtype),
                       -1 if dataset_size is None else int(dataset_size), ESTIMATORS.index(estimator),
                       _bank_length(bank), int(bool(jackknife)), int(needs_grad), _bank_kind(bank),
                       bank.bank.dataset_size if isinstance(bank, DatasetBankBatch) else -1]
    else:
        description = [1] + [-1] * (len(_AGREED) + 1)
    device = _collective_device(z, group)
    world = dist.get_world_size(group)
    gathered = [torch.zeros(len(description), dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(gathered, torch.tensor(description, dtype=torch.int64, device=device), group=group)
    table = [g.tolist() for g in gathered]
    if any(row[0] for row in table):
        _raise_everywhere(error, device, group)
    for column, name in enumerate(_AGREED, start=2):
        values = [row[column] for row in table]
        if len(set(values)) > 1:
            shown = [_describe(name, v) for v in values]
            raise ValueError(f"tcestim.distributed: the ranks disagree on {name}: "
                             + ", ".join(f"rank {rank} has {v}" for rank, v in enumerate(shown))
                             + " (every rank must pass the same " + name + ")")
    return [row[1] for row in table]


def _bank_kind(bank) -> int:
    if bank is None:
        return 0
    return 2 if isinstance(bank, DatasetBankBatch) else 1


def _bank_length(bank) -> int:
    if bank is None:
        return 0
    return len(bank.bank) if isinstance(bank, DatasetBankBatch) else len(bank)


def _gather_indices(indices: torch.Tensor, sizes: list[int], device, group) -> torch.Tensor:
    """Every rank's dataset indices, concatenated in rank order (int64, on the CPU)."""
    longest = max(sizes)
    padded = torch.full((longest,), -1, dtype=torch.int64, device=device)
    padded[: indices.shape[0]] = indices.to(device)
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)]).cpu()


def _describe(name: str, value: int):
    if name == "dtype":
        return str(_DTYPES[value])
    if name == "estimator":
        return repr(ESTIMATORS[value])
    if name == "dataset_size" and value < 0:
        return "None"
    if name == "jackknife" or name.startswith("whether"):
        return bool(value)
    if name == "bank kind":
        return _BANK_KINDS[value]
    return value


def _batch_sizes(local: int, device: torch.device, group) -> list[int]:
    world = dist.get_world_size(group)
    sizes = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(sizes, torch.tensor([local], dtype=torch.int64, device=device), group=group)
    return [int(s) for s in sizes]


def _all_gather_uneven(t: torch.Tensor, sizes: list[int], group) -> torch.Tensor:
    """Concatenation of every rank's (B_r, D) tensor, differentiable (padded to max B_r in transit)."""
    longest = max(sizes)
    padded = torch.cat([t, t.new_zeros(longest - t.shape[0], *t.shape[1:])]) if t.shape[0] < longest else t
    with warnings.catch_warnings():  # its replacement is private API (torch.distributed._functional_collectives)
        warnings.filterwarnings("ignore", "torch.distributed.nn.functional.all_gather is deprecated",
                                FutureWarning)
        parts = dist_fn.all_gather(padded, group=group)
    return torch.cat([part[:n] for part, n in zip(parts, sizes)])


def _global_log_densities(z, mu, logvar, dataset_size, estimator, bank, jackknife, group):
    _require_initialised()
    sizes = _agree(z, mu, logvar, dataset_size, estimator, bank, jackknife, group)
    dtype = compute_dtype(z.dtype)
    z, mu, logvar = z.to(dtype), mu.to(dtype), logvar.to(dtype)
    rank = dist.get_rank(group)
    offset, global_batch = sum(sizes[:rank]), sum(sizes)
    if global_batch == 0:
        raise ValueError("tcestim.distributed: every rank's batch is empty")
    N = resolve_dataset_size(dataset_size, global_batch)
    check_stratified_extensions(estimator, bank, jackknife)
    check_bank_dataset_size(bank, dataset_size, global_batch)
    mu_all = _all_gather_uneven(mu, sizes, group)
    logvar_all = _all_gather_uneven(logvar, sizes, group)
    if isinstance(bank, DatasetBankBatch):
        # Every rank's own slots are left out: gather the global batch's indices, rotated like the
        # components below. (The index counts were agreed on in _check_local.)
        everyone = _gather_indices(bank.indices, sizes, z.device, group)
        if torch.unique(everyone).numel() != everyone.numel():  # the same on every rank: all raise
            raise ValueError("tcestim.distributed: the global batch's dataset indices must be distinct; a sampler "
                             "that pads its last batches repeats indices across ranks (use drop_last=True)")
        bank = DatasetBankBatch(bank.bank, torch.roll(everyone, -offset, 0))
    uses_stratified = estimator == "stratified" or bank is not None or jackknife
    if uses_stratified and global_batch < 2 and _bank_length(bank) == 0:
        raise ValueError(f"estimator 'stratified' needs a global batch of at least 2, got {global_batch}")
    if z.shape[0] == 0:
        # Nothing to estimate here, but the backward must still pass through the all-gathers
        # (their reduce-scatter is a collective every rank joins).
        anchor = 0.0 * (mu_all.sum() + logvar_all.sum())
        return z, mu, logvar, anchor + z.new_zeros(0), anchor + z.new_zeros(0, z.shape[1]), global_batch
    if uses_stratified:
        # Rotate so that this rank's query i finds its own encoding at component row i.
        comp_mu, comp_logvar = torch.roll(mu_all, -offset, 0), torch.roll(logvar_all, -offset, 0)
        others = global_batch - 1
        if bank is not None:
            comp_mu, comp_logvar, others = bank_components(bank, comp_mu, comp_logvar)
        log_qz, log_qzd = stratified_log_densities(z, comp_mu, comp_logvar, N, jackknife, others,
                                                   grad_components=global_batch)
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

    Example:
        Run on every rank of an initialised process group (not executed here)::

            import torch.distributed as dist, tcestim.distributed
            dist.init_process_group("nccl")   # torchrun sets rank and world size
            tc = tcestim.distributed.total_correlation(z, mu, logvar, dataset_size=len(dataset))
            loss = recon + dist.get_world_size() * 5.0 * tc   # DDP averages gradients over ranks
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

    Example:
        On every rank of an initialised process group (not executed here)::

            d = tcestim.distributed.decompose(z, mu, logvar, dataset_size=len(dataset))
            print(d.means())   # this rank's queries, decomposed against the global batch
    """
    z, mu, logvar, log_qz, log_qzd, _ = _global_log_densities(
        z, mu, logvar, dataset_size, estimator, bank, jackknife, group)
    return assemble_decomposition(z, mu, logvar, log_qz, log_qzd, prior)


@torch.no_grad()
def update_bank(bank, mu, logvar, *, indices=None, group=None) -> None:
    """Push the whole global batch (every rank's mu, logvar) into ``bank`` on every rank.

    Keeps the banks of all ranks identical, which the global estimator assumes. A
    :class:`tcestim.DatasetBank` needs this rank's dataset ``indices`` (B_r,): every rank writes the
    slots of every rank's batch. Invalid inputs on any rank raise the same ValueError on every rank.

    Example:
        On every rank, after the step that used the bank (not executed here)::

            bank = tcestim.MemoryBank(4096, D)
            tc = tcestim.distributed.total_correlation(z, mu, logvar, dataset_size=N, bank=bank)
            ...
            tcestim.distributed.update_bank(bank, mu, logvar)    # every rank's bank: the global batch
            # a DatasetBank: tcestim.distributed.update_bank(dataset_bank, mu, logvar, indices=index)
    """
    _require_initialised()
    error = None
    try:
        if isinstance(bank, DatasetBank):
            if indices is None:
                raise TypeError("update_bank(DatasetBank, ...) needs this rank's dataset indices: indices=")
            indices = bank._indices(indices, mu.shape[0])
        elif indices is not None:
            raise TypeError("indices= is for a DatasetBank; a MemoryBank keeps the order of arrival")
    except (TypeError, ValueError) as caught:
        error = caught
    _raise_everywhere(error, mu.device, group)
    sizes = _batch_sizes(mu.shape[0], mu.device, group)
    all_mu = _all_gather_uneven(mu.detach(), sizes, group)
    all_logvar = _all_gather_uneven(logvar.detach(), sizes, group)
    if isinstance(bank, DatasetBank):
        everyone = _gather_indices(indices, sizes, mu.device, group)
        if torch.unique(everyone).numel() != everyone.numel():
            raise ValueError("tcestim.distributed.update_bank: the global batch's dataset indices must be distinct")
        bank.update(everyone, all_mu, all_logvar)
    else:
        bank.update(all_mu, all_logvar)


def _raise_everywhere(error, device, group) -> None:
    """If ``error`` is set on any rank, raise one ValueError naming the failing ranks on every rank."""
    world = dist.get_world_size(group)
    flags = [torch.zeros(1, dtype=torch.int64, device=device) for _ in range(world)]
    dist.all_gather(flags, torch.tensor([int(error is not None)], dtype=torch.int64, device=device), group=group)
    failed = [rank for rank, flag in enumerate(flags) if int(flag)]
    if failed:
        messages = [None] * world
        dist.all_gather_object(messages, None if error is None else f"{type(error).__name__}: {error}", group=group)
        details = "; ".join(f"rank {rank}: {messages[rank]}" for rank in failed)
        raise ValueError(f"tcestim.distributed: invalid inputs on {len(failed)} of {world} ranks ({details})") \
            from error
