"""Log-densities of a diagonal-Gaussian mixture at query points: the hot path of every estimator.

    log_qz[i]    = logsumexp_j( logw[i,j] + sum_d log N(z[i,d]; mu[j,d], exp(logvar[j,d])) )
    log_qzd[i,d] = logsumexp_j( logw[i,j] + log N(z[i,d]; mu[j,d], exp(logvar[j,d])) )

The fused kernels never store the (M, K, D) cube of log N terms.
"""
from __future__ import annotations

import math
import numbers

import torch

from tcestim._ops import mixture_logdensity
from tcestim._validation import check_matrix, check_same_dtype_device, compute_dtype
from tcestim.weights import StructuredLogWeights


def _checked_structured(values) -> StructuredLogWeights:
    weights = StructuredLogWeights(*(float(w) for w in values))
    if any(math.isnan(w) or w == math.inf for w in weights):
        raise ValueError(f"log_weights must be finite or -inf (a zero weight), got {tuple(weights)}")
    return weights


def _check_representable(weights: StructuredLogWeights, dtype: torch.dtype) -> None:
    """A finite log-weight too large for the compute dtype would become +inf there (every output NaN)."""
    largest = torch.finfo(dtype).max
    if any(math.isfinite(w) and abs(w) > largest for w in weights):
        raise ValueError(f"log_weights must be representable in {dtype} (|w| <= {largest:.3g}) or -inf, "
                         f"got {tuple(weights)}")


def _check_dense_values(weights: torch.Tensor) -> None:
    """NaN or +inf in a dense (M, K) matrix (after the cast to the compute dtype). This reads the
    values back (one device sync), so it is skipped while torch.compile traces."""
    if torch.compiler.is_compiling():
        return
    bad = torch.isnan(weights) | torch.isposinf(weights)
    if bool(bad.any()):
        i, j = (int(x) for x in bad.nonzero()[0])
        raise ValueError(f"log_weights must be finite or -inf (a zero weight) in {weights.dtype}, got "
                         f"{float(weights[i, j])} at ({i}, {j})")


def _as_log_weights(log_weights, M: int, K: int):
    if log_weights is None:
        return StructuredLogWeights.constant(-math.log(K))
    if isinstance(log_weights, StructuredLogWeights):
        return _checked_structured(log_weights)
    if isinstance(log_weights, numbers.Real) and not isinstance(log_weights, bool):
        return _checked_structured([log_weights] * 3)
    if isinstance(log_weights, torch.Tensor):
        if log_weights.shape != (M, K):
            raise ValueError(
                f"log_weights must have shape (M, K) = ({M}, {K}), got {tuple(log_weights.shape)}")
        if not log_weights.is_floating_point():
            raise TypeError(f"log_weights must have a floating dtype, got {log_weights.dtype}")
        return log_weights
    raise TypeError("log_weights must be None, a float, a StructuredLogWeights or an (M, K) tensor, "
                    f"got {type(log_weights).__name__}")


def log_aggregate_posterior(z, mu, logvar, *, log_weights=None):
    """Joint and per-dimension log-densities of a weighted diagonal-Gaussian mixture at ``z``.

    Args:
        z: (M, D) query points.
        mu, logvar: (K, D) component means and log-variances.
        log_weights: natural-log mixture weights of row i on component j. One of
            ``None`` (uniform, 1/K: the aggregate posterior of K stored encodings),
            a float (the same log-weight everywhere),
            :class:`tcestim.StructuredLogWeights` (self / next / other, no matrix), or
            an (M, K) tensor (dense; slower, and differentiable).
            Every weight must be finite or -inf in the compute dtype; NaN, +inf and values that
            overflow it raise ValueError (a dense matrix is checked on the device: one sync).

    Returns:
        ``(log_qz, log_qzd)``: (M,) joint log q(z_i) and (M, D) marginal log q(z_id), in nats.
        float16/bfloat16 inputs are computed and returned in float32.

    Example:
        >>> import math, torch, tcestim
        >>> z, mu, logvar = torch.zeros(1, 2), torch.zeros(3, 2), torch.zeros(3, 2)
        >>> log_qz, log_qzd = tcestim.log_aggregate_posterior(z, mu, logvar)   # 3 copies of N(0, I)
        >>> math.isclose(float(log_qz), -math.log(2 * math.pi), rel_tol=1e-6), tuple(log_qzd.shape)
        (True, (1, 2))
    """
    check_matrix("z", z, "(M, D)")
    check_matrix("mu", mu, "(K, D)")
    check_matrix("logvar", logvar, "(K, D)")
    if logvar.shape != mu.shape:
        raise ValueError(f"logvar must have the shape of mu {tuple(mu.shape)}, got {tuple(logvar.shape)}")
    if z.shape[1] != mu.shape[1]:
        raise ValueError(f"z must have D = {mu.shape[1]} columns like mu, got shape {tuple(z.shape)}")
    check_same_dtype_device(z=z, mu=mu, logvar=logvar)
    weights = _as_log_weights(log_weights, z.shape[0], mu.shape[0])
    dtype = compute_dtype(z.dtype)
    if isinstance(weights, torch.Tensor):
        if weights.device != z.device:
            raise ValueError(f"log_weights must be on the device of z ({z.device}), got {weights.device}")
        weights = weights.to(dtype)
        _check_dense_values(weights)
    else:
        _check_representable(weights, dtype)
    return mixture_logdensity(z.to(dtype), mu.to(dtype), logvar.to(dtype), weights)
