"""Jackknife bias correction of the stratified log-density estimates (memory bank or batch).

For query i the stratified estimate is q_hat = a t_self + c_n sum_{k in others} t_k with a = 1/N and
c_m = (N - 1) / (N m) over the n "other" components (batch mates and bank), which are a sample drawn
without replacement from the P = N - 1 other data points. log q_hat is biased low (Jensen). Under
this sampling design the bias of theta_m (the estimate from m others) expands as

    E[theta_m] - log q = b1 x_m + b2 x_m^2 + O(x_m^3),    x_m = 1/m - 1/P,

(the third central moment of a without-replacement mean is proportional to x_m (x_m - 1/P), which
is again in that span). A uniformly random subset of the sample is a uniformly random subset of
the population, so the mean of the leave-one-out estimates theta_(k) is an unbiased estimate of
E[theta_{n-1}], and the mean of the leave-two-out estimates theta_(jk) one of E[theta_{n-2}].

* ``order=1``: the finite-population jackknife, linear extrapolation in x from m = n, n - 1 to
  x = 0: theta + (n - 1)(1 - n/P)(theta - mean_k theta_(k)). Removes b1.
* ``order=2`` (default): quadratic (Lagrange) extrapolation from m = n, n - 1, n - 2. Removes b1
  and b2. This matters when a few other components dominate q(z_i) (small D, narrow posteriors),
  where the first-order jackknife still leaves a few per cent of the TC.

Both give no correction when the others are the whole rest of the dataset (x_n = 0): then the
estimate is exact.

Numerics: everything runs in float64 on row chunks of the (B, K, D) cube, relative to the row's
largest term. The leave-one-out sums are exact (no subtraction from the total for the largest
terms). The mean over the n (n - 1) / 2 leave-two-out pairs is exact for pairs among the
``TOP_TERMS`` largest others and uses the log1p power series, through power sums, for the rest:
each pair's series ratio r is at most 2 / TOP_TERMS = 1/16 and the ratios sum to at most n, so
truncating after ``SERIES_TERMS`` = 7 terms errs by at most sum r^8 / 7 <= 6e-10 n nats over all
pairs; each pair enters the result with weight about (1 - n/P)^2 <= 1, so the result errs by less
than 3e-6 nats at n = 4352. Cost O(K) per output element.

Fused (CPU, the compiled kernels loaded, no torch.func transform): the cube is never stored. The
kernel ``tcestim::jackknife_sums`` (csrc/cpu/jackknife.h) returns, per query and target, the number
and indices of the "big" other terms (each more than 1/64 of the sum of all others but the largest;
at most 65) and the power sums u^1..u^8 of the others, relative to the largest; the kernel
``tcestim::jackknife_estimate`` (csrc/cpu/jackknife_estimate.cpp) then forms the estimate per query
and target in float64 from those sums and the big terms, recomputed here from their components: the
same formulas as above with the big terms in place of the ``TOP_TERMS`` largest. Every small term
is at most 1/64 of what any pair's series is expanded around, so the series (8 terms) err by less
than 1e-13 relative. Gradients: both kernels have hand-written backward kernels (the power sums': a
Horner polynomial per cube element in two sweeps, over query blocks and over component blocks; the
estimate's: per row); the big and own terms are differentiated here.
"""
from __future__ import annotations

import math

import torch

from tcestim import _ops
from tcestim.gaussian import log_normal_diag
from tcestim.weights import StructuredLogWeights, stratified_log_weights

_CHUNK_ELEMENTS = 1 << 21
TOP_TERMS = 32
SERIES_TERMS = 7


def _safe_log(x: torch.Tensor) -> torch.Tensor:
    """log(x) for x >= 0, -inf at 0 with a zero (not NaN) gradient there; NaN stays NaN."""
    zero = x == 0
    return torch.where(zero, torch.full_like(x, -math.inf), torch.log(torch.where(zero, torch.ones_like(x), x)))


