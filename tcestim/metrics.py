"""Disentanglement and representation metrics: MIG (two estimators), Hoyer sparsity, TC of means vs samples.

**MIG** (Chen et al. 2018, eq. 4): for ground-truth factors v_1..v_K and latents z_1..z_D,

    MIG = (1/K) sum_k ( I(z_{j(k)}; v_k) - max_{j != j(k)} I(z_j; v_k) ) / H(v_k),   j(k) = argmax_j I(z_j; v_k)

in [0, 1] (nats cancel). Two ways to get I(z_j; v_k):

- ``method="chen"``: the estimator of Chen et al.'s appendix (eq. 8) from the encoder's densities,
  I(z_j; v_k) = H(z_j) - H(z_j | v_k) = E_{p(v) p(n|v) q(z_j|n)} [ log q(z_j | v) - log q(z_j) ],
  with q(z_j) = (1/N) sum_n q(z_j|n) and q(z_j | v) = (1/|X_v|) sum_{n in X_v} q(z_j|n) the marginal
  and conditional aggregate posteriors (1-D mixtures, all D at once through the fused kernel's
  per-dimension output ``log_qzd`` of :func:`tcestim.log_aggregate_posterior`). The expectation is
  stratified over the values v (weights p(v), the empirical frequencies) and uses the same samples
  z ~ q(z|n) for both terms, so a code that carries no information scores exactly 0.
- ``method="discrete"``: disentanglement_lib's estimator. Each dimension of mu is discretised into
  ``num_bins`` equal-width bins over its range and the plug-in discrete MI with each factor is used.

H(v_k) is the entropy of the factor's empirical distribution; a constant factor (H = 0) is left
out of the mean (its gap is NaN).
"""
from __future__ import annotations

import math
import operator
import warnings
from typing import NamedTuple, Optional, Sequence

import numpy as np
import torch

from tcestim.mixture import log_aggregate_posterior

__all__ = ["MIG", "MIGDetails", "TCOfMeansVsSamples", "mig", "mutual_information_matrix", "hoyer_sparsity",
           "tc_of_means_vs_samples", "discrete_entropy", "discrete_mutual_information"]

METHODS = ("chen", "discrete")


class MIGDetails(NamedTuple):
    """What the MIG is made of.

    Attributes:
        mi: (D, K) float64, I(z_j; v_k) in nats.
        factor_entropy: (K,) float64, H(v_k) in nats.
        gaps: (K,) float64, the normalised gap (top1 - top2) / H(v_k); NaN for constant factors.
        best_latent: (K,) int64, j(k) = argmax_j I(z_j; v_k).
        method: "chen" or "discrete".

    Example:
        >>> import torch
        >>> factors = torch.arange(100) % 2
        >>> details = mig(torch.stack([factors.double(), torch.zeros(100, dtype=torch.float64)], 1),
        ...               None, factors, method="discrete").details
        >>> details.mi.shape, details.best_latent.tolist()
        (torch.Size([2, 1]), [0])
    """

    mi: torch.Tensor
    factor_entropy: torch.Tensor
    gaps: torch.Tensor
    best_latent: torch.Tensor
    method: str


class MIG(NamedTuple):
    """The result of :func:`mig`: ``score`` (0-d float64 tensor in [0, 1]) and its :class:`MIGDetails`.

    Unpacks as ``score, details = mig(...)``.

    Example:
        >>> import torch
        >>> factors = torch.arange(100) % 2
        >>> result = mig(torch.stack([factors.double(), torch.zeros(100, dtype=torch.float64)], 1),
        ...              None, factors, method="discrete")
        >>> float(result.score)                  # latent 0 is the factor, latent 1 carries nothing
        1.0
    """

    score: torch.Tensor
    details: MIGDetails


class TCOfMeansVsSamples(NamedTuple):
    """The result of :func:`tc_of_means_vs_samples`, 0-d tensors in nats.

    Attributes:
        tc_of_means: TC of N(0, Cov(mu)).
        tc_of_samples: the stratified minibatch estimate of the aggregate posterior's TC at z.
        difference: tc_of_samples - tc_of_means.

    Example:
        >>> import torch
        >>> mu = torch.randn(100, 3)
        >>> r = tc_of_means_vs_samples(mu, mu, torch.full_like(mu, -4.6))
        >>> r._fields
        ('tc_of_means', 'tc_of_samples', 'difference')
    """

    tc_of_means: torch.Tensor
    tc_of_samples: torch.Tensor
    difference: torch.Tensor

    # The 0.1 result was a dict: its reads keep working for one release, with a warning.
    def __getitem__(self, key):
        if isinstance(key, str):
            _dict_use_deprecated(f"[{key!r}]", f".{key}")
            return getattr(self, key)
        return tuple.__getitem__(self, key)

    def __contains__(self, key):
        if isinstance(key, str):
            _dict_use_deprecated(" in ...", "._fields")
            return key in self._fields
        return tuple.__contains__(self, key)

    def keys(self):
        _dict_use_deprecated(".keys()", "._fields")
        return self._fields

    def items(self):
        _dict_use_deprecated(".items()", "._asdict().items()")
        return self._asdict().items()


