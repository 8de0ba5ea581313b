"""A FIFO memory bank of past encodings, to estimate q(z) from more than the current minibatch."""
from __future__ import annotations

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

    @torch.no_grad()
    def update(self, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        """Push a batch of (B, dim) encodings; the oldest ones fall out beyond ``size``."""
        check_matrix("mu", mu, f"(B, {self.dim})")
        check_matrix("logvar", logvar, f"(B, {self.dim})")
        if mu.shape[1] != self.dim or logvar.shape != mu.shape:
            raise ValueError(f"mu and logvar must both have shape (B, {self.dim}) for this bank, got "
                             f"{tuple(mu.shape)} and {tuple(logvar.shape)}")
        if self._mu is None or self._mu.device != mu.device or self._mu.dtype != mu.dtype:
            old_mu, old_logvar = self._oldest_first(self._mu), self._oldest_first(self._logvar)
            self._mu = mu.new_empty(self.size, self.dim)
            self._logvar = mu.new_empty(self.size, self.dim)
            self._count, self._next = 0, 0
            if old_mu.numel():
                self.update(old_mu.to(mu), old_logvar.to(mu))
        mu, logvar = mu.detach()[-self.size:], logvar.detach()[-self.size:]
        rows = (self._next + torch.arange(mu.shape[0], device=mu.device)) % self.size
        self._mu[rows] = mu
        self._logvar[rows] = logvar
        self._next = (self._next + mu.shape[0]) % self.size
        self._count = min(self.size, self._count + mu.shape[0])


def bank_components(bank, mu, logvar):
    """(K_total, D) components: the batch first (row i is query i's own), then the bank."""
    if bank.dim != mu.shape[1]:
        raise ValueError(f"bank holds encodings of width {bank.dim}, but z has D = {mu.shape[1]}")
    if len(bank) == 0:
        return mu, logvar
    if bank.mu.device != mu.device:
        raise ValueError(f"bank is on {bank.mu.device}, but z is on {mu.device}")
    return torch.cat([mu, bank.mu.to(mu.dtype)]), torch.cat([logvar, bank.logvar.to(mu.dtype)])