def extrapolation_weights(n: int, population: int, order: int) -> tuple[float, float]:
    """(w1, w2) with theta_J = theta + w1 mean_k(theta_(k) - theta) + w2 mean_jk(theta_(jk) - theta).

    Lagrange weights at x = 0 of the points x_n, x_(n-1), x_(n-2), x_m = 1/m - 1/population,
    written with the closed-form differences so that nothing cancels.
    """
    if n >= population:
        return 0.0, 0.0
    x0 = 1.0 / n - 1.0 / population
    if order == 1:
        return -x0 * n * (n - 1), 0.0
    x2 = 1.0 / (n - 2) - 1.0 / population
    d10 = 1.0 / (n * (n - 1))          # x_(n-1) - x_n
    d21 = 1.0 / ((n - 1) * (n - 2))    # x_(n-2) - x_(n-1)
    d20 = 2.0 / (n * (n - 2))          # x_(n-2) - x_n
    x1 = 1.0 / (n - 1) - 1.0 / population
    w1 = -x0 * x2 / (d10 * d21)
    w2 = x0 * x1 / (d20 * d21)
    return w1, w2


class _PowerSums(torch.autograd.Function):
    """(sum_j v_j^1, ..., sum_j v_j^count) over the last dimension, stacked last; the backward is
    one Horner pass (d/dv sum_q g_q v^q = sum_q q g_q v^(q-1)) instead of a graph of count powers."""

    generate_vmap_rule = True

    @staticmethod
    def forward(v: torch.Tensor, count: int) -> torch.Tensor:
        sums, power = [], v
        for q in range(count):
            sums.append(power.sum(-1))
            if q + 1 < count:
                power = power * v
        return torch.stack(sums, -1)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[0])
        ctx.save_for_forward(inputs[0])
        ctx.count_for_jvp = inputs[1]

    @staticmethod
    def jvp(ctx, v_dot: torch.Tensor, _):
        (v,) = ctx.saved_tensors
        count = ctx.count_for_jvp
        sums, power = [], torch.ones_like(v)
        for q in range(1, count + 1):
            sums.append((q * power * v_dot).sum(-1))
            power = power * v
        return torch.stack(sums, -1)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (v,) = ctx.saved_tensors
        count = grad.shape[-1]
        coefficient = lambda q: (q * grad[..., q - 1]).unsqueeze(-1)  # noqa: E731
        polynomial = coefficient(count).expand_as(v)
        for q in range(count - 1, 0, -1):
            polynomial = polynomial * v + coefficient(q)
        return polynomial, None


