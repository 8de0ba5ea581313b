"""Mixture weights of the minibatch estimators (docs/design.md, section 3), as natural-log weights.

B is the batch size, N the dataset size. Row i weights component j of the batch.

================  ===========  =========================  =====================
estimator         self j == i  next j == i + 1 (mod B)    other
================  ===========  =========================  =====================
``stratified``    1/N          (N - 1) / (N (B - 1))      (N - 1) / (N (B - 1))
``mss``           1/N          (N - B + 1) / (N (B - 1))  1 / (B - 1)
``mws``           1/(N B)      1/(N B)                    1/(N B)
``mss-legacy``    dense matrix of the reference β-TCVAE code (1/N down column 0, not the diagonal)
================  ===========  =========================  =====================
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from tcestim._validation import check_int, is_int

ESTIMATORS = ("stratified", "mss", "mws", "mss-legacy")
"""Names accepted by ``estimator=``; "stratified" is the default."""

# Estimators whose weights need at least two batch members (they single out the query itself).
_NEED_TWO = ("stratified", "mss", "mss-legacy")


class StructuredLogWeights(NamedTuple):
    """Natural-log mixture weights that need no (M, K) matrix.

    ``log w[i, j] = self`` if ``j == i``, ``next`` if ``j == (i + 1) mod M``, ``other`` otherwise.

    Example:
        >>> import math, torch, tcestim
        >>> w = tcestim.StructuredLogWeights.constant(-math.log(8))     # uniform 1/8
        >>> w.rows(torch.arange(2), 8, 8, like=torch.zeros(())).exp().sum(1)
        tensor([1., 1.])
    """

    self: float
    next: float
    other: float

    @classmethod
    def constant(cls, log_weight: float) -> "StructuredLogWeights":
        return cls(log_weight, log_weight, log_weight)

    def rows(self, rows: torch.Tensor, num_queries: int, num_components: int, *,
             like: torch.Tensor) -> torch.Tensor:
        """(len(rows), K) dense log-weights of the given query rows, in ``like``'s dtype and device."""
        def value(w):  # a float, or a 0-d tensor when computed under torch.compile
            return torch.as_tensor(w, dtype=like.dtype).to(like.device)

        cols = torch.arange(num_components, device=like.device)
        out = value(self.other).expand(rows.numel(), num_components)
        nxt = (rows + 1) % num_queries
        out = torch.where(cols[None, :] == nxt[:, None], value(self.next), out)
        return torch.where(cols[None, :] == rows[:, None], value(self.self), out)


def check_estimator(estimator: str) -> None:
    if estimator not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {ESTIMATORS}, got {estimator!r}")


def resolve_dataset_size(dataset_size, batch_size: int) -> int:
    """N from the user's ``dataset_size`` (None means the batch is the whole population)."""
    if dataset_size is None:
        return batch_size
    if not is_int(dataset_size):
        raise TypeError(f"dataset_size must be an int or None, got {type(dataset_size).__name__}")
    dataset_size = int(dataset_size)
    if dataset_size < batch_size:
        raise ValueError(
            f"dataset_size must be >= the batch size {batch_size}, got {dataset_size}")
    return dataset_size


def _log(x):
    """log of a size. While torch.compile traces, sizes are symbolic: the log is then a float64 CPU
    tensor, so a new batch or bank size is a new input value, not a recompilation."""
    if torch.compiler.is_compiling():
        return torch.log(torch.scalar_tensor(x, dtype=torch.float64))
    return math.log(x)


def stratified_log_weights(dataset_size: int, num_others: int) -> StructuredLogWeights:
    """Stratified weights for a query with ``num_others`` other components drawn from the N - 1 other
    data points: its own component 1/N, every other one (N - 1) / (N num_others)."""
    N = dataset_size
    other = math.log(N - 1) - math.log(N) - _log(num_others) if N > 1 else -math.inf
    return StructuredLogWeights(-_log(N), other, other)


def estimator_log_weights(estimator: str, batch_size: int, dataset_size: int | None = None,
                          *, dtype: torch.dtype = torch.float64, device=None):
    """Log-weights of ``estimator`` for a batch of ``batch_size`` drawn from ``dataset_size`` points.

    Returns a :class:`StructuredLogWeights`, or for ``"mss-legacy"`` a dense (B, B) tensor.

    Example:
        >>> import math, tcestim
        >>> w = tcestim.estimator_log_weights("stratified", 4, 100)
        >>> round(math.exp(w.self), 4), round(math.exp(w.other), 4)     # 1/N and (N-1)/(N(B-1))
        (0.01, 0.33)
        >>> tcestim.estimator_log_weights("mss-legacy", 4, 100).shape
        torch.Size([4, 4])
    """
    check_estimator(estimator)
    B = check_int("batch_size", batch_size, minimum=1)
    N = resolve_dataset_size(dataset_size, B)
    if estimator in _NEED_TWO and B < 2:
        raise ValueError(f"estimator {estimator!r} needs a batch size of at least 2, got {B}")
    if estimator == "mws":
        return StructuredLogWeights.constant(-_log(N) - _log(B))
    if estimator == "stratified":
        return stratified_log_weights(N, B - 1)
    if estimator == "mss":
        return StructuredLogWeights(-_log(N), _log(N - B + 1) - _log(N) - _log(B - 1), -_log(B - 1))
    return legacy_mss_log_weights(B, N, dtype=dtype, device=device)


def legacy_mss_log_weights(batch_size: int, dataset_size: int, *, dtype=torch.float64, device=None):
    """The (B, B) log-weight matrix of the reference β-TCVAE code, bug included.

    Its flat-stride assignments put 1/N down column 0 instead of the diagonal. Use only to
    reproduce published numbers: it caps the MI estimate near log(B - 1) and biases TC upward.
    """
    B, N = batch_size, dataset_size
    strat = (N - B + 1) / (N * (B - 1))
    w = torch.full((B, B), 1.0 / (B - 1), dtype=torch.float64)
    flat = w.view(-1)
    flat[::B] = 1.0 / N
    flat[1::B] = strat
    w[B - 2, 0] = strat
    return w.log().to(dtype=dtype, device=device)