def _dict_use_deprecated(used: str, instead: str) -> None:
    warnings.warn(f"tc_of_means_vs_samples(...){used} is deprecated since tcestim 0.2: the result is a named "
                  f"tuple, use {instead}", DeprecationWarning, stacklevel=3)


# ----------------------------------------------------------------------------------------------
# input handling


def _as_factor_matrix(factors, n: int, factor_sizes: Optional[Sequence[int]]) -> np.ndarray:
    f = factors.detach().cpu().numpy() if isinstance(factors, torch.Tensor) else np.asarray(factors)
    if f.ndim == 1:
        f = f[:, None]
    if f.ndim != 2 or f.shape[0] != n:
        raise ValueError(f"factors must have shape (N, K) with N = {n} rows like mu, got {f.shape}")
    if f.shape[1] == 0:
        raise ValueError("factors must have at least one column (K >= 1)")
    if f.dtype.kind == "f":
        if not np.all(np.isfinite(f)) or not np.all(f == np.round(f)):
            raise TypeError("factors must be integer labels (integral values)")
    elif f.dtype.kind not in "iub":
        raise TypeError(f"factors must be integer labels, got dtype {f.dtype}")
    f = f.astype(np.int64)
    if factor_sizes is not None:
        sizes = [operator.index(s) for s in factor_sizes]
        if len(sizes) != f.shape[1]:
            raise ValueError(f"factor_sizes has {len(sizes)} entries but factors has K = {f.shape[1]} columns")
        for k, s in enumerate(sizes):
            if f[:, k].min() < 0 or f[:, k].max() >= s:
                raise ValueError(f"factor {k} must take values in [0, {s}) (factor_sizes), got "
                                 f"[{f[:, k].min()}, {f[:, k].max()}]")
    return f


def _check_code(name: str, t) -> torch.Tensor:
    if not isinstance(t, torch.Tensor):
        t = torch.as_tensor(np.asarray(t))
    if not t.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {t.dtype}")
    if t.dim() != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ValueError(f"{name} must be a non-empty (N, D) matrix, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite")
    return t.detach()


def _labels(column: np.ndarray):
    """(inverse labels 0..V-1, counts) of a 1-D array."""
    _, inverse, counts = np.unique(column, return_inverse=True, return_counts=True)
    return inverse.reshape(-1), counts


def discrete_entropy(labels) -> float:
    """Plug-in entropy (nats) of the empirical distribution of a 1-D label array.

    Example:
        >>> round(discrete_entropy([0, 1, 0, 1]), 6)        # log 2
        0.693147
    """
    _, counts = _labels(np.asarray(labels).reshape(-1))
    p = counts / counts.sum()
    return float(-(p * np.log(p)).sum())


def discrete_mutual_information(a, b) -> float:
    """Plug-in mutual information (nats) between two 1-D label arrays of one length (sklearn's
    ``mutual_info_score``).

    Example:
        >>> a = [0, 1, 0, 1, 2, 2]
        >>> round(discrete_mutual_information(a, a), 6) == round(discrete_entropy(a), 6)
        True
        >>> discrete_mutual_information([0, 0, 1, 1], [0, 1, 0, 1])
        0.0
    """
    a, b = np.asarray(a).reshape(-1), np.asarray(b).reshape(-1)
    if a.shape != b.shape:
        raise ValueError(f"label arrays must have one length, got {a.shape} and {b.shape}")
    ia, ca = _labels(a)
    ib, cb = _labels(b)
    joint = np.bincount(ia * len(cb) + ib, minlength=len(ca) * len(cb)).reshape(len(ca), len(cb))
    n = a.shape[0]
    nz = joint > 0
    pab = joint[nz] / n
    outer = (ca[:, None] * cb[None, :])[nz] / (n * n)
    return float(max(0.0, (pab * (np.log(pab) - np.log(outer))).sum()))