class _FirstOrderOnly(torch.autograd.Function):
    """Identity on an input whose gradient refuses to be differentiated again: the jackknife's second
    derivatives are not reliable (they can be NaN or wrong), so ``create_graph=True`` followed by a
    second differentiation raises instead of returning them."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x: torch.Tensor) -> torch.Tensor:
        return x.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return _RefuseDifferentiation.apply(grad) if torch.is_grad_enabled() else grad

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor):
        return tangent


class _RefuseDifferentiation(torch.autograd.Function):
    generate_vmap_rule = True

    @staticmethod
    def forward(grad: torch.Tensor) -> torch.Tensor:
        return grad.clone()

    @staticmethod
    def setup_context(ctx, inputs, output):
        pass

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        raise RuntimeError(_SECOND_ORDER)

    @staticmethod
    def jvp(ctx, tangent: torch.Tensor):
        raise RuntimeError(_SECOND_ORDER)


_SECOND_ORDER = ("tcestim: jackknife=True gives first-order gradients only; its gradients cannot be differentiated "
                 "again (second derivatives, Hessians, gradient penalties through it)")


def _power_sums(v: torch.Tensor, count: int) -> list[torch.Tensor]:
    """[sum v^1, ..., sum v^count] over the last dimension."""
    return list(_PowerSums.apply(v, count).unbind(-1))


def _log1m_series(ratio: torch.Tensor, power_sums: list[torch.Tensor]) -> torch.Tensor:
    """sum_j log(1 - ratio v_j) from the power sums of v: -sum_q ratio^q p_q / q."""
    total, power = torch.zeros_like(ratio), ratio
    for q, p in enumerate(power_sums, start=1):
        total = total - power * p / q
        power = power * ratio
    return total


def _pair_power_sums(power_sums: list[torch.Tensor], count: int) -> list[torch.Tensor]:
    """[sum_{j<k} (v_j + v_k)^q for q = 1..] from the power sums p_q of v (p_0 = count)."""
    p = [torch.full_like(power_sums[0], float(count))] + power_sums
    out = []
    for q in range(1, len(power_sums) + 1):
        full = sum(math.comb(q, i) * p[i] * p[q - i] for i in range(q + 1))
        out.append(0.5 * (full - 2 ** q * p[q]))
    return out


def _row_means(log_a_self: torch.Tensor, log_c_others: torch.Tensor, with_pairs: bool):
    """theta = log(a_self + sum_k c_others_k) per row, the mean over k of theta_(k) - theta, and
    (with_pairs) the mean over pairs j < k of theta_(jk) - theta.

    log_a_self: (R,) log of the query's own weighted term; log_c_others: (R, n) log of the n
    weighted other terms, each already scaled by c_n. Float64 in, float64 out.
    """
    n = log_c_others.shape[1]
    top_log = torch.maximum(log_a_self, log_c_others.max(dim=1).values).detach()
    top_log = torch.where(torch.isfinite(top_log), top_log, torch.zeros_like(top_log))  # all -inf: z = +-inf
    log_a = log_a_self - top_log
    v = torch.exp(log_c_others - top_log[:, None])          # (R, n), largest entry <= 1
    total = v.sum(1)
    log_full = torch.logaddexp(log_a, _safe_log(total))
    theta = top_log + log_full

    # Leave-one-out: the sum without term k, exact for the largest terms.
    t = min(TOP_TERMS, n)
    top, top_index = v.topk(t, dim=1)                        # descending
    is_top = torch.zeros_like(v, dtype=torch.bool).scatter_(1, top_index, True)
    rest = v.masked_fill(is_top, 0.0)
    rest_total = rest.sum(1)
    others_of_top = top.unsqueeze(1).expand(-1, t, -1).masked_fill(
        torch.eye(t, dtype=torch.bool, device=v.device), 0.0).sum(-1)      # (R, t): top sum without i
    # The rest leave out a term at most 1/TOP_TERMS of the total: subtracting it loses nothing.
    without = (total[:, None] - v).scatter(1, top_index, others_of_top + rest_total[:, None])
    scale1 = n / (n - 1)
    loo = torch.logaddexp(log_a[:, None], _safe_log(scale1 * without)) - log_full[:, None]
    if not with_pairs:
        return theta, loo.mean(1), None

    # Leave-two-out: the mean over pairs of log(a + n/(n-2) (total - v_j - v_k)) - log_full.
    scale2 = n / (n - 2)
    n_rest = n - t
    # Pairs among the top terms: remaining sum = (top sum without i) - v_i' for i < i', which keeps
    # its digits except for the pair of the two largest, whose remainder is the sum from the third on.
    remaining = others_of_top[:, :, None] - top[:, None, :]
    if t >= 2:
        remaining[:, 0, 1] = top[:, 2:].sum(1)
    upper = torch.triu(torch.ones(t, t, dtype=torch.bool, device=v.device), diagonal=1)
    pair_logs = torch.logaddexp(log_a[:, None, None],
                                _safe_log(scale2 * (remaining.clamp_min(0.0) + rest_total[:, None, None])))
    pair_sum = (pair_logs - log_full[:, None, None]).masked_fill(~upper, 0.0).sum((1, 2))
    if n_rest > 0:
        sums = _power_sums(rest, SERIES_TERMS)
        has_rest = rest_total > 0
        # Pairs (top i, rest j): log(Y_i (1 - scale2 v_j / Y_i)), Y_i = a + scale2 (total - v_i).
        log_y_i = torch.logaddexp(log_a[:, None], _safe_log(scale2 * (others_of_top + rest_total[:, None])))
        ratio_i = torch.where(has_rest[:, None], scale2 * torch.exp(-log_y_i), torch.zeros_like(log_y_i))
        series_i = _log1m_series(ratio_i, [p[:, None] for p in sums])
        pair_sum = pair_sum + (n_rest * (log_y_i - log_full[:, None]) + series_i).sum(1)
        # Pairs among the rest: log(Y (1 - scale2 (v_j + v_k) / Y)), Y = a + scale2 total.
        if n_rest >= 2:
            log_y = torch.logaddexp(log_a, _safe_log(scale2 * total))
            ratio = torch.where(has_rest, scale2 * torch.exp(-log_y), torch.zeros_like(log_y))
            series = _log1m_series(ratio, _pair_power_sums(sums, n_rest))
            pair_sum = pair_sum + math.comb(n_rest, 2) * (log_y - log_full) + series
    return theta, loo.mean(1), pair_sum / math.comb(n, 2)


def _corrected_rows_by_order(log_a_self, log_c_others, population: int, orders) -> dict:
    n = log_c_others.shape[1]
    effective = {order: min(order, n - 1) for order in orders}
    weights = {order: extrapolation_weights(n, population, e) for order, e in effective.items()}
    if all(w == (0.0, 0.0) for w in weights.values()):
        theta = torch.logaddexp(log_a_self, torch.logsumexp(log_c_others, dim=1))
        return {order: theta for order in orders}
    theta, loo, pairs = _row_means(log_a_self, log_c_others, with_pairs=max(effective.values()) == 2)
    vanishing = torch.isneginf(theta)  # q(z) = 0 (z = +-inf): the estimate and its corrections are -inf
    return {order: torch.where(vanishing, theta, theta + w1 * loo + (w2 * pairs if w2 else 0.0))
            for order, (w1, w2) in weights.items()}


def _jackknife_log_density(values: torch.Tensor, own: torch.Tensor, weights: StructuredLogWeights,
                           population: int, orders) -> dict:
    """values (m, K, ...) log q(z_i | component k); own (m,) the column of each query's own component;
    weights: the stratified log-weights (own, other)."""
    moved = values.movedim(1, -1)                            # (m, ..., K)
    m, K = moved.shape[0], moved.shape[-1]
    middle = [1] * (moved.dim() - 2)
    others = torch.arange(K - 1, device=own.device)[None, :]
    others = others + (others >= own[:, None])               # (m, K - 1): every column but the own one
    log_self = moved.gather(-1, own.view(m, *middle, 1).expand(*moved.shape[:-1], 1)).squeeze(-1)
    log_others = moved.gather(-1, others.view(m, *middle, K - 1).expand(*moved.shape[:-1], K - 1))
    rows = _corrected_rows_by_order((weights.self + log_self).reshape(-1).double(),
                                    (weights.other + log_others).reshape(-1, K - 1).double(), population, orders)
    return {order: r.view(moved.shape[:-1]).to(values.dtype) for order, r in rows.items()}


def jackknife_log_densities(z: torch.Tensor, components_mu: torch.Tensor, components_logvar: torch.Tensor,
                            dataset_size: int, order: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Jackknifed (log_qz (B,), log_qzd (B, D)) for queries z whose own component is row i.

    components_mu/logvar: (K, D) with the batch's encodings first (component i belongs to query i),
    then any further components (a memory bank). Needs at least 3 components in all; with exactly
    3 the correction is first order.

    order: 2 (default) or 1; see the module docstring.
    """
    return jackknife_log_densities_by_order(z, components_mu, components_logvar, dataset_size, (order,))[order]


