"""The peers of the benchmark: one function per way of computing the stratified total correlation.

Every peer has the signature ``peer(z, mu, logvar) -> scalar tensor`` for a batch of B encodings:
z, mu, logvar are (B, D) float tensors (z[i] ~ N(mu[i], exp(logvar[i]))), and the result is the
batch mean of ``log q(z_i) - sum_d log q(z_id)`` under the stratified estimator's weights

    log w[i, j] = log(1/N)                      if j == i
                  log((N - 1) / (N (B - 1)))    otherwise

with N = ``DATASET_SIZE`` (a fixed, MNIST-sized population, so that the weights are not uniform).

* ``eager``   -- plain PyTorch: materialises the (B, B, D) cube by broadcasting, reduces it with
                 ``torch.logsumexp`` and takes a dense (B, B) log-weight matrix.
* ``compile`` -- ``torch.compile(dynamic=False, fullgraph=True)`` of that same function.
* ``fused``   -- ``tcestim.total_correlation``: the fused kernel, no cube.
* ``keops``   -- pykeops LazyTensors (symbolic cube, never stored); only when pykeops imports.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

import tcestim

DATASET_SIZE = 60_000
"""N, the population the batch is drawn from."""

LOG_2PI = math.log(2.0 * math.pi)

Peer = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

EAGER_MEMORY_LIMIT = 6e9
"""Bytes: eager is skipped where its estimated peak (EAGER_PEAK_CUBES cubes) would exceed this."""
EAGER_PEAK_CUBES = 7
"""Measured: eager's forward+backward peaks near 6-7x the size of one (B, B, D) cube."""


def cube_bytes(M: int, D: int, dtype=torch.float32) -> int:
    """Size of one (M, M, D) cube of ``dtype``."""
    return M * M * D * torch.empty((), dtype=dtype).element_size()


def eager_too_big(M: int, D: int, dtype=torch.float32) -> bool:
    """True where eager's cubes would need more than EAGER_MEMORY_LIMIT bytes."""
    return EAGER_PEAK_CUBES * cube_bytes(M, D, dtype) > EAGER_MEMORY_LIMIT


def stratified_log_weights(batch_size: int, dataset_size: int = DATASET_SIZE, *,
                           dtype=torch.float32, device=None) -> torch.Tensor:
    """Dense (B, B) log-weights of the stratified estimator: log(1/N) on the diagonal."""
    B, N = batch_size, dataset_size
    other = math.log(N - 1) - math.log(N) - math.log(B - 1)
    log_w = torch.full((B, B), other, dtype=dtype, device=device)
    log_w.fill_diagonal_(-math.log(N))
    return log_w


def eager_tc_weighted(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor,
                      log_w: torch.Tensor) -> torch.Tensor:
    """Total correlation from the materialised cube.

    Args:
        z: (B, D) samples; mu, logvar: (B, D) components; log_w: (B, B) log-weights (row i = query).
    Returns:
        Scalar: mean_i [ logsumexp_j(log_w[i,j] + sum_d C[i,j,d]) - sum_d logsumexp_j(log_w[i,j] + C[i,j,d]) ]
        where C (B, B, D) = log N(z[i,d]; mu[j,d], exp(logvar[j,d])).
    """
    diff = z.unsqueeze(1) - mu.unsqueeze(0)                                  # (B, B, D)
    cube = -0.5 * (LOG_2PI + logvar.unsqueeze(0) + diff.pow(2) * torch.exp(-logvar).unsqueeze(0))
    log_qz = torch.logsumexp(log_w + cube.sum(2), dim=1)                     # (B,)
    log_qzd = torch.logsumexp(log_w.unsqueeze(2) + cube, dim=1)              # (B, D)
    return (log_qz - log_qzd.sum(1)).mean()


def eager(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Naive PyTorch stratified TC: builds the (B, B) weights and the (B, B, D) cube."""
    log_w = stratified_log_weights(z.shape[0], dtype=z.dtype, device=z.device)
    return eager_tc_weighted(z, mu, logvar, log_w)


def make_compiled() -> Peer:
    """A fresh ``torch.compile`` of :func:`eager` (static shapes, one graph, no fallbacks).

    Resets dynamo's caches first so that benchmarking many shapes in one process never hits the
    recompile limit (past which dynamo would silently run the eager function instead).
    """
    torch._dynamo.reset()
    return torch.compile(eager, dynamic=False, fullgraph=True)


def fused(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """tcestim's fused kernel (structured weights, no cube)."""
    return tcestim.total_correlation(z, mu, logvar, dataset_size=DATASET_SIZE, estimator="stratified")


def keops_available() -> bool:
    """True when pykeops imports (it is an optional peer; nothing is installed for it)."""
    try:
        import pykeops  # noqa: F401
    except Exception:  # ImportError, or a broken install that fails while loading
        return False
    return True


def keops(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Stratified TC with pykeops LazyTensors: the cube stays symbolic (one reduction per d).

    The self/other weights are expressed through the indicator [i == j] on float row indices.
    """
    from pykeops.torch import LazyTensor

    B, D = z.shape
    N = DATASET_SIZE
    log_self = -math.log(N)
    log_other = math.log(N - 1) - math.log(N) - math.log(B - 1)
    index = torch.arange(B, dtype=z.dtype, device=z.device).unsqueeze(1)      # (B, 1)
    same = (0.5 - (LazyTensor(index[:, None, :]) - LazyTensor(index[None, :, :])).abs()).step()
    log_w = log_other + (log_self - log_other) * same                        # symbolic (B, B)

    z_i = LazyTensor(z[:, None, :])                                          # (B, 1, D)
    mu_j = LazyTensor(mu[None, :, :])                                        # (1, B, D)
    prec_j = LazyTensor(torch.exp(-logvar)[None, :, :])
    offset_j = LazyTensor((-0.5 * (LOG_2PI + logvar))[None, :, :])
    cube = offset_j - 0.5 * (z_i - mu_j).square() * prec_j                   # symbolic (B, B, D)

    log_qz = (log_w + cube.sum()).logsumexp(dim=1).squeeze(1)                # (B,)
    log_qzd = torch.cat([(log_w + cube[d]).logsumexp(dim=1) for d in range(D)], dim=1)  # (B, D)
    return (log_qz - log_qzd.sum(1)).mean()


PEER_NAMES = ("eager", "compile", "fused") + (("keops",) if keops_available() else ())
"""Names of the available peers, in table order."""


def get_peer(name: str) -> Peer:
    """The peer called ``name``; "compile" gives a freshly compiled function (see make_compiled)."""
    if name not in PEER_NAMES:
        raise ValueError(f"unknown or unavailable peer {name!r}; available: {PEER_NAMES}")
    if name == "compile":
        return make_compiled()
    return {"eager": eager, "fused": fused, "keops": keops}[name]