def _histogram_discretize(code: np.ndarray, num_bins: int) -> np.ndarray:
    """Per column: bin index in [0, num_bins) of num_bins equal-width bins over the column's range
    (disentanglement_lib's ``_histogram_discretize``)."""
    out = np.empty(code.shape, dtype=np.int64)
    for j in range(code.shape[1]):
        edges = np.histogram_bin_edges(code[:, j], bins=num_bins)
        out[:, j] = np.digitize(code[:, j], edges[1:-1])
    return out


# ----------------------------------------------------------------------------------------------
# MI estimators


def _mi_discrete(mu: torch.Tensor, f: np.ndarray, num_bins: int) -> torch.Tensor:
    binned = _histogram_discretize(mu.to(torch.float64).cpu().numpy(), num_bins)
    D, K = binned.shape[1], f.shape[1]
    mi = np.zeros((D, K))
    for j in range(D):
        for k in range(K):
            mi[j, k] = discrete_mutual_information(binned[:, j], f[:, k])
    return torch.from_numpy(mi)


def _mi_chen(mu, logvar, f: np.ndarray, samples_per_point: int, num_samples: int,
             max_components: Optional[int], generator: torch.Generator, chunk_size: int) -> torch.Tensor:
    N, D = mu.shape
    K = f.shape[1]
    dtype = torch.float64 if mu.dtype == torch.float64 else torch.float32
    mu, logvar = mu.to(dtype), logvar.to(dtype)
    device = mu.device
    # One sample set z ~ q(z|n) (samples_per_point per point), shared by every term.
    owner = torch.arange(N).repeat_interleave(samples_per_point)
    gdev = generator.device
    eps = torch.randn(owner.shape[0], D, generator=generator, dtype=dtype, device=gdev).to(device)
    z = mu[owner.to(device)] + torch.exp(0.5 * logvar[owner.to(device)]) * eps
    owner_np = owner.numpy()
    # Components of the aggregate posteriors: all points, or a fixed random subset.
    if max_components is not None and max_components < N:
        comp_mask = np.zeros(N, dtype=bool)
        comp_mask[torch.randperm(N, generator=generator, device=gdev)[:max_components].cpu().numpy()] = True
    else:
        comp_mask = np.ones(N, dtype=bool)

    def log_mixture(queries: np.ndarray, components: np.ndarray) -> torch.Tensor:
        """(len(queries), D) log (1/|C|) sum_{n in C} q(z_qd | n) for sample rows ``queries``."""
        comp = torch.from_numpy(components).to(device)
        cm, cl = mu[comp], logvar[comp]
        parts = []
        for start in range(0, len(queries), chunk_size):
            q = torch.from_numpy(queries[start:start + chunk_size]).to(device)
            parts.append(log_aggregate_posterior(z[q], cm, cl)[1])
        return torch.cat(parts)

    # Stratified query sets: for factor k and value v, up to num_samples samples of points with v_k = v.
    plan = []   # (k, weight p(v), query rows, component points)
    for k in range(K):
        inverse, counts = _labels(f[:, k])
        for v, count in enumerate(counts):
            members = np.flatnonzero(inverse == v)
            rows = np.flatnonzero(inverse[owner_np] == v)
            if rows.size > num_samples:
                pick = torch.randperm(rows.size, generator=generator, device=gdev)[:num_samples].cpu().numpy()
                rows = np.sort(rows[pick])
            components = members[comp_mask[members]]
            if components.size == 0:   # no component left for this value: fall back on its members
                components = members
            plan.append((k, count / N, rows, components))
    used = np.unique(np.concatenate([rows for _, _, rows, _ in plan]))
    marginal = torch.empty(z.shape[0], D, dtype=dtype, device=device)
    marginal[torch.from_numpy(used).to(device)] = log_mixture(used, np.flatnonzero(comp_mask))

    mi = torch.zeros(D, K, dtype=torch.float64)
    for k, weight, rows, components in plan:
        conditional = log_mixture(rows, components)
        diff = conditional - marginal[torch.from_numpy(rows).to(device)]
        mi[:, k] += weight * diff.to(torch.float64).mean(0).cpu()
    return mi


