"""Banks of past encodings, to estimate q(z) from more than the current minibatch: a FIFO sample of
the other data points (:class:`MemoryBank`) or one slot per data point (:class:`DatasetBank`)."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from tcestim._validation import check_int, check_matrix


class MemoryBank:
    """FIFO of the last ``size`` detached encodings (mu, logvar), each of width ``dim``.

    With ``total_correlation(..., bank=bank)`` the mixture components are the current batch plus the
    bank: the query's own component weighs 1/N and every other (N - 1) / (N (B - 1 + K)), K = len(bank).
    Gradients flow through the current batch only. Call :meth:`update` after computing the loss, so
    the batch is not counted twice::

        tc = tcestim.total_correlation(z, mu, logvar, dataset_size=N, bank=bank)
        bank.update(mu, logvar)

    Its contents are checkpointed with :meth:`state_dict` / :meth:`load_state_dict` (plain tensors
    and ints, loadable with ``torch.load(weights_only=True)``). Updates work in and out of
    ``torch.inference_mode`` in any order.

    Example:
        >>> import torch, tcestim
        >>> bank = tcestim.MemoryBank(size=1000, dim=4)
        >>> bank.update(torch.randn(256, 4), torch.zeros(256, 4))
        >>> len(bank), bank.mu.shape
        (256, torch.Size([256, 4]))
        >>> restored = tcestim.MemoryBank(1000, 4)
        >>> restored.load_state_dict(bank.state_dict())
        >>> torch.equal(restored.mu, bank.mu)
        True
    """

    def __init__(self, size: int, dim: int):
        self.size = check_int("size", size, minimum=1)
        self.dim = check_int("dim", dim, minimum=1)
        self._mu: torch.Tensor | None = None
        self._logvar: torch.Tensor | None = None
        self._count = 0
        self._next = 0  # ring position of the next write

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"MemoryBank(size={self.size}, dim={self.dim}, filled={self._count})"

    @property
    def mu(self) -> torch.Tensor:
        """(len(bank), dim) stored means (no gradient)."""
        return self._stored(self._mu)

    @property
    def logvar(self) -> torch.Tensor:
        """(len(bank), dim) stored log-variances (no gradient)."""
        return self._stored(self._logvar)

    def _stored(self, buffer):
        if buffer is None:
            return torch.empty(0, self.dim)  # empty banks are skipped by the estimators
        return buffer[: self._count]

    def _oldest_first(self, buffer):
        stored = self._stored(buffer)
        return torch.roll(stored, -self._next, 0) if self._count == self.size else stored

    def reset(self) -> None:
        self._count, self._next = 0, 0

    def state_dict(self) -> dict:
        """``size``, ``dim``, the stored ``mu``, ``logvar`` (len(bank), dim) in ring order and the ring
        position ``next``: restoring it gives the same components in the same order (bitwise the
        same estimates) and the same eviction order."""
        return {"size": self.size, "dim": self.dim, "mu": self._stored(self._mu).clone(),
                "logvar": self._stored(self._logvar).clone(), "next": self._next}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (on the device and dtype of its tensors)."""
        if not isinstance(state, dict) or not {"size", "dim", "mu", "logvar", "next"} <= set(state):
            raise ValueError("state must be a MemoryBank.state_dict() with keys size, dim, mu, logvar, next")
        if (state["size"], state["dim"]) != (self.size, self.dim):
            raise ValueError(f"state is of a bank with size={state['size']}, dim={state['dim']}; this bank has "
                             f"size={self.size}, dim={self.dim}")
        mu, logvar = state["mu"], state["logvar"]
        if not (isinstance(mu, torch.Tensor) and isinstance(logvar, torch.Tensor) and mu.dim() == 2
                and mu.shape == logvar.shape and mu.shape[0] <= self.size and mu.shape[1] == self.dim):
            raise ValueError(f"state's mu and logvar must both be (n <= {self.size}, {self.dim}) tensors")
        count = mu.shape[0]
        if not (0 <= state["next"] < self.size and (count == self.size or state["next"] == count % self.size)):
            raise ValueError(f"state's ring position next={state['next']} does not fit {count} stored encodings")
        self._mu, self._logvar = None, None
        self.reset()
        if count:
            self.update(mu, logvar)  # fills rows 0..count-1 in order
            self._next = state["next"]

    @torch.no_grad()
    def update(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        """Push a batch of (B, dim) encodings; the oldest ones fall out beyond ``size``."""
        with torch.inference_mode(False):  # buffers stay normal tensors, whatever mode fills them
            self._update(mu, logvar)

    def _update(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        _check_encodings(self.dim, mu, logvar)
        if self._mu is None or self._mu.device != mu.device or self._mu.dtype != mu.dtype:
            old_mu, old_logvar = self._oldest_first(self._mu), self._oldest_first(self._logvar)
            self._mu = mu.new_empty(self.size, self.dim)
            self._logvar = mu.new_empty(self.size, self.dim)
            self._count, self._next = 0, 0
            if old_mu.numel():
                self._update(old_mu.to(mu), old_logvar.to(mu))
        mu, logvar = mu.detach()[-self.size:].clone(), logvar.detach()[-self.size:].clone()
        rows = (self._next + torch.arange(mu.shape[0], device=mu.device)) % self.size
        assert self._mu is not None and self._logvar is not None
        self._mu[rows] = mu
        self._logvar[rows] = logvar
        self._next = (self._next + mu.shape[0]) % self.size
        self._count = min(self.size, self._count + mu.shape[0])


class DatasetBank:
    """One slot per data point: the latest detached encoding (mu, logvar) of each of the N points.

    Where a FIFO :class:`MemoryBank` holds a sample of the other data points, a full bank holds all
    of them, so the stratified estimate becomes the exact aggregate posterior of the encodings it
    holds; the only error left is staleness (slots written up to an epoch ago). Use it through
    :meth:`for_batch`, which tells the estimators which slots are the batch's own::

        bank = tcestim.DatasetBank(dataset_size=N, dim=D)
        for x, index in loader:                       # index: (B,) dataset indices of the batch
            mu, logvar = encoder(x)
            z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
            tc = tcestim.total_correlation(z, mu, logvar, dataset_size=N, bank=bank.for_batch(index))
            ...
            bank.update(index, mu, logvar)

    Components: the batch (fresh, differentiable) and every filled slot that is not the batch's own.
    Weights: the own component 1/N, each of the others (N - 1) / (N (B - 1 + F)), F the filled slots
    outside the batch, so a full, fresh bank (B - 1 + F = N - 1) gives exactly the full-dataset
    mixture of :func:`tcestim.decompose_exact`. Never-written slots are left out and the weights
    renormalised exactly. Memory: 2 N D values on the device of the encodings (59 MB for dSprites'
    N = 737 280 at D = 10 in float32).

    Example:
        >>> import torch, tcestim
        >>> bank = tcestim.DatasetBank(dataset_size=10, dim=2)
        >>> bank.update(torch.tensor([0, 3, 7]), torch.randn(3, 2), torch.zeros(3, 2))
        >>> len(bank), bank.filled.nonzero().flatten().tolist()
        (3, [0, 3, 7])
    """

    def __init__(self, dataset_size: int, dim: int):
        self.dataset_size = check_int("dataset_size", dataset_size, minimum=2)
        self.dim = check_int("dim", dim, minimum=1)
        self._mu: torch.Tensor | None = None
        self._logvar: torch.Tensor | None = None
        with torch.inference_mode(False):  # never an inference tensor, whatever mode builds the bank
            self.filled = torch.zeros(self.dataset_size, dtype=torch.bool)  # on the CPU, whatever the device
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __repr__(self) -> str:
        return f"DatasetBank(dataset_size={self.dataset_size}, dim={self.dim}, filled={self._count})"

    @property
    def mu(self) -> torch.Tensor:
        """(N, dim) stored means; never-written slots hold 0."""
        return self._mu if self._mu is not None else torch.zeros(self.dataset_size, self.dim)

    @property
    def logvar(self) -> torch.Tensor:
        """(N, dim) stored log-variances; never-written slots hold +inf (a component of density 0)."""
        return self._logvar if self._logvar is not None else torch.full((self.dataset_size, self.dim), math.inf)

    def _indices(self, indices, batch_size: int | None = None) -> torch.Tensor:
        if not isinstance(indices, torch.Tensor):
            indices = torch.as_tensor(indices)
        if indices.dim() != 1 or indices.dtype in (torch.bool,) or indices.is_floating_point() \
                or indices.is_complex():
            raise TypeError(f"indices must be a 1-D integer tensor of dataset indices, got dtype {indices.dtype} "
                            f"and shape {tuple(indices.shape)}")
        if batch_size is not None and indices.shape[0] != batch_size:
            raise ValueError(f"indices must have one entry per batch member ({batch_size}), got {indices.shape[0]}")
        cpu = indices.detach().to("cpu", torch.int64)
        if cpu.numel() and (int(cpu.min()) < 0 or int(cpu.max()) >= self.dataset_size):
            raise ValueError(f"indices must be in [0, {self.dataset_size}), got values in "
                             f"[{int(cpu.min())}, {int(cpu.max())}]")
        if torch.unique(cpu).numel() != cpu.numel():
            raise ValueError("indices must be distinct: a batch's members are distinct data points")
        return cpu

    def reset(self) -> None:
        self.filled.zero_()
        self._count = 0
        if self._logvar is not None:
            self._logvar.fill_(math.inf)

    @torch.no_grad()
    def update(self, indices, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        """Write the (B, dim) encodings of the data points ``indices`` (B,) into their slots (detached)."""
        _check_encodings(self.dim, mu, logvar)
        cpu = self._indices(indices, mu.shape[0])
        with torch.inference_mode(False):
            if self._mu is None or self._mu.device != mu.device or self._mu.dtype != mu.dtype:
                old_mu, old_logvar = self._mu, self._logvar
                self._mu = torch.zeros(self.dataset_size, self.dim, dtype=mu.dtype, device=mu.device)
                self._logvar = torch.full((self.dataset_size, self.dim), math.inf, dtype=mu.dtype, device=mu.device)
                if old_mu is not None and old_logvar is not None:
                    self._mu.copy_(old_mu)
                    self._logvar.copy_(old_logvar)
            rows = cpu.to(mu.device)
            assert self._mu is not None and self._logvar is not None
            self._mu[rows] = mu.detach().clone()
            self._logvar[rows] = logvar.detach().clone()
            self._count += int((~self.filled[cpu]).sum())  # the slots written for the first time
            self.filled[cpu] = True

    def for_batch(self, indices) -> "DatasetBankBatch":
        """The bank as seen by the batch of data points ``indices`` (B,): pass it as ``bank=``."""
        return DatasetBankBatch(self, self._indices(indices))

    def state_dict(self) -> dict:
        """``dataset_size``, ``dim``, ``filled`` (N,) and the stored ``mu``, ``logvar`` (N, dim)."""
        return {"dataset_size": self.dataset_size, "dim": self.dim, "filled": self.filled.clone(),
                "mu": self.mu.clone(), "logvar": self.logvar.clone()}

    def load_state_dict(self, state: dict) -> None:
        """Restore what :meth:`state_dict` returned (on the device and dtype of its tensors)."""
        keys = {"dataset_size", "dim", "filled", "mu", "logvar"}
        if not isinstance(state, dict) or not keys <= set(state):
            raise ValueError(f"state must be a DatasetBank.state_dict() with keys {', '.join(sorted(keys))}")
        if (state["dataset_size"], state["dim"]) != (self.dataset_size, self.dim):
            raise ValueError(f"state is of a bank with dataset_size={state['dataset_size']}, dim={state['dim']}; "
                             f"this bank has dataset_size={self.dataset_size}, dim={self.dim}")
        shape = (self.dataset_size, self.dim)
        mu, logvar, filled = state["mu"], state["logvar"], state["filled"]
        if not all(isinstance(t, torch.Tensor) for t in (mu, logvar, filled)) or tuple(mu.shape) != shape \
                or tuple(logvar.shape) != shape or tuple(filled.shape) != (self.dataset_size,) \
                or mu.dtype != logvar.dtype or not mu.is_floating_point():
            raise ValueError(f"state's mu and logvar must be floating {shape} tensors of one dtype and filled a "
                             f"({self.dataset_size},) tensor")
        with torch.inference_mode(False):
            self.filled = filled.to("cpu", torch.bool).clone()
            self._mu = mu.clone()
            # unwritten slots are components of density 0, whatever the file held there
            self._logvar = logvar.clone().masked_fill(~self.filled.to(logvar.device)[:, None], math.inf)
        self._count = int(self.filled.sum())


class DatasetBankBatch(NamedTuple):
    """A :class:`DatasetBank` with the dataset indices (B,) of the current batch
    (from :meth:`DatasetBank.for_batch`)."""

    bank: DatasetBank
    indices: torch.Tensor

    @property
    def dim(self) -> int:
        return self.bank.dim


def _check_encodings(dim: int, mu, logvar) -> None:
    """What a bank's update takes: mu and logvar, both (B, dim) floating tensors."""
    check_matrix("mu", mu, f"(B, {dim})")
    check_matrix("logvar", logvar, f"(B, {dim})")
    if mu.shape[1] != dim or logvar.shape != mu.shape:
        raise ValueError(f"mu and logvar must both have shape (B, {dim}) for this bank, got "
                         f"{tuple(mu.shape)} and {tuple(logvar.shape)}")


def bank_components(bank, mu, logvar):
    """The mixture components of a batch with a bank: ``(mu (K, D), logvar (K, D), num_others)``, the
    batch first (row i is query i's own encoding), then the bank's; ``num_others`` is the number of
    components other than a query's own that carry weight (K - 1 unless slots are masked out)."""
    if bank.dim != mu.shape[1]:
        raise ValueError(f"bank holds encodings of width {bank.dim}, but z has D = {mu.shape[1]}")
    if isinstance(bank, DatasetBank):
        raise TypeError("a DatasetBank needs the batch's dataset indices: pass bank=bank.for_batch(indices)")
    if isinstance(bank, DatasetBankBatch):
        return _dataset_bank_components(bank, mu, logvar)
    if len(bank) == 0:
        return mu, logvar, mu.shape[0] - 1
    if bank.mu.device != mu.device:
        raise ValueError(f"bank is on {bank.mu.device}, but z is on {mu.device}")
    return (torch.cat([mu, bank.mu.to(mu.dtype)]), torch.cat([logvar, bank.logvar.to(mu.dtype)]),
            mu.shape[0] - 1 + len(bank))


def _dataset_bank_components(view: DatasetBankBatch, mu, logvar):
    bank, own = view.bank, view.indices
    if own.shape[0] != mu.shape[0]:
        raise ValueError(f"the bank's batch has {own.shape[0]} indices, but z has B = {mu.shape[0]} rows")
    others = len(bank) - int(bank.filled[own].sum())
    if torch.unique(own).numel() != own.numel():
        raise ValueError("the batch's dataset indices must be distinct (a distributed sampler that pads its last "
                         "batches repeats indices: use drop_last=True)")
    if others == 0:
        return mu, logvar, mu.shape[0] - 1
    if bank.mu.device != mu.device:
        raise ValueError(f"bank is on {bank.mu.device}, but z is on {mu.device}")
    # The batch's own slots (stale copies of its fresh rows) and never-written slots carry logvar = +inf:
    # components of density 0, left out of num_others.
    slots_logvar = bank.logvar.to(mu.dtype).index_fill(0, own.to(mu.device), math.inf)
    return (torch.cat([mu, bank.mu.to(mu.dtype)]), torch.cat([logvar, slots_logvar]),
            mu.shape[0] - 1 + others)


def check_bank_dataset_size(bank, dataset_size, batch_size: int) -> None:
    """A bank holds other data points: N must be given and leave room for them (a DatasetBank's N
    must be the dataset_size given)."""
    if isinstance(bank, DatasetBankBatch):
        if dataset_size != bank.bank.dataset_size:
            raise ValueError(f"dataset_size must be the DatasetBank's dataset_size {bank.bank.dataset_size}, "
                             f"got {dataset_size}")
        return
    if bank is None or len(bank) == 0:
        return
    if dataset_size is None:
        raise ValueError("dataset_size must be given with a non-empty bank (None would mean the batch "
                         "is the whole dataset)")
    if dataset_size < batch_size + len(bank):
        raise ValueError(f"dataset_size must be >= batch size + len(bank) = {batch_size + len(bank)} "
                         f"(the bank holds other data points), got {dataset_size}")
