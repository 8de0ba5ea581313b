"""Sample-only total correlation: the Kraskov-Stögbauer-Grassberger kNN estimator.

For codes without a Gaussian encoder (or to check one). With the max-norm distance eps_i from
z_i to its k-th neighbour in the joint space and n_d(i) the number of points strictly within eps_i
of z_i along dimension d,

    TC = psi(k) + (D - 1) psi(N) - mean_i sum_d psi(n_d(i) + 1)

(Kraskov et al. 2004, estimator 1, generalised to D variables). Biased for large D and strong
dependence; consistent as N grows.
"""
from __future__ import annotations

import numpy as np
import torch

from tcestim._validation import check_int, check_matrix


def knn_total_correlation(z, *, k: int = 3) -> torch.Tensor:
    """KSG estimate of TC from samples z (N, D), in nats (a 0-d float64 tensor; not differentiable).

    Needs SciPy (``pip install scipy``). Ties (duplicate values) bias the counts: add tiny
    noise to discrete codes first.

    Example:
        >>> import torch
        >>> from tcestim.baselines import knn_total_correlation
        >>> independent = torch.randn(2000, 2, generator=torch.Generator().manual_seed(0))
        >>> abs(float(knn_total_correlation(independent))) < 0.05
        True
    """
    try:
        from scipy.spatial import cKDTree
        from scipy.special import digamma
    except ImportError as error:  # pragma: no cover - scipy is installed in tests
        raise ImportError("knn_total_correlation needs SciPy: pip install scipy") from error
    z = check_matrix("z", z, "(N, D)")
    samples = z.detach().cpu().double().numpy()
    N, D = samples.shape
    k = check_int("k", k, minimum=1, maximum=N - 1)
    distances, _ = cKDTree(samples).query(samples, k=k + 1, p=np.inf)
    eps = distances[:, k]
    total = 0.0
    for d in range(D):
        column = np.sort(samples[:, d])
        below = np.searchsorted(column, samples[:, d] - eps, side="right")
        above = np.searchsorted(column, samples[:, d] + eps, side="left")
        counts = np.maximum(above - below - 1, 0)  # strictly inside, self excluded
        total += digamma(counts + 1).mean()
    return torch.tensor(float(digamma(k) + (D - 1) * digamma(N) - total), dtype=torch.float64)
