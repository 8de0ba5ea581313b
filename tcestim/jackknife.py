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
kernel ``tcestim::jackknife_sums`` (csrc/cpu/jackknife.h) returns, per query and target, the
indices of the "big" other terms (each more than 1/64 of the sum of all others but the largest; at
most 65) and the power sums u^1..u^8 of the others, relative to the largest; the estimate is then
formed here, in float64, from those sums and the big terms recomputed from their components: the
same formulas as above with the big terms in place of the ``TOP_TERMS`` largest. Every small term
is at most 1/64 of what any pair's series is expanded around, so the series (8 terms) err by less
than 1e-13 relative. Gradients: the power sums' backward is a kernel (a Horner polynomial per cube
element, the mixture's two backward sweeps); the big and own terms are differentiated here.
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


def _log1m_series_sums(ratio: torch.Tensor, power_sums: torch.Tensor) -> torch.Tensor:
    """sum_j log(1 - ratio v_j) = -sum_q ratio^q p_q / q from the power sums (..., Q) of v."""
    q = torch.arange(1, power_sums.shape[-1] + 1, dtype=ratio.dtype, device=ratio.device)
    return -(ratio.unsqueeze(-1) ** q * power_sums / q).sum(-1)


def _pair_power_sums_tensor(power_sums: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """sum_{j<k} (v_j + v_k)^q, q = 1..Q, from the power sums (R, Q) of ``count`` (R,) values:
    (sum_i binom(q, i) p_i p_(q-i) - 2^q p_q) / 2 with p_0 = count, as one contraction."""
    Q = power_sums.shape[-1]
    p = torch.cat([count[:, None], power_sums], 1)                                   # (R, Q + 1)
    products = (p[:, :, None] * p[:, None, :]).reshape(p.shape[0], -1)                # (R, (Q + 1)^2)
    return 0.5 * (products @ _pair_matrix(Q, p.dtype, p.device) - 2.0 ** torch.arange(
        1, Q + 1, dtype=p.dtype, device=p.device) * power_sums)


def _pair_matrix(Q: int, dtype, device) -> torch.Tensor:
    """((Q + 1)^2, Q): entry (i (Q + 1) + k, q - 1) = binom(q, i) where i + k = q."""
    m = torch.zeros((Q + 1) ** 2, Q, dtype=dtype)
    for q in range(1, Q + 1):
        for i in range(q + 1):
            m[i * (Q + 1) + (q - i), q - 1] = math.comb(q, i)
    return m.to(device)


def _fused_rows(log_a, log_shift, power_sums, n: int, with_pairs: bool, row, slot, log_big, slots: int):
    """theta, mean_k theta_(k) - theta and (with_pairs) mean_jk theta_(jk) - theta per row, as
    _row_means, from the power sums (rows, Q) of the small terms relative to exp(log_shift) and the
    big terms, one entry each: row (E,), slot (E,) its place among the row's ``slots``, log_big (E,)
    (log, weighted). Float64. Most rows have no or one big term: per-entry work is O(E), and only
    the rows with two or more get the (slots, slots) work of the pairs among big terms."""
    R = log_a.shape[0]
    top_log = torch.maximum(log_a, log_shift).detach()
    top_log = torch.where(torch.isfinite(top_log), top_log, torch.zeros_like(top_log))
    log_a = log_a - top_log
    sigma = torch.exp(log_shift - top_log).detach()
    powers = sigma[:, None] ** torch.arange(1, power_sums.shape[1] + 1, dtype=sigma.dtype, device=sigma.device)
    sums = power_sums * powers                                                                 # (R, Q)
    rest_total = sums[:, 0]
    count = torch.bincount(row, minlength=R)
    n_rest = n - count.to(log_a.dtype)
    has_rest = rest_total > 0

    v = torch.exp(log_big - top_log[row])                                                      # (E,)
    total = torch.zeros_like(log_a).index_add(0, row, v) + rest_total
    log_full = torch.logaddexp(log_a, _safe_log(total))
    theta = top_log + log_full

    # The other big terms of each entry's row, summed exactly (masked sums over the rows with two or more).
    multi = (count >= 2).nonzero().squeeze(1)
    place = torch.full((R,), -1, dtype=torch.long, device=row.device).index_put(
        (multi,), torch.arange(multi.numel(), device=row.device))
    in_multi = place[row] >= 0
    m_row, m_slot = place[row][in_multi], slot[in_multi]
    v_multi = torch.zeros(multi.numel(), slots, dtype=v.dtype, device=v.device).index_put((m_row, m_slot), v[in_multi])
    valid_multi = torch.zeros(multi.numel(), slots, dtype=torch.bool, device=v.device).index_put(
        (m_row, m_slot), torch.ones_like(m_row, dtype=torch.bool))
    eye = torch.eye(slots, dtype=torch.bool, device=v.device)
    others_multi = v_multi.unsqueeze(1).expand(-1, slots, -1).masked_fill(eye, 0.0).sum(-1)   # (Rm, slots)
    others = torch.zeros_like(v).index_put((in_multi.nonzero().squeeze(1),), others_multi[m_row, m_slot])
    a_e, full_e, rest_e, n_rest_e = log_a[row], log_full[row], rest_total[row], n_rest[row]

    scale1 = n / (n - 1)
    loo_big = torch.logaddexp(a_e, _safe_log(scale1 * (others + rest_e))) - full_e
    loo_sum = torch.zeros_like(log_a).index_add(0, row, loo_big)
    log_y1 = torch.logaddexp(log_a, _safe_log(scale1 * total))
    ratio1 = torch.where(has_rest, scale1 * torch.exp(-log_y1), torch.zeros_like(log_y1))
    loo_sum = loo_sum + torch.where(n_rest > 0, n_rest * (log_y1 - log_full) + _log1m_series_sums(ratio1, sums),
                                    torch.zeros_like(log_y1))
    if not with_pairs:
        return theta, loo_sum / n, None

    scale2 = n / (n - 2)
    # Pairs among the big terms, as _row_means: the pair of the two largest keeps the sum from the third on.
    order = v_multi.argsort(1, descending=True)
    top, top_valid = v_multi.gather(1, order), valid_multi.gather(1, order)
    remaining = others_multi.gather(1, order)[:, :, None] - top[:, None, :]
    if slots >= 2:
        remaining[:, 0, 1] = top[:, 2:].sum(1)
    pairs = torch.triu(torch.ones(slots, slots, dtype=torch.bool, device=v.device), diagonal=1) \
        & top_valid[:, :, None] & top_valid[:, None, :]
    pair_logs = torch.logaddexp(log_a[multi, None, None],
                                _safe_log(scale2 * (remaining.clamp_min(0.0) + rest_total[multi, None, None])))
    pair_multi = (pair_logs - log_full[multi, None, None]).masked_fill(~pairs, 0.0).sum((1, 2))
    pair_sum = torch.zeros_like(log_full).index_put((multi,), pair_multi)
    # Pairs (big i, small j) and pairs among the small terms, through the series.
    log_y_i = torch.logaddexp(a_e, _safe_log(scale2 * (others + rest_e)))
    ratio_i = torch.where(has_rest[row], scale2 * torch.exp(-log_y_i), torch.zeros_like(log_y_i))
    big_rest = torch.where(n_rest_e > 0, n_rest_e * (log_y_i - full_e) + _log1m_series_sums(ratio_i, sums[row]),
                           torch.zeros_like(log_y_i))
    pair_sum = pair_sum.index_add(0, row, big_rest)
    log_y = torch.logaddexp(log_a, _safe_log(scale2 * total))
    ratio = torch.where(has_rest, scale2 * torch.exp(-log_y), torch.zeros_like(log_y))
    rest_pairs = 0.5 * n_rest * (n_rest - 1)
    among_rest = rest_pairs * (log_y - log_full) + _log1m_series_sums(ratio, _pair_power_sums_tensor(sums, n_rest))
    pair_sum = pair_sum + torch.where(n_rest >= 2, among_rest, torch.zeros_like(log_y))
    return theta, loo_sum / n, pair_sum / math.comb(n, 2)


def _fused_log_densities_by_order(z, mu, logvar, weights: StructuredLogWeights, population: int, orders,
                                  grad_components: int) -> dict:
    """{order: (log_qz, log_qzd)} from the fused kernel's sums (see the module docstring)."""
    B, D = z.shape
    n = mu.shape[0] - 1
    shift2, _, big_index, power_sums = torch.ops.tcestim.jackknife_sums(z, mu, logvar, grad_components)
    R = D + 1
    # The own terms, joint and marginals: (B, R).
    own = log_normal_diag(z, mu[:B], logvar[:B])
    log_a = torch.cat([own.sum(1, keepdim=True), own], 1).double() + weights.self
    # The big terms, recomputed here from their components, one entry each.
    T = int((big_index >= 0).sum(-1).max()) if big_index.numel() else 0
    index = big_index[..., :T].reshape(B * R, T)
    row, slot = (index >= 0).nonzero(as_tuple=True)
    component = index[row, slot]
    query, target = row // R, row % R
    terms = log_normal_diag(z[query], mu[component], logvar[component])                       # (E, D)
    dim = (target - 1).clamp_min(0)
    x = torch.where(target == 0, terms.sum(1), terms.gather(1, dim[:, None]).squeeze(1))
    log_shift = shift2.double() * _LN2 + weights.other
    effective = {order: min(order, n - 1) for order in orders}
    extrapolation = {order: extrapolation_weights(n, population, e) for order, e in effective.items()}
    theta, loo, pairs = _fused_rows(log_a.reshape(-1), log_shift.reshape(-1), power_sums.reshape(B * R, -1).double(),
                                    n, max(effective.values()) == 2, row, slot, x.double() + weights.other, T)
    vanishing = torch.isneginf(theta)
    out = {}
    for order, (w1, w2) in extrapolation.items():
        rows = theta if (w1, w2) == (0.0, 0.0) else torch.where(
            vanishing, theta, theta + w1 * loo + (w2 * pairs if w2 else 0.0))
        rows = rows.view(B, R).to(z.dtype)
        out[order] = (rows[:, 0], rows[:, 1:])
    return out


_LN2 = math.log(2.0)

