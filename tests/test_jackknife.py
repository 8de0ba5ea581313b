"""tcestim.jackknife: the first- and second-order jackknife of the stratified estimate against naive
loops, its stability, gradients, bias, exactness on the whole dataset, arguments and NaN/Inf rules.

Also tested elsewhere, by concern: hypothesis symmetries (test_properties.py), across processes
(test_distributed.py), forward-mode and second derivatives (test_transforms.py).
"""
import itertools
import math

import numpy as np
import pytest
import torch

import tcestim

import reference
from helpers import encodings, posterior, sample, separated_batch


@pytest.mark.parametrize("bank_size", [0, 5, 30])
def test_jackknife_matches_naive_reference(bank_size):
    """Second order (the default): the leave-two-out mean over the top terms and the power series
    over the rest (30 bank entries exceed TOP_TERMS) agree with explicit loops over all pairs."""
    N, B = 300, 6
    mu_all, logvar_all = encodings(B + bank_size, 3, seed=12)
    z = sample(mu_all[:B], logvar_all[:B])
    bank = None
    if bank_size:
        bank = tcestim.MemoryBank(bank_size, 3)
        bank.update(mu_all[B:], logvar_all[B:])
    d = tcestim.decompose(z, mu_all[:B], logvar_all[:B], dataset_size=N, bank=bank, jackknife=True)
    want_qz, want_qzd = reference.jackknife_stratified(z.numpy(), mu_all.numpy(), logvar_all.numpy(), N)
    np.testing.assert_allclose(d.log_qz.numpy(), want_qz, rtol=1e-10)
    np.testing.assert_allclose(d.log_qzd.numpy(), want_qzd, rtol=1e-10)


def test_first_order_jackknife_matches_naive_reference():
    from tcestim.jackknife import jackknife_log_densities

    N, K = 200, 25
    mu_all, logvar_all = encodings(K, 2, seed=15)
    z = sample(mu_all[:5], logvar_all[:5])
    got_qz, got_qzd = jackknife_log_densities(z, mu_all, logvar_all, N, order=1)
    want_qz, want_qzd = reference.jackknife_stratified(z.numpy(), mu_all.numpy(), logvar_all.numpy(), N, order=1)
    np.testing.assert_allclose(got_qz.numpy(), want_qz, rtol=1e-10)
    np.testing.assert_allclose(got_qzd.numpy(), want_qzd, rtol=1e-10)


def test_second_order_series_is_exact_for_widely_spread_terms():
    """Other terms spanning many orders of magnitude, well past TOP_TERMS of them."""
    from tcestim.jackknife import TOP_TERMS, _corrected_rows_by_order

    g = torch.Generator().manual_seed(16)
    n, P = 3 * TOP_TERMS, 500
    log_self = torch.randn(3, generator=g, dtype=torch.float64)
    log_others = 6 * torch.randn(3, n, generator=g, dtype=torch.float64) - math.log(n)
    got = _corrected_rows_by_order(log_self, log_others, P, (2,))[2]
    for row in range(3):
        want = reference.jackknife_row(float(log_self[row]), log_others[row].numpy(), P, order=2)
        assert float(got[row]) == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize("order", [1, 2])
def test_jackknife_gradcheck_float64(order):
    """With more other components than TOP_TERMS, so the power-series path (and its Horner
    backward) is differentiated too."""
    from tcestim.jackknife import TOP_TERMS, jackknife_log_densities

    mu_all, logvar_all = encodings(TOP_TERMS + 12, 2, seed=17)
    z = sample(mu_all[:3], logvar_all[:3])
    inputs = tuple(x.clone().requires_grad_() for x in (z, mu_all, logvar_all))

    def fn(z, mu, logvar):
        log_qz, log_qzd = jackknife_log_densities(z, mu, logvar, 200, order=order)
        return log_qz, log_qzd

    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


def test_jackknife_order_must_be_one_or_two():
    from tcestim.jackknife import jackknife_log_densities

    mu, logvar = encodings(5, 2)
    with pytest.raises(ValueError, match="order must be 1 or 2"):
        jackknife_log_densities(sample(mu, logvar), mu, logvar, 10, order=3)


