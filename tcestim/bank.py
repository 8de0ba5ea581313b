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
                self._update(old_mu.to(mu), old_logvar.to(mu))
        mu, logvar = mu.detach()[-self.size:].clone(), logvar.detach()[-self.size:].clone()
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
