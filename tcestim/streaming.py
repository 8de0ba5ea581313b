"""torchmetrics ``Metric`` classes for evaluation loops: the exact KL decomposition and MIG of an
evaluation epoch, accumulated batch by batch.

Each ``update`` stores the batch's encodings; ``compute`` runs the one-shot function on everything
stored (:func:`tcestim.decompose_exact`, :func:`tcestim.metrics.mig`), so the result equals what
that function gives on the concatenated epoch. Under DDP the states are lists gathered with
``dist_reduce_fx="cat"``: every rank computes the metric of the global epoch.

Needs torchmetrics (``pip install torchmetrics``); ``import tcestim`` does not import this module.
Memory: the stored encodings, 2 N D values (3 N D for :class:`ExactDecomposition`, which keeps the
samples too), plus labels for :class:`MutualInformationGap`.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat

from tcestim._validation import check_posterior
from tcestim.exact import decompose_exact

__all__ = ["ExactDecomposition", "MutualInformationGap"]


def _empty(state) -> bool:
    """A list state before any update (after a DDP sync it is one gathered tensor)."""
    return isinstance(state, list) and not state


class ExactDecomposition(Metric):
    """MI, TC and dimension-wise KL (nats) of the aggregate posterior of everything seen since the
    last ``reset``: q(z) = (1/N) sum_n q(z | n) over all N stored encodings, evaluated at the stored
    samples (:func:`tcestim.decompose_exact`).

    Args:
        prior: as in :func:`tcestim.decompose_exact` (None: standard normal).
        chunk_size: components per kernel call in ``compute``.
        kwargs: passed to ``torchmetrics.Metric`` (``sync_on_compute``, ``process_group``, ...).

    ``compute()`` returns a dict of 0-d tensors: ``mi``, ``tc``, ``dimkl`` (means over the stored
    samples) and ``mi_se``, ``tc_se``, ``dimkl_se`` (their Monte Carlo standard errors).

    Example:
        >>> import torch, tcestim
        >>> from tcestim.streaming import ExactDecomposition
        >>> mu = torch.randn(60, 3, dtype=torch.float64)
        >>> logvar = torch.full_like(mu, -1.0)
        >>> z = mu + 0.6 * torch.randn_like(mu)
        >>> metric = ExactDecomposition()
        >>> for i in range(0, 60, 20):                 # an evaluation loop, three batches
        ...     metric.update(z[i:i + 20], mu[i:i + 20], logvar[i:i + 20])
        >>> result = metric.compute()
        >>> torch.allclose(result["tc"], tcestim.decompose_exact(z, mu, logvar, mu, logvar).tc.mean())
        True
    """

    is_differentiable = False
    higher_is_better = None
    full_state_update = False

    z: list
    mu: list
    logvar: list

    def __init__(self, *, prior: Any = None, chunk_size: Optional[int] = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.prior = prior
        self.chunk_size = chunk_size
        self.add_state("z", default=[], dist_reduce_fx="cat")
        self.add_state("mu", default=[], dist_reduce_fx="cat")
        self.add_state("logvar", default=[], dist_reduce_fx="cat")

    def update(self, z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> None:
        """Store one batch: samples z (B, D) ~ q(z | n) and the encodings (B, D) they came from."""
        check_posterior(z, mu, logvar)
        self.z.append(z.detach())
        self.mu.append(mu.detach())
        self.logvar.append(logvar.detach())

    def compute(self) -> dict:
        """The decomposition of everything stored (see the class docstring)."""
        if _empty(self.mu):
            raise ValueError("ExactDecomposition.compute() called before any update()")
        z, mu, logvar = dim_zero_cat(self.z), dim_zero_cat(self.mu), dim_zero_cat(self.logvar)
        d = decompose_exact(z, mu, logvar, mu, logvar, prior=self.prior, chunk_size=self.chunk_size,
                            progress=False)
        n = z.shape[0]
        result = {}
        for name in ("mi", "tc", "dimkl"):
            values = getattr(d, name)
            result[name] = values.mean()
            result[f"{name}_se"] = values.std() / n ** 0.5 if n > 1 else torch.full_like(values[0], float("nan"))
        return result


class MutualInformationGap(Metric):
    """The MIG of everything seen since the last ``reset``, by :func:`tcestim.metrics.mig`.

    Args:
        method, factor_sizes, num_bins, samples_per_point, num_samples, max_components: as in
            :func:`tcestim.metrics.mig`.
        seed: seed of the generator ``compute`` passes to :func:`tcestim.metrics.mig` (Chen et al.'s
            method samples z), so that every rank and every call computes the same number.
        kwargs: passed to ``torchmetrics.Metric``.

    ``compute()`` returns the MIG (a 0-d float64 tensor); the :class:`tcestim.metrics.MIGDetails` of
    the last ``compute`` are in ``details``.

    Example:
        >>> import torch
        >>> from tcestim.streaming import MutualInformationGap
        >>> factors = torch.arange(200) % 4
        >>> mu = torch.stack([factors.double(), torch.randn(200, dtype=torch.float64)], 1)
        >>> metric = MutualInformationGap(method="discrete")
        >>> for i in range(0, 200, 50):
        ...     metric.update(mu[i:i + 50], None, factors[i:i + 50])
        >>> float(metric.compute()) > 0.8, metric.details.best_latent.tolist()
        (True, [0])
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    mu: list
    logvar: list
    factors: list

    def __init__(self, *, method: str = "chen", factor_sizes: Optional[Sequence[int]] = None, num_bins: int = 20,
                 samples_per_point: int = 1, num_samples: int = 10000, max_components: Optional[int] = None,
                 seed: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        from tcestim.metrics import METHODS

        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.options: dict[str, Any] = dict(factor_sizes=factor_sizes, num_bins=num_bins,
                                            samples_per_point=samples_per_point, num_samples=num_samples,
                                            max_components=max_components)
        self.seed = seed
        self.details = None
        self.add_state("mu", default=[], dist_reduce_fx="cat")
        self.add_state("logvar", default=[], dist_reduce_fx="cat")
        self.add_state("factors", default=[], dist_reduce_fx="cat")

    def update(self, mu: torch.Tensor, logvar: Optional[torch.Tensor], factors: torch.Tensor) -> None:
        """Store one batch: encodings (B, D) (``logvar`` may be None for ``method="discrete"``) and
        integer factor labels (B, K) or (B,)."""
        if logvar is None:
            if self.method == "chen":
                raise ValueError('method="chen" needs logvar (the encoder\'s log-variances), got None')
            logvar = torch.zeros_like(mu)
        if logvar.shape != mu.shape:
            raise ValueError(f"logvar must have the shape of mu {tuple(mu.shape)}, got {tuple(logvar.shape)}")
        factors = torch.as_tensor(factors, device=mu.device)
        if factors.dim() == 1:
            factors = factors[:, None]
        if factors.shape[0] != mu.shape[0]:
            raise ValueError(f"factors must have one row per row of mu ({mu.shape[0]}), got {tuple(factors.shape)}")
        self.mu.append(mu.detach())
        self.logvar.append(logvar.detach())
        self.factors.append(factors)

    def compute(self) -> torch.Tensor:
        """The MIG of everything stored (see the class docstring)."""
        from tcestim.metrics import mig

        if _empty(self.mu):
            raise ValueError("MutualInformationGap.compute() called before any update()")
        mu, logvar, factors = dim_zero_cat(self.mu), dim_zero_cat(self.logvar), dim_zero_cat(self.factors)
        generator = torch.Generator().manual_seed(self.seed)   # as mig() uses by default (seed 0)
        score, self.details = mig(mu, logvar if self.method == "chen" else None, factors, method=self.method,
                                  generator=generator, **self.options)
        return score