def jackknife_log_densities_by_order(z, components_mu, components_logvar, dataset_size: int,
                                     orders=(1, 2)) -> dict:
    """{order: (log_qz, log_qzd)} for several orders from one pass over the cube (for studies)."""
    return _jackknife_by_order(z, components_mu, components_logvar, dataset_size, orders)


def _jackknife_by_order(z, components_mu, components_logvar, dataset_size: int, orders,
                        grad_components: int | None = None) -> dict:
    """jackknife_log_densities_by_order; ``grad_components``: the leading components that carry
    gradient (a batch before a bank, as in tcestim._ops.mixture_logdensity), None for all."""
    if not orders or any(order not in (1, 2) for order in orders):
        raise ValueError(f"order must be 1 or 2, got {orders!r}")
    B, D = z.shape
    K = components_mu.shape[0]
    num_others = K - 1
    if num_others < 2:
        raise ValueError(f"jackknife needs at least 3 mixture components (batch + bank), got {K}")
    N = dataset_size
    fused = _ops.has_fused_jackknife(z, components_mu, components_logvar) and z.dtype in (torch.float32,
                                                                                             torch.float64)
    z, components_mu, components_logvar = (_FirstOrderOnly.apply(t) for t in (z, components_mu, components_logvar))
    weights = stratified_log_weights(N, num_others)
    if fused:
        return _fused_log_densities_by_order(z, components_mu, components_logvar, weights, N - 1, orders,
                                             -1 if grad_components is None else grad_components)
    rows_per_chunk = max(1, _CHUNK_ELEMENTS // max(1, K * D))
    joint: dict[int, list[torch.Tensor]] = {order: [] for order in orders}
    marginals: dict[int, list[torch.Tensor]] = {order: [] for order in orders}
    for start in range(0, B, rows_per_chunk):
        rows = torch.arange(start, min(B, start + rows_per_chunk), device=z.device)
        cube = log_normal_diag(z[rows, None, :], components_mu[None], components_logvar[None])
        for order, value in _jackknife_log_density(cube.sum(-1), rows, weights, N - 1, orders).items():
            joint[order].append(value)
        for order, value in _jackknife_log_density(cube, rows, weights, N - 1, orders).items():
            marginals[order].append(value)
    return {order: (torch.cat(joint[order]), torch.cat(marginals[order])) for order in orders}


def _fused_log_densities_by_order(z, mu, logvar, weights: StructuredLogWeights, population: int, orders,
                                  grad_components: int) -> dict:
    """{order: (log_qz, log_qzd)} from the fused kernels (see the module docstring): the sums of
    ``tcestim::jackknife_sums``, the own and big terms recomputed here from their components, and
    the estimate formed by ``tcestim::jackknife_estimate``, one row per query and target (joint first)."""
    B, D = z.shape
    n = mu.shape[0] - 1
    R = D + 1
    shift2, _, big_index, big_count, power_sums = torch.ops.tcestim.jackknife_sums(z, mu, logvar, grad_components)
    own = log_normal_diag(z, mu[:B], logvar[:B])                                               # (B, D)
    log_a = torch.cat([own.sum(1, keepdim=True), own], 1).double() + weights.self              # (B, R)
    # The big terms, recomputed from their components, one entry each, ordered by row (query, target).
    counts = big_count.view(-1)                                                                # (B R,)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    row = torch.repeat_interleave(counts)
    component = big_index.view(B * R, -1)[row, torch.arange(row.numel()) - offsets[row]]
    query, target = row // R, row % R
    terms = log_normal_diag(z[query], mu[component], logvar[component])                       # (E, D)
    dim = (target - 1).clamp_min(0)
    x = torch.where(target == 0, terms.sum(1), terms.gather(1, dim[:, None]).squeeze(1))
    log_shift = shift2.double() * _LN2 + weights.other
    extrapolation = [extrapolation_weights(n, population, min(order, n - 1)) for order in orders]
    estimates = torch.ops.tcestim.jackknife_estimate(
        log_a.view(-1), log_shift.view(-1), power_sums.view(B * R, -1).double(), x.double() + weights.other, offsets,
        n, [w1 for w1, _ in extrapolation], [w2 for _, w2 in extrapolation])
    out = {}
    for order, rows in zip(orders, estimates.to(z.dtype).view(len(orders), B, R)):
        out[order] = (rows[:, 0], rows[:, 1:])
    return out


_LN2 = math.log(2.0)

