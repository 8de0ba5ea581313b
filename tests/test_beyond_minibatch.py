"""decompose_exact, the memory bank, the jackknife and the TC bracket (issue: beyond the minibatch)."""
import itertools
import math

import numpy as np
import pytest
import torch

import tcestim

import reference


def encodings(N, D, seed=0, std=0.5, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(N, D, generator=g, dtype=dtype)
    logvar = (2 * math.log(std) + 0.3 * torch.randn(N, D, generator=g, dtype=dtype))
    return mu, logvar


def sample(mu, logvar, seed=1):
    g = torch.Generator().manual_seed(seed)
    return mu + torch.exp(0.5 * logvar) * torch.randn(mu.shape, generator=g, dtype=mu.dtype)


# decompose_exact ------------------------------------------------------------------------------

@pytest.mark.parametrize("chunk_size", [None, 1, 7, 1000])
def test_decompose_exact_matches_float64_reference(chunk_size):
    mu_all, logvar_all = encodings(23, 3)
    index = torch.tensor([0, 5, 5, 22, 9])
    mu, logvar = mu_all[index], logvar_all[index]
    z = sample(mu, logvar)
    d = tcestim.decompose_exact(z, mu, logvar, mu_all, logvar_all, chunk_size=chunk_size)
    want_qz, want_qzd = reference.mixture_logdensity(z.numpy(), mu_all.numpy(), logvar_all.numpy(),
                                                     np.full((5, 23), -math.log(23)))
    np.testing.assert_allclose(d.log_qz.numpy(), want_qz, rtol=1e-12)
    np.testing.assert_allclose(d.log_qzd.numpy(), want_qzd, rtol=1e-12)
    np.testing.assert_allclose((d.mi + d.tc + d.dimkl).numpy(), (d.log_qzx - d.log_pz).numpy(), rtol=1e-12)


def test_decompose_exact_gradients():
    mu_all, logvar_all = (t.requires_grad_() for t in encodings(9, 2, seed=2))
    z = sample(mu_all[:4].detach(), logvar_all[:4].detach()).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z, m, v: tcestim.decompose_exact(z, m[:4], v[:4], m, v, chunk_size=4).tc.sum(),
        (z, mu_all, logvar_all))


def test_decompose_exact_standard_errors():
    mu_all, logvar_all = encodings(50, 2, seed=3)
    z = sample(mu_all, logvar_all)
    d = tcestim.decompose_exact(z, mu_all, logvar_all, mu_all, logvar_all)
    se = d.standard_errors()
    assert se["tc"] == pytest.approx(float(d.tc.std()) / math.sqrt(50), rel=1e-12)


def test_product_grid_means_have_zero_tc():
    """Equal-variance components on a full product grid: q(z) factorises exactly, TC == 0."""
    axes = [torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64), torch.tensor([0.0, 3.0], dtype=torch.float64),
            torch.tensor([-2.0, -1.5, 1.0, 4.0], dtype=torch.float64)]
    mu_all = torch.tensor(list(itertools.product(*[a.tolist() for a in axes])), dtype=torch.float64)
    logvar_all = torch.full_like(mu_all, math.log(0.6))
    z = sample(mu_all[:40], logvar_all[:40], seed=4) * 1.5
    d = tcestim.decompose_exact(z, mu_all[:40], logvar_all[:40], mu_all, logvar_all, chunk_size=5)
    assert d.tc.abs().max() < 1e-12


