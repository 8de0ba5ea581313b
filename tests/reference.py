"""Independent float64 reference implementations for the tests (naive NumPy, no tcestim code).

Everything here is written from DESIGN.md's formulas directly: the full cube is materialised and
reduced with a max-shifted logsumexp. It is slow and only meant for small sizes.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

LOG_2PI = math.log(2 * math.pi)


def to_numpy(t) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    return np.squeeze(m, axis=axis) + np.log(np.sum(np.exp(x - m), axis=axis))


def cube(z, mu, logvar) -> np.ndarray:
    """(M, K, D) array of log N(z_id; mu_jd, exp(logvar_jd))."""
    z, mu, logvar = (np.asarray(a, dtype=np.float64) for a in (z, mu, logvar))
    diff = z[:, None, :] - mu[None, :, :]
    return -0.5 * (LOG_2PI + logvar[None] + diff ** 2 * np.exp(-logvar[None]))


def mixture_logdensity(z, mu, logvar, log_weights):
    """(log_qz (M,), log_qzd (M, D)) for an (M, K) natural-log weight matrix."""
    c = cube(z, mu, logvar)
    lw = np.asarray(log_weights, dtype=np.float64)
    return logsumexp(lw + c.sum(-1), axis=1), logsumexp(lw[:, :, None] + c, axis=1)


def structured_matrix(M: int, K: int, log_self: float, log_next: float, log_other: float) -> np.ndarray:
    """Dense (M, K) form of the structured weights: self on j == i, next on j == (i+1) mod M."""
    w = np.full((M, K), log_other, dtype=np.float64)
    for i in range(M):
        nxt = (i + 1) % M
        if nxt < K:
            w[i, nxt] = log_next
        if i < K:
            w[i, i] = log_self
    return w


def estimator_weight_matrix(name: str, B: int, N: int) -> np.ndarray:
    """(B, B) weights (not logs) of each estimator, written out from DESIGN.md section 3."""
    if name == "mws":
        return np.full((B, B), 1.0 / (N * B))
    if name == "stratified":
        w = np.full((B, B), (N - 1) / (N * (B - 1)))
        np.fill_diagonal(w, 1.0 / N)
        return w
    if name == "mss":
        w = np.full((B, B), 1.0 / (B - 1))
        for i in range(B):
            w[i, (i + 1) % B] = (N - B + 1) / (N * (B - 1))
            w[i, i] = 1.0 / N
        return w
    if name == "mss-legacy":
        # Chen et al.'s reference code: strides of B over the flattened matrix hit column 0 and 1.
        w = np.full((B, B), 1.0 / (B - 1))
        strat = (N - B + 1) / (N * (B - 1))
        for r in range(B):
            w[r, 0] = 1.0 / N
            w[r, 1 % B] = strat if B > 1 else w[r, 1 % B]
        w[B - 2, 0] = strat
        return w
    raise ValueError(name)


def decomposition(z, mu, logvar, name: str, N: int):
    """Per-sample (mi, tc, dimkl, log_qzx, log_qz, log_qzd, log_pz) with a standard normal prior."""
    z, mu, logvar = (np.asarray(a, dtype=np.float64) for a in (z, mu, logvar))
    B = z.shape[0]
    lqz, lqzd = mixture_logdensity(z, mu, logvar, np.log(estimator_weight_matrix(name, B, N)))
    lqzx = (-0.5 * (LOG_2PI + logvar + (z - mu) ** 2 * np.exp(-logvar))).sum(1)
    lpzd = -0.5 * (LOG_2PI + z ** 2)
    return dict(mi=lqzx - lqz, tc=lqz - lqzd.sum(1), dimkl=(lqzd - lpzd).sum(1), log_qzx=lqzx,
                log_qz=lqz, log_qzd=lqzd, log_pz=lpzd.sum(1))


def jackknife_row(log_own, log_others, population, order=2):
    """Naive jackknife of log(e^log_own + sum_k e^log_others_k): explicit leave-one-out and
    leave-two-out loops.

    log_others holds the n other terms already weighted for n others; an estimate from m kept
    others rescales them by n / m. The estimates from m = n, n - 1 (each one left out, averaged)
    and n - 2 (each pair left out, averaged) are extrapolated to x = 0 in x_m = 1/m - 1/population:
    linearly from the first two (order 1) or quadratically from all three (order 2). No
    correction when n >= population.
    """
    log_others = np.asarray(log_others, dtype=np.float64)
    n = len(log_others)
    order = min(order, n - 1)

    def estimate(left_out):
        kept = [k for k in range(n) if k not in left_out]
        return np.logaddexp.reduce(np.concatenate([[log_own], np.log(n / len(kept)) + log_others[kept]]))

    theta = estimate(())
    if n >= population:
        return theta
    means = [theta, np.mean([estimate((k,)) for k in range(n)])]
    if order == 2:
        means.append(np.mean([estimate(pair) for pair in itertools.combinations(range(n), 2)]))
    xs = [1.0 / m - 1.0 / population for m in (n, n - 1, n - 2)[: order + 1]]
    lagrange = [np.prod([-xs[j] / (xs[i] - xs[j]) for j in range(len(xs)) if j != i]) for i in range(len(xs))]
    return sum(w * m for w, m in zip(lagrange, means))


def jackknife_stratified(z, components_mu, components_logvar, N, order=2):
    """Naive jackknife of the stratified log-densities (:func:`jackknife_row` per query and target).

    Component i is query i's own, weighted 1/N; every other component weighs (N - 1) / (N m) when
    m others are used, a sample of the N - 1 other data points.
    """
    c = cube(z, components_mu, components_logvar)  # (B, K, D)
    B, K, D = c.shape
    n = K - 1
    out_joint, out_marg = np.empty(B), np.empty((B, D))
    for i in range(B):
        others = [k for k in range(K) if k != i]
        for target, values in ((None, c[i].sum(-1)), *((d, c[i, :, d]) for d in range(D))):
            value = jackknife_row(values[i] - np.log(N), np.log((N - 1) / (N * n)) + values[others], N - 1, order)
            if target is None:
                out_joint[i] = value
            else:
                out_marg[i, target] = value
    return out_joint, out_marg