def mutual_information_matrix(mu, logvar, factors, *, method: str = "chen", factor_sizes=None,
                              num_bins: int = 20, samples_per_point: int = 1, num_samples: int = 10000,
                              max_components: Optional[int] = None,
                              generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """(D, K) float64 estimate of I(z_j; v_k) in nats; arguments as in :func:`mig`.

    Example:
        >>> import torch
        >>> factors = torch.stack([torch.arange(60) % 3, torch.arange(60) % 2], 1)   # K = 2 factors
        >>> mu = torch.randn(60, 4, dtype=torch.float64)
        >>> mutual_information_matrix(mu, None, factors, method="discrete").shape    # (D, K)
        torch.Size([4, 2])
    """
    return _mig_parts(mu, logvar, factors, method=method, factor_sizes=factor_sizes, num_bins=num_bins,
                      samples_per_point=samples_per_point, num_samples=num_samples,
                      max_components=max_components, generator=generator)[0]


def _mig_parts(mu, logvar, factors, *, method, factor_sizes, num_bins, samples_per_point, num_samples,
               max_components, generator, chunk_size=4096):
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    mu = _check_code("mu", mu)
    f = _as_factor_matrix(factors, mu.shape[0], factor_sizes)
    if method == "discrete":
        num_bins = operator.index(num_bins)
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        return _mi_discrete(mu, f, num_bins), f
    if logvar is None:
        raise ValueError('method="chen" needs logvar (the encoder\'s log-variances), got None')
    logvar = _check_code("logvar", logvar)
    if logvar.shape != mu.shape:
        raise ValueError(f"logvar must have the shape of mu {tuple(mu.shape)}, got {tuple(logvar.shape)}")
    if logvar.device != mu.device:
        raise ValueError(f"logvar must be on the device of mu ({mu.device}), got {logvar.device}")
    samples_per_point, num_samples = operator.index(samples_per_point), operator.index(num_samples)
    if samples_per_point < 1 or num_samples < 1:
        raise ValueError(f"samples_per_point and num_samples must be >= 1, got {samples_per_point}, "
                         f"{num_samples}")
    if max_components is not None:
        max_components = operator.index(max_components)
        if max_components < 1:
            raise ValueError(f"max_components must be >= 1 or None, got {max_components}")
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    return _mi_chen(mu, logvar, f, samples_per_point, num_samples, max_components, generator, chunk_size), f


def mig(mu, logvar, factors, *, method: str = "chen", factor_sizes: Optional[Sequence[int]] = None,
        num_bins: int = 20, samples_per_point: int = 1, num_samples: int = 10000,
        max_components: Optional[int] = None, generator: Optional[torch.Generator] = None):
    """Mutual Information Gap of an encoder's code with respect to known factors.

    Args:
        mu, logvar: (N, D) encoder means and log-variances of the N data points (``logvar`` is
            unused, and may be None, for ``method="discrete"``).
        factors: (N, K) integer factor labels (tensor or array; a 1-D array is one factor).
        method: ``"chen"`` (Chen et al.'s density-based estimator) or ``"discrete"``
            (disentanglement_lib: mu binned into ``num_bins`` equal-width bins).
        factor_sizes: optional number of values of each factor, to check the labels.
        samples_per_point: ("chen") samples z ~ q(z|n) drawn per point.
        num_samples: ("chen") at most this many samples per factor value (Chen et al. use 10 000).
        max_components: ("chen") use a fixed random subset of this many points as the mixture
            components of q(z_j) and q(z_j | v) (None: all N). Cost, in kernel terms: the marginal
            q(z_j) at every query used (at most N * samples_per_point) times the components times D,
            plus, per factor value v, its queries times its components times D. For a large data set
            (dSprites, N = 737 280) pass ``max_components`` (say 20 000) or encode a subsample.
        generator: randomness for the samples and subsets; None means a fixed seed (deterministic).

    Chen et al. (2018)'s protocol for dSprites, as their Figure 1 reports it: ``method="chen"``
    (mutual information from encoder samples, one per point, against all N encodings: leave
    ``max_components=None``), each gap normalised by the factor's entropy (always done here), and the
    factors scale, orientation, x and y only (pass ``factors[:, 1:]``: shape is left out). The
    training command reports it as ``mig_paper``.

    Returns:
        :class:`MIG` ``(score, details)``: the MIG as a 0-d float64 tensor and :class:`MIGDetails` (the
        (D, K) MI matrix, H(v_k), the per-factor normalised gaps and the best latent of each factor).

    Example:
        >>> import torch
        >>> factors = torch.arange(200) % 4                       # one factor with 4 values
        >>> mu = torch.stack([factors.double(), torch.randn(200, dtype=torch.float64)], 1)
        >>> score, details = mig(mu, torch.full_like(mu, -4.0), factors)
        >>> bool(score > 0.8), details.best_latent.tolist()
        (True, [0])
    """
    mi, f = _mig_parts(mu, logvar, factors, method=method, factor_sizes=factor_sizes, num_bins=num_bins,
                       samples_per_point=samples_per_point, num_samples=num_samples,
                       max_components=max_components, generator=generator)
    D, K = mi.shape
    entropy = torch.tensor([discrete_entropy(f[:, k]) for k in range(K)], dtype=torch.float64)
    top = torch.sort(mi, dim=0, descending=True).values
    second = top[1] if D > 1 else torch.zeros(K, dtype=torch.float64)
    constant = entropy <= 0
    gaps = torch.where(constant, torch.full_like(entropy, math.nan),
                       (top[0] - second) / torch.where(constant, torch.ones_like(entropy), entropy))
    if bool(constant.all()):
        raise ValueError("every factor is constant (H(v_k) = 0): MIG is undefined")
    return MIG(gaps[~constant].mean(), MIGDetails(mi, entropy, gaps, mi.argmax(0), method))


# ----------------------------------------------------------------------------------------------
# other metrics


def hoyer_sparsity(mu, *, normalise: bool = True) -> torch.Tensor:
    """Mean Hoyer sparsity of the rows of a code (Mathieu et al. 2019, appendix B; Hurley & Rickard 2008).

        Hoyer(a) = (sqrt(D) - ||a||_1 / ||a||_2) / (sqrt(D) - 1)   in [0, 1]: 0 dense, 1 one-hot

    With ``normalise`` (the paper's code) each dimension is first divided by its standard deviation
    over the N rows (unbiased), so a collapsed dimension does not count as sparsity; dimensions with
    zero spread are left as they are. All-zero rows (undefined) are left out of the mean.

    Args:
        mu: (N, D) code, D >= 2.

    Returns:
        The mean over rows, a 0-d float64 tensor.

    Example:
        >>> import torch
        >>> float(hoyer_sparsity(torch.eye(4), normalise=False))
        1.0
    """
    mu = _check_code("mu", mu).to(torch.float64)
    N, D = mu.shape
    if D < 2:
        raise ValueError(f"Hoyer sparsity needs D >= 2 dimensions, got shape {tuple(mu.shape)}")
    if normalise and N > 1:
        std = mu.std(0)
        mu = mu / torch.where(std > 0, std, torch.ones_like(std))
    l2 = mu.norm(dim=1)
    keep = l2 > 0
    if not bool(keep.any()):
        raise ValueError("every row of mu is zero: Hoyer sparsity is undefined")
    ratio = mu[keep].abs().sum(1) / l2[keep]
    root = math.sqrt(D)
    return ((root - ratio) / (root - 1)).mean()


def tc_of_means_vs_samples(z, mu, logvar, *legacy, dataset_size: Optional[int] = None) -> TCOfMeansVsSamples:
    """The two common "total correlation of a representation" numbers side by side (nats).

    - ``tc_of_means``: TC of N(0, Cov(mu)), a Gaussian fitted to the means
      (:func:`tcestim.gaussian_tc_of_means`, Locatello et al. 2019); needs B > D.
    - ``tc_of_samples``: the stratified minibatch estimate of KL(q(z) || prod_d q(z_d)) of the
      aggregate posterior at the samples z (:func:`tcestim.total_correlation`).

    They measure different things (a code can have TC_mean ~ 0 and large TC_sample, see the RTC-VAE
    paper).

    Args:
        z, mu, logvar: (B, D).
        dataset_size: keyword, as in :func:`tcestim.total_correlation` (None means N = B). Passing it
            as the fourth positional argument is deprecated.

    Returns:
        :class:`TCOfMeansVsSamples` of 0-d tensors (no gradient).

    Example:
        >>> import torch
        >>> mu = torch.randn(100, 3)
        >>> r = tc_of_means_vs_samples(mu + 0.1 * torch.randn_like(mu), mu, torch.full_like(mu, -4.6))
        >>> torch.allclose(r.difference, r.tc_of_samples - r.tc_of_means)
        True
    """
    from tcestim.estimators import total_correlation
    from tcestim.gaussian import gaussian_tc_of_means

    if legacy:
        if len(legacy) > 1 or dataset_size is not None:
            raise TypeError("tc_of_means_vs_samples() takes dataset_size as a keyword only")
        warnings.warn("tc_of_means_vs_samples(z, mu, logvar, dataset_size) is deprecated since tcestim 0.2: "
                      "pass dataset_size= as a keyword", DeprecationWarning, stacklevel=2)
        dataset_size = legacy[0]
    with torch.no_grad():
        means = gaussian_tc_of_means(mu)
        samples = total_correlation(z, mu, logvar, dataset_size=dataset_size, estimator="stratified")
    return TCOfMeansVsSamples(means, samples, samples - means.to(samples.dtype))