def test_jackknife_is_stable_when_one_component_dominates():
    """A query sitting on one narrow 'other' component: the leave-one-out sum loses no digits."""
    N = 1000
    mu = torch.tensor([[0.0], [50.0], [50.001], [-30.0]], dtype=torch.float64)
    logvar = torch.tensor([[0.0], [math.log(1e-6)], [0.0], [0.0]], dtype=torch.float64)
    z = torch.tensor([[50.0], [50.0], [50.0], [-30.0]], dtype=torch.float64)
    d = tcestim.decompose(z, mu, logvar, dataset_size=N, jackknife=True)
    want_qz, _ = reference.jackknife_stratified(z.numpy(), mu.numpy(), logvar.numpy(), N)
    assert torch.isfinite(d.log_qz).all()
    np.testing.assert_allclose(d.log_qz.numpy(), want_qz, rtol=1e-9)


def test_jackknife_with_identical_others_changes_nothing():
    """If every 'other' component is the same, each leave-one-out estimate equals the full one."""
    B, N = 7, 50
    mu = torch.zeros(B, 2, dtype=torch.float64)
    logvar = torch.zeros(B, 2, dtype=torch.float64)
    z = sample(mu, logvar, seed=13)
    plain = tcestim.decompose(z, mu, logvar, dataset_size=N)
    jack = tcestim.decompose(z, mu, logvar, dataset_size=N, jackknife=True)
    torch.testing.assert_close(jack.log_qz, plain.log_qz, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(jack.log_qzd, plain.log_qzd, rtol=1e-10, atol=1e-10)


def test_jackknife_reduces_the_bias_of_the_stratified_estimate():
    """On a synthetic posterior, the jackknifed TC is closer to the exact finite-N TC on average."""
    from tcestim.experiments.synthetic import finite_mixture_tc, make_posterior

    g = torch.Generator().manual_seed(14)
    post = make_posterior(2000, 6, rho=0.5, noise_std=0.3, generator=g, dtype=torch.float64)
    exact, _ = finite_mixture_tc(post, 4000, g)
    plain, jack = [], []
    for _ in range(8):
        index = torch.randperm(2000, generator=g)[:128]
        z = post.sample(index, g)
        plain.append(float(tcestim.total_correlation(z, post.mu[index], post.logvar[index], dataset_size=2000)))
        jack.append(float(tcestim.total_correlation(z, post.mu[index], post.logvar[index], dataset_size=2000,
                                                    jackknife=True)))
    assert abs(np.mean(jack) - exact) < abs(np.mean(plain) - exact)


def test_jackknife_needs_three_components():
    mu, logvar = encodings(2, 2)
    with pytest.raises(ValueError, match="at least 3 mixture components"):
        tcestim.total_correlation(sample(mu, logvar), mu, logvar, dataset_size=10, jackknife=True)


def test_second_order_jackknife_removes_more_bias_exactly_over_all_samples():
    """Exact expectations, no Monte Carlo: every 6-of-12 sample of the other components is
    enumerated, so E[estimate] - log q(z) is the estimator's exact bias under the sampling design.
    Over 40 populations from light- to heavy-tailed (a few terms dominate), the second-order
    jackknife leaves on average about half the first-order bias (0.033 vs 0.063 nats), which
    leaves under a third of the plain stratified estimate's (0.22)."""
    from tcestim.jackknife import _corrected_rows_by_order

    P, n = 12, 6
    N = P + 1
    samples = torch.tensor(list(itertools.combinations(range(P), n)))
    biases = {"plain": [], 1: [], 2: []}
    for seed in range(40):
        g = torch.Generator().manual_seed(seed)
        log_t = [0.5, 1.0, 2.0, 3.0][seed % 4] * torch.randn(P, generator=g, dtype=torch.float64)
        log_self = torch.randn((), generator=g, dtype=torch.float64)
        truth = float(torch.logsumexp(torch.cat([log_self[None], log_t]), 0)) - math.log(N)
        log_c = math.log((N - 1) / (N * n)) + log_t[samples]
        log_a = (log_self - math.log(N)).expand(len(samples))
        biases["plain"].append(float(torch.logsumexp(torch.cat([log_a[:, None], log_c], 1), 1).mean()) - truth)
        for order, value in _corrected_rows_by_order(log_a, log_c, P, (1, 2)).items():
            biases[order].append(float(value.mean()) - truth)
    mean_abs = {k: np.mean(np.abs(v)) for k, v in biases.items()}
    assert mean_abs[2] < 0.6 * mean_abs[1] and mean_abs[1] < 0.5 * mean_abs["plain"]
    light = slice(0, None, 4)  # log-normal spread 0.5: the second order is all but exact
    assert np.max(np.abs(biases[2][light])) < 1e-4 < np.max(np.abs(biases["plain"][light]))


def test_jackknife_gradients_are_finite_for_well_separated_components():
    z, mu, logvar = separated_batch()
    tc = tcestim.total_correlation(z, mu, logvar, dataset_size=1000, jackknife=True)
    for grad in torch.autograd.grad(tc, (z, mu, logvar)):
        assert torch.isfinite(grad).all()


def test_jackknife_is_exact_when_the_batch_is_the_whole_dataset():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(64, 4, generator=g, dtype=torch.float64)
    logvar = torch.full((64, 4), -1.0, dtype=torch.float64)
    z = mu + 0.6 * torch.randn(64, 4, generator=g, dtype=torch.float64)
    exact = tcestim.total_correlation(z, mu, logvar)
    assert float(tcestim.total_correlation(z, mu, logvar, jackknife=True)) == pytest.approx(float(exact), rel=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jackknife_follows_the_nan_and_inf_rules(dtype):
    """The jackknife path obeys the same documented NaN/Inf behaviour as the fused kernels."""
    z, mu, logvar = posterior(B=6, D=3, dtype=dtype)
    for value in (float("inf"), float("-inf")):
        z_inf = z.clone()
        z_inf[3, 0] = value
        out = tcestim.decompose(z_inf, mu, logvar, dataset_size=40, jackknife=True)
        assert out.log_qz[3].item() == float("-inf") and out.log_qzd[3, 0].item() == float("-inf")
        assert torch.isfinite(out.log_qzd[3, 1:]).all()
        assert torch.isfinite(out.log_qz[[0, 1, 2, 4, 5]]).all()
    mu_nan = mu.clone()
    mu_nan[4, 0] = float("nan")
    out = tcestim.decompose(z, mu_nan, logvar, dataset_size=40, jackknife=True)
    assert torch.isnan(out.log_qz).all() and torch.isnan(out.log_qzd[:, 0]).all()
    assert torch.isfinite(out.log_qzd[:, 1:]).all()
    logvar_inf = logvar.clone()
    logvar_inf[2] = float("inf")
    out = tcestim.decompose(z, mu, logvar_inf, dataset_size=40, jackknife=True)
    others = [0, 1, 3, 4, 5]
    assert torch.isfinite(out.log_qz[others]).all() and torch.isfinite(out.log_qzd[others]).all()


# ----------------------------------------------------------------------------------------------
# The fused jackknife (issue 18): the sums inside the CPU kernel, on every backend of the suite
# (the fused instruction sets, and the PyTorch path of tcestim.jackknife on the fallback and cuda)


def bank_inputs(B, K, D, seed, std=0.5, spread=0.3):
    """z (B, D) and (K, D) components, the batch's own first: a batch plus a bank of K - B."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(K, D, generator=g, dtype=torch.float64)
    logvar = 2 * math.log(std) + spread * torch.randn(K, D, generator=g, dtype=torch.float64)
    z = mu[:B] + (0.5 * logvar[:B]).exp() * torch.randn(B, D, generator=g, dtype=torch.float64)
    return z, mu, logvar


def on_backend_and_fallback(backend, dtype, z, mu, logvar, dataset_size):
    """(log_qz, log_qzd, grad z, grad mu, grad logvar) of jackknife_log_densities for random upstream
    weights, on ``backend`` and through the fallback (the float64 PyTorch implementation), as float64."""
    from tcestim.jackknife import jackknife_log_densities

    a, b = torch.randn(z.shape[0], dtype=torch.float64), torch.randn(z.shape, dtype=torch.float64)

    def run(device):
        leaves = [t.to(device, dtype).requires_grad_() for t in (z, mu, logvar)]
        qz, qzd = jackknife_log_densities(*leaves, dataset_size)
        grads = torch.autograd.grad((a.to(device, dtype) * qz).sum() + (b.to(device, dtype) * qzd).sum(), leaves)
        return [t.detach().cpu().double() for t in (qz, qzd, *grads)]

    got = run(backend.device)
    with tcestim.testing.use_fallback():
        want = run("cpu")
    return got, want


_NAIVE = {}


@pytest.mark.parametrize("order", [1, 2])
@pytest.mark.parametrize("K,std", [(9, 0.5), (80, 0.5), (100, 0.05), (100, 3.0)],
                         ids=["all-big", "mixed", "narrow", "wide"])
def test_jackknife_matches_naive_loops_on_every_backend(backend, order, K, std):
    """Against explicit leave-one- and leave-two-out loops (float64 NumPy): few others (every one a
    'big' term), many (most in the power sums), narrow posteriors (a few dominate) and wide ones."""
    from tcestim.jackknife import jackknife_log_densities

    z, mu, logvar = bank_inputs(4, K, 2, seed=K + int(10 * std), std=std)
    got_qz, got_qzd = jackknife_log_densities(*(t.to(backend.device) for t in (z, mu, logvar)), 500, order=order)
    key = (order, K, std)
    if key not in _NAIVE:  # the loops take seconds: once per case, not per backend
        _NAIVE[key] = reference.jackknife_stratified(z.numpy(), mu.numpy(), logvar.numpy(), 500, order=order)
    want_qz, want_qzd = _NAIVE[key]
    np.testing.assert_allclose(got_qz.cpu().numpy(), want_qz, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(got_qzd.cpu().numpy(), want_qzd, rtol=1e-10, atol=1e-10)


@pytest.mark.fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_jackknife_equals_the_pytorch_implementation(backend, dtype):
    """B = 24 queries, a bank of 1000 (D = 5): the fused sums and the float64 PyTorch implementation
    of tcestim.jackknife (which the fallback runs, materialising the cube) agree to rounding, values
    and gradients. (At n = 1023 others the second-order extrapolation weights are about 1e6, so
    float64 rounding of the leave-out means shows at 1e-9: measured 1e-9 on values, 2e-9 on gradients.)"""
    z, mu, logvar = bank_inputs(24, 1024, 5, seed=3)
    got, want = on_backend_and_fallback(backend, dtype, z, mu, logvar, 20_000)
    tol = dict(rtol=1e-8, atol=1e-8) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    for name, g, w in zip(("log_qz", "log_qzd", "grad z", "grad mu", "grad logvar"), got, want):
        torch.testing.assert_close(g, w, **tol, msg=lambda m, name=name: f"{name}: {m}")


def rising_inputs(B=16, K=6000, D=7, seed=5):
    """Queries 30 apart in every dimension, each with its own run of bank components (every B-th)
    that comes nearer with the index (mu - z from 6 down to 0): past the first 1024 components (the
    CPU kernel's prefix, which sets its first reference and bound) every target's terms rise by 10 bits
    or more, and each new term of a query exceeds 1/64 of all its earlier ones."""
    g = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    z = 30.0 * torch.arange(B, dtype=torch.float64)[:, None] + 0.05 * randn(B, D)
    k = torch.arange(B, K)
    bank = z[k % B] + 6 * (1 - k.double() / K)[:, None] + 0.01 * randn(K - B, D)
    return z, torch.cat([z + 0.1 * randn(B, D), bank]), 0.1 * randn(K, D)


def naive_jackknife_sums(z, mu, logvar, floor=-1022.0):
    """(shift, log2_threshold, big mask (M, K, R), power sums) of kernel_args.h's JackknifeArgs, in
    float64 from the whole cube of terms; u below 2^floor counts as 0, as the kernel's exp2 flushes
    it (floor = lowest + 1: -126 for float32, -1022 for float64)."""
    M = z.shape[0]
    c = (-0.5 * math.log(2 * math.pi) - 0.5 * logvar - 0.5 * (z[:, None] - mu) ** 2 / logvar.exp()) / math.log(2)
    x = torch.cat([c.sum(-1, keepdim=True), c], -1)  # (M, K, R), base 2
    x[torch.arange(M), torch.arange(M)] = -math.inf
    shift = x.max(1).values
    u = torch.exp2(x - shift[:, None])
    u = torch.where(x - shift[:, None] < floor, 0.0, u)
    others = u.scatter(1, x.argmax(1, keepdim=True), 0.0)  # all but the first largest (not sum - 1: rounding)
    threshold = torch.log2(others.sum(1) / 64).clamp_min(floor)
    big = x - shift[:, None] > threshold[:, None]
    small = torch.where(big, 0.0, u)
    return shift, threshold, big, torch.stack([(small ** q).sum(1) for q in range(1, 9)], -1)


def assert_jackknife_sums_equal_naive(z, mu, logvar, dtype):
    """The CPU kernel's jackknife_sums on (z, mu, logvar) cast to dtype against naive_jackknife_sums
    of the same (rounded) inputs: shift, threshold, counts, the listed big terms, power sums."""
    z, mu, logvar = (t.to(dtype).double() for t in (z, mu, logvar))
    floor = -126.0 if dtype == torch.float32 else -1022.0
    shift, threshold, big, power_sums = naive_jackknife_sums(z, mu, logvar, floor)
    got = torch.ops.tcestim.jackknife_sums(*(t.to(dtype) for t in (z, mu, logvar)))
    close = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(got[0].double(), shift, **close)
    torch.testing.assert_close(got[1].double(), threshold, **close)
    torch.testing.assert_close(got[3], big.sum(1))
    listed = torch.zeros_like(big)
    rows, targets, slots = (got[2] >= 0).nonzero(as_tuple=True)
    listed[rows, got[2][rows, targets, slots], targets] = True
    assert torch.equal(listed, big)
    torch.testing.assert_close(got[4].double(), power_sums, **close)
    return shift, threshold, big


@pytest.mark.fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jackknife_sums_with_a_largest_term_among_many(backend, dtype):
    """Wide posteriors, a bank of 2000: thousands of comparable terms, so the largest is at most 1/64
    of the others and goes into the sums as it passes (the kernel then takes it out of the threshold's
    sum at the end) in most rows; over the prefix of 1024, so the running bounds are used as well."""
    if backend.device != "cpu":
        pytest.skip("the fused jackknife sums are CPU kernels")
    _, threshold, _ = assert_jackknife_sums_equal_naive(*bank_inputs(16, 2000, 4, seed=8, std=3.0), dtype)
    assert float((threshold > 0).double().mean()) > 0.9  # the others but the largest: over 64 times it


@pytest.mark.fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_jackknife_sums_after_a_raise_of_the_reference_past_the_exponent_range(backend, dtype):
    """One query (D = 1): the prefix far away, then a chunk at level c (the sweep's reference), 976
    terms at c + 7 (absorbed as they pass), then the largest at c + G, G = 130 bits (float32) or 1026
    (float64): rescaling the absorbed sum by 2^-G flushes it to 0, yet relative to the largest those
    terms (2^(7 - G)) lie above the threshold's floor and set the threshold. The kernel rescales in
    two half steps; flushed, the threshold fell to the floor and all 976 counted as big (unlisted)."""
    if backend.device != "cpu":
        pytest.skip("the fused jackknife sums are CPU kernels")
    gap = 130.0 if dtype == torch.float32 else 1026.0
    at = lambda bits: math.sqrt(2 * bits / math.log2(math.e))  # noqa: E731  (distance of a level)
    mu = torch.cat([torch.zeros(1), torch.full((1023,), 1e3), torch.full((16,), at(gap)),
                    torch.full((976,), at(gap - 7)), torch.zeros(1)]).double()[:, None]
    _, threshold, big = assert_jackknife_sums_equal_naive(torch.zeros(1, 1, dtype=torch.float64), mu,
                                                          torch.zeros_like(mu), dtype)
    assert bool((threshold > 7 - gap).all())  # the absorbed terms are small, and set the threshold
    assert big.sum().item() == 2  # the largest, for the joint and the marginal


@pytest.mark.fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fused_jackknife_when_later_components_rise(backend, dtype):
    """On rising_inputs the kernel raises its reference and rescales its sums many times, and logs
    nearly every term as a candidate big one (over 16 384 entries per block of queries: the log is
    pruned). Its sums equal the float64 ones of the whole cube, and the estimate's values and
    gradients the PyTorch implementation's, to rounding."""
    if backend.device != "cpu":
        pytest.skip("the fused jackknife sums are CPU kernels")
    z, mu, logvar = rising_inputs()
    rounded = [t.to(dtype).double() for t in (z, mu, logvar)]
    prefix_max = naive_jackknife_sums(rounded[0], rounded[1][:1024], rounded[2][:1024])[0]
    shift, _, big = assert_jackknife_sums_equal_naive(z, mu, logvar, dtype)
    assert bool((shift - prefix_max > 10).all())  # past the prefix
    assert bool((big.sum(1)[:, 0] > 0).all())  # the joint: about 30 big terms per query

    # (With n = 5999 others the second-order extrapolation weights are about 2e7: the PyTorch
    # implementation's float64 rounding shows at 1e-7 relative.)
    values, want = on_backend_and_fallback(backend, dtype, z, mu, logvar, 50_000)
    tol = dict(rtol=1e-6, atol=1e-6) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    for name, g, w in zip(("log_qz", "log_qzd", "grad z", "grad mu", "grad logvar"), values, want):
        torch.testing.assert_close(g, w, **tol, msg=lambda m, name=name: f"{name}: {m}")


def test_fused_jackknife_gradcheck_float64(backend):
    """Through the power sums' backward kernel: 70 others, 7-32 of them big, the rest in the power sums.
    (eps = 1e-5: the extrapolation weights, about 3e3 here, amplify rounding to 1e-12 in the values.)"""
    from tcestim.jackknife import jackknife_log_densities

    z, mu, logvar = bank_inputs(3, 71, 2, seed=19)
    inputs = tuple(t.to(backend.device).requires_grad_() for t in (z, mu, logvar))
    assert torch.autograd.gradcheck(lambda *x: jackknife_log_densities(*x, 300), inputs, eps=1e-5, atol=1e-6,
                                    rtol=1e-5)


@pytest.mark.fused
def test_jackknife_sums_opcheck(backend):
    if backend.device != "cpu":
        pytest.skip("the fused jackknife sums are CPU kernels")
    z, mu, logvar = (t.requires_grad_() for t in bank_inputs(5, 90, 3, seed=23))
    torch.library.opcheck(torch.ops.tcestim.jackknife_sums.default, (z, mu, logvar))
    shift, threshold, big, count, sums = (t.detach() for t in torch.ops.tcestim.jackknife_sums(z, mu, logvar))
    assert big.shape[:2] == (5, 4) and bool((big >= 0).any()) and bool((sums[..., 0] > 0).all())
    assert torch.equal(big >= 0, torch.arange(big.shape[-1]) < count[..., None])  # listed first, -1 after
    torch.library.opcheck(torch.ops.tcestim.jackknife_sums_backward.default,
                          (torch.randn_like(sums), z.detach(), mu.detach(), logvar.detach(), shift, threshold))


# ----------------------------------------------------------------------------------------------
# tcestim::jackknife_estimate, the estimate formed from the sums (csrc/cpu/jackknife_estimate.cpp)


def estimate_inputs(log_own, log_others):
    """The operator's inputs for rows given by their terms, own (R,) and others (R, n) (weighted,
    float64, either may require grad): the shift (the largest other, constant), the big terms (over
    1/64 of the others but the largest, as jackknife_sums picks them) and the power sums u^1..u^8 of
    the rest relative to the shift, formed here by plain tensor ops."""
    shift = log_others.detach().max(1).values
    shift = torch.where(torch.isfinite(shift), shift, torch.zeros_like(shift))
    u = torch.exp(log_others - shift[:, None])
    sorted_u = u.detach().sort(1, descending=True).values
    big = u.detach() > sorted_u[:, 1:].sum(1, keepdim=True) / 64
    small = torch.where(big, torch.zeros_like(u), u)
    power_sums = torch.stack([(small ** q).sum(1) for q in range(1, 9)], 1)
    counts = big.sum(1)
    offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return log_own, shift, power_sums, log_others[big], offsets


def jackknife_estimate(log_own, log_others, population, orders=(1, 2)):
    """(orders, R) from the operator, with the extrapolation weights of tcestim.jackknife."""
    from tcestim.jackknife import extrapolation_weights

    n = log_others.shape[1]
    weights = [extrapolation_weights(n, population, min(order, n - 1)) for order in orders]
    return torch.ops.tcestim.jackknife_estimate(*estimate_inputs(log_own, log_others), n,
                                                [w1 for w1, _ in weights], [w2 for _, w2 in weights])


def estimate_rows(n, seed=0):
    """(names, own (R,), others (R, n)): rows with no, one and many big terms, 0, 1, 2 and many small
    ones (where n allows), and -inf terms."""
    g = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    rows = {"spread": 3 * torch.randn(n, generator=g, dtype=torch.float64),
            "one big": torch.cat([torch.zeros(1), -12 - 0.2 * rand(n - 1)]),
            "own -inf": -rand(n)}
    if 4 <= n <= 64:  # (at most 65 terms can each exceed 1/64 of the others but the largest)
        rows["all big"] = -rand(n)
        rows["one small"] = torch.cat([-rand(n - 1), torch.full((1,), -15.0)])
        rows["two small"] = torch.cat([-rand(n - 2), -15 - rand(2)])
    if n >= 80:
        rows["none big"] = -0.05 * rand(n)
        rows["five big"] = torch.cat([-rand(5), -6 - rand(n - 5)])
    names = list(rows)
    own = torch.stack([torch.tensor(-math.inf if name == "own -inf" else -1.0, dtype=torch.float64)
                       for name in names])
    return names, own - math.log(n), torch.stack([rows[name] for name in names]) - math.log(n)


@pytest.mark.parametrize("n", [2, 3, 6, 100])
def test_jackknife_estimate_matches_naive_loops(requires_extension, n):
    """Both orders in one call, against explicit leave-one- and leave-two-out loops (float64 NumPy),
    on rows with 0 to n big terms and 0, 1, 2 or many small ones; n = 2 gives first order only."""
    population = 400
    names, own, others = estimate_rows(n)
    got = jackknife_estimate(own, others, population)
    _, _, _, log_big, offsets = estimate_inputs(own, others)
    counts = dict(zip(names, offsets.diff().tolist()))
    if 4 <= n <= 64:
        assert (counts["all big"], counts["one small"], counts["two small"]) == (n, n - 1, n - 2)
    if n >= 80:
        assert (counts["none big"], counts["one big"], counts["five big"]) == (0, 1, 5)
        assert 1 < counts["spread"] < n
    for k, name in enumerate(names):
        for row, order in zip(got, (1, 2)):
            want = reference.jackknife_row(float(own[k]), others[k].numpy(), population, order=order)
            assert float(row[k]) == pytest.approx(want, rel=1e-9, abs=1e-9), (name, order)


def test_jackknife_estimate_of_vanishing_and_empty_rows(requires_extension):
    """Every term -inf: -inf (q(z) = 0). Every other term -inf: the own term alone, exactly, and its
    gradient 1 (no correction)."""
    n = 5
    own = torch.tensor([-math.inf, -2.0], dtype=torch.float64, requires_grad=True)
    others = torch.full((2, n), -math.inf, dtype=torch.float64)
    got = jackknife_estimate(own, others, 100)
    assert torch.equal(got[:, 0], torch.full((2,), -math.inf, dtype=torch.float64))
    assert torch.equal(got[:, 1].detach(), torch.full((2,), -2.0, dtype=torch.float64))
    (grad,) = torch.autograd.grad(got[:, 1].sum(), own)
    assert float(grad[1]) == 2.0


@pytest.mark.parametrize("n", [3, 6, 100])
def test_jackknife_estimate_gradients_equal_the_pytorch_implementation(requires_extension, n):
    """Gradients with respect to the own and the other terms, through the operator's backward and the
    power sums formed by tensor ops, against autograd through the PyTorch implementation that takes the
    terms themselves (_corrected_rows_by_order: the TOP_TERMS largest exact, the rest in series)."""
    from tcestim.jackknife import _corrected_rows_by_order

    names, own, others = estimate_rows(n, seed=1)
    finite = torch.tensor([name != "own -inf" for name in names])
    own, others = own[finite], others[finite]
    g = torch.randn(2, own.shape[0], generator=torch.Generator().manual_seed(2), dtype=torch.float64)

    def grads(fn):
        leaves = [t.clone().requires_grad_() for t in (own, others)]
        return torch.autograd.grad((g * fn(*leaves)).sum(), leaves)

    got = grads(lambda a, o: jackknife_estimate(a, o, 400))
    want = grads(lambda a, o: torch.stack(list(_corrected_rows_by_order(a, o, 400, (1, 2)).values())))
    for name, x, y in zip(("own", "others"), got, want):
        torch.testing.assert_close(x, y, rtol=1e-8, atol=1e-9, msg=lambda m, name=name: f"{name}: {m}")


def test_jackknife_estimate_gradient_of_a_vanishing_own_term(requires_extension):
    """An own term of -inf has gradient 0 (it weighs nothing), not NaN; the others' gradients are those
    of the same row without it."""
    n = 6
    others = -torch.rand(1, n, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    own = torch.tensor([-math.inf], dtype=torch.float64, requires_grad=True)
    leaves = others.clone().requires_grad_()
    grad_own, grad_others = torch.autograd.grad(jackknife_estimate(own, leaves, 50).sum(), (own, leaves))
    assert float(grad_own) == 0.0
    from tcestim.jackknife import _corrected_rows_by_order

    leaves_ref = others.clone().requires_grad_()
    rows = _corrected_rows_by_order(torch.full((1,), -1e3, dtype=torch.float64), leaves_ref, 50, (1, 2))
    (want,) = torch.autograd.grad(sum(r.sum() for r in rows.values()), leaves_ref)
    torch.testing.assert_close(grad_others, want, rtol=1e-9, atol=1e-12)


def estimate_op_args(n=40, seed=4):
    names, own, others = estimate_rows(n, seed=seed)
    finite = torch.tensor([name != "own -inf" for name in names])
    log_a, log_shift, power_sums, log_big, offsets = estimate_inputs(own[finite], others[finite])
    return (log_a.requires_grad_(), log_shift, power_sums.requires_grad_(), log_big.requires_grad_(), offsets, n,
            [-3.0, -70.0], [0.0, 30.0])


def test_jackknife_estimate_gradcheck_float64(requires_extension):
    """Rows of 12 others, 1 to 4 of them big and the small ones not so small that a step of eps could
    empty their sum."""
    g = torch.Generator().manual_seed(5)
    others = torch.cat([-2 * torch.rand(4, 3, generator=g), -4 - torch.rand(4, 9, generator=g)], 1).double()
    log_a, log_shift, power_sums, log_big, offsets = estimate_inputs(torch.randn(4, generator=g).double(), others)
    assert offsets.diff().min() >= 1 and power_sums[:, 0].min() > 1e-3

    def fn(a, p, b):
        return torch.ops.tcestim.jackknife_estimate(a, log_shift, p, b, offsets, 12, [-3.0, -70.0], [0.0, 30.0])

    inputs = tuple(t.requires_grad_() for t in (log_a, power_sums, log_big))
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7, rtol=1e-6)


def test_jackknife_estimate_opcheck(requires_extension):
    args = estimate_op_args()
    torch.library.opcheck(torch.ops.tcestim.jackknife_estimate.default, args)
    detached = tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in args)
    grad = torch.randn(2, args[0].shape[0], dtype=torch.float64)
    torch.library.opcheck(torch.ops.tcestim.jackknife_estimate_backward.default, (grad, *detached))


@pytest.mark.parametrize("change,match", [
    (lambda a: (a[0].float(), *a[1:]), "log_a must be a 1-D float64"),
    (lambda a: (*a[:4], a[4].flip(0), *a[5:]), "big_offsets must run from 0"),
    (lambda a: (*a[:5], 2, *a[6:]), "pair_weights need n >= 3"),
    (lambda a: (*a[:6], [1.0], [1.0, 2.0]), "one length"),
])
def test_jackknife_estimate_checks_its_arguments(requires_extension, change, match):
    args = tuple(t.detach() if isinstance(t, torch.Tensor) else t for t in estimate_op_args())
    with pytest.raises(RuntimeError, match=match):
        torch.ops.tcestim.jackknife_estimate(*change(args))


@pytest.mark.fused
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("D,std", [(4, 0.01), (32, 0.05)])
def test_fused_jackknife_of_well_separated_components(backend, dtype, D, std):
    """Narrow, well separated components: every other term lies hundreds of nats below the largest,
    so the sum of the others but the largest underflows (flushed to 0); those terms count as small
    (the threshold's floor) instead of all big (which overflowed the list: NaN before). Values and
    gradients equal the PyTorch implementation's to rounding."""
    z, mu, logvar = bank_inputs(4, 100, D, seed=D, std=std, spread=0.0)
    got, want = on_backend_and_fallback(backend, dtype, z, mu, logvar, 1000)
    tol = dict(rtol=1e-9, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    for name, g, w in zip(("log_qz", "log_qzd", "grad z", "grad mu", "grad logvar"), got, want):
        assert torch.isfinite(g).all(), name
        torch.testing.assert_close(g, w, **tol, msg=lambda m, name=name: f"{name}: {m}")