def test_block_product_components_are_additive():
    """Components = every pair (a, b) of block-A and block-B encodings: TC(q) = TC(q_A) + TC(q_B)."""
    mu_a, lv_a = encodings(5, 2, seed=5)
    mu_b, lv_b = encodings(4, 3, seed=6)
    pairs = list(itertools.product(range(5), range(4)))
    mu_all = torch.stack([torch.cat([mu_a[i], mu_b[j]]) for i, j in pairs])
    lv_all = torch.stack([torch.cat([lv_a[i], lv_b[j]]) for i, j in pairs])
    z = sample(mu_all, lv_all, seed=7)
    full = tcestim.decompose_exact(z, mu_all, lv_all, mu_all, lv_all)
    part_a = tcestim.decompose_exact(z[:, :2], mu_all[:, :2], lv_all[:, :2], mu_a, lv_a)
    part_b = tcestim.decompose_exact(z[:, 2:], mu_all[:, 2:], lv_all[:, 2:], mu_b, lv_b)
    torch.testing.assert_close(full.tc, part_a.tc + part_b.tc, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("D", [2, 5])
def test_separated_diagonal_means_give_d_minus_one_log_k(D):
    """K narrow components at (c_k, ..., c_k), far apart: TC = (D - 1) log K."""
    K = 16
    centres = 10.0 * torch.arange(K, dtype=torch.float64)
    mu_all = centres[:, None].expand(K, D).clone()
    logvar_all = torch.full((K, D), math.log(0.01), dtype=torch.float64)
    z = sample(mu_all, logvar_all, seed=8)
    d = tcestim.decompose_exact(z, mu_all, logvar_all, mu_all, logvar_all)
    torch.testing.assert_close(d.tc, torch.full((K,), (D - 1) * math.log(K), dtype=torch.float64),
                               rtol=1e-9, atol=1e-9)


def test_decompose_exact_validation():
    mu_all, logvar_all = encodings(10, 3)
    z = sample(mu_all, logvar_all)
    with pytest.raises(ValueError, match="mu_all and logvar_all must both have shape"):
        tcestim.decompose_exact(z, mu_all, logvar_all, mu_all[:, :2], logvar_all[:, :2])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        tcestim.decompose_exact(z, mu_all, logvar_all, mu_all, logvar_all, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size must be an int"):
        tcestim.decompose_exact(z, mu_all, logvar_all, mu_all, logvar_all, chunk_size=2.0)
    with pytest.raises(TypeError, match="mu_all must have the dtype of z"):
        tcestim.decompose_exact(z, mu_all, logvar_all, mu_all.float(), logvar_all)


# Memory bank ----------------------------------------------------------------------------------

def test_memory_bank_is_a_fifo():
    bank = tcestim.MemoryBank(5, 2)
    assert len(bank) == 0 and bank.mu.shape == (0, 2)
    rows = torch.arange(16, dtype=torch.float64).reshape(8, 2)
    bank.update(rows[:3], rows[:3])
    assert len(bank) == 3 and torch.equal(bank.mu, rows[:3])
    bank.update(rows[3:7], rows[3:7])  # 7 pushed, 5 kept: rows 2..6
    assert len(bank) == 5
    assert sorted(bank.mu[:, 0].tolist()) == rows[2:7, 0].tolist()
    bank.update(rows, -rows)  # a batch larger than the bank keeps its last 5
    assert sorted(bank.mu[:, 0].tolist()) == rows[3:, 0].tolist()
    assert sorted(bank.logvar[:, 0].tolist()) == sorted((-rows[3:, 0]).tolist())
    bank.reset()
    assert len(bank) == 0


def test_memory_bank_stores_detached_copies():
    mu = torch.randn(4, 3, requires_grad=True)
    bank = tcestim.MemoryBank(10, 3)
    bank.update(mu * 2, mu * 0)
    assert not bank.mu.requires_grad
    with torch.no_grad():
        mu.add_(1.0)
    assert not torch.allclose(bank.mu, (mu * 2).detach())


def test_memory_bank_validation():
    with pytest.raises(ValueError, match="size must be >= 1"):
        tcestim.MemoryBank(0, 3)
    with pytest.raises(ValueError, match="dim must be >= 1"):
        tcestim.MemoryBank(4, 0)
    with pytest.raises(TypeError, match="size must be an int"):
        tcestim.MemoryBank(4.0, 3)
    bank = tcestim.MemoryBank(4, 3)
    with pytest.raises(ValueError, match=r"shape \(B, 3\)"):
        bank.update(torch.zeros(2, 2), torch.zeros(2, 2))
    mu, logvar = encodings(6, 2)
    with pytest.raises(ValueError, match="bank holds encodings of width 3"):
        tcestim.total_correlation(sample(mu, logvar), mu, logvar, dataset_size=100, bank=bank)
    with pytest.raises(ValueError, match="need estimator='stratified'"):
        tcestim.total_correlation(sample(mu, logvar), mu, logvar, dataset_size=100,
                                  bank=tcestim.MemoryBank(4, 2), estimator="mss")


def test_bank_weights_match_reference():
    N, B, K = 500, 6, 9
    mu_all, logvar_all = encodings(B + K, 3, seed=9)
    mu, logvar = mu_all[:B], logvar_all[:B]
    z = sample(mu, logvar)
    bank = tcestim.MemoryBank(K, 3)
    bank.update(mu_all[B:], logvar_all[B:])
    d = tcestim.decompose(z, mu, logvar, dataset_size=N, bank=bank)
    w = np.full((B, B + K), (N - 1) / (N * (B - 1 + K)))
    np.fill_diagonal(w[:, :B], 1.0 / N)
    want_qz, want_qzd = reference.mixture_logdensity(z.numpy(), mu_all.numpy(), logvar_all.numpy(), np.log(w))
    np.testing.assert_allclose(d.log_qz.numpy(), want_qz, rtol=1e-12)
    np.testing.assert_allclose(d.log_qzd.numpy(), want_qzd, rtol=1e-12)


def test_bank_holding_the_rest_of_the_dataset_is_exact():
    N, B = 40, 8
    mu_all, logvar_all = encodings(N, 4, seed=10)
    z = sample(mu_all[:B], logvar_all[:B])
    bank = tcestim.MemoryBank(N - B, 4)
    bank.update(mu_all[B:], logvar_all[B:])
    with_bank = tcestim.decompose(z, mu_all[:B], logvar_all[:B], dataset_size=N, bank=bank)
    exact = tcestim.decompose_exact(z, mu_all[:B], logvar_all[:B], mu_all, logvar_all)
    for a, b in zip(with_bank, exact):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradients_do_not_flow_into_the_bank():
    mu_all, logvar_all = encodings(20, 3, seed=11)
    bank_mu = mu_all[8:].clone().requires_grad_()
    bank = tcestim.MemoryBank(12, 3)
    bank.update(bank_mu, logvar_all[8:])
    mu, logvar = mu_all[:8].clone().requires_grad_(), logvar_all[:8].clone().requires_grad_()
    z = sample(mu.detach(), logvar.detach())
    for jackknife in (False, True):
        tc = tcestim.total_correlation(z, mu, logvar, dataset_size=100, bank=bank, jackknife=jackknife)
        tc.backward()
        assert bank_mu.grad is None
        assert mu.grad is not None and torch.isfinite(mu.grad).all()
        mu.grad = None


# Jackknife ------------------------------------------------------------------------------------

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
    from tcestim.jackknife import TOP_TERMS, _corrected_rows

    g = torch.Generator().manual_seed(16)
    n, P = 3 * TOP_TERMS, 500
    log_self = torch.randn(3, generator=g, dtype=torch.float64)
    log_others = 6 * torch.randn(3, n, generator=g, dtype=torch.float64) - math.log(n)
    got = _corrected_rows(log_self, log_others, P, order=2)
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


# Bracket --------------------------------------------------------------------------------------

def test_bracket_matches_reference_formula():
    B, N = 10, 400
    mu, logvar = encodings(B, 3, seed=15)
    z = sample(mu, logvar)
    lower, upper = tcestim.tc_bracket(z, mu, logvar, dataset_size=N)
    args = (z.numpy(), mu.numpy(), logvar.numpy())
    strat = reference.mixture_logdensity(*args, np.log(reference.estimator_weight_matrix("stratified", B, N)))
    plugin = reference.mixture_logdensity(*args, np.full((B, B), -math.log(B)))
    assert float(lower) == pytest.approx(float(np.mean(strat[0] - plugin[1].sum(1))), rel=1e-12)
    assert float(upper) == pytest.approx(float(np.mean(plugin[0] - strat[1].sum(1))), rel=1e-12)


def test_bracket_contains_the_exact_tc_on_average():
    from tcestim.experiments.synthetic import finite_mixture_tc, make_posterior

    g = torch.Generator().manual_seed(16)
    post = make_posterior(3000, 4, rho=0.5, noise_std=0.5, generator=g, dtype=torch.float64)
    exact, se = finite_mixture_tc(post, 8000, g)
    lows, highs = [], []
    for _ in range(10):
        index = torch.randperm(3000, generator=g)[:256]
        lo, hi = tcestim.tc_bracket(post.sample(index, g), post.mu[index], post.logvar[index], dataset_size=3000)
        lows.append(float(lo))
        highs.append(float(hi))
    assert np.mean(lows) - 3 * se <= exact <= np.mean(highs) + 3 * se


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
