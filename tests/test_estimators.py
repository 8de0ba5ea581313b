"""Estimator weights against the exact finite mixture, the known public bugs, closed forms, demo."""
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

import tcestim
from tcestim.weights import StructuredLogWeights

import reference

ESTIMATORS = ("stratified", "mss", "mws", "mss-legacy")


def batch(B, D, dtype=torch.float64, seed=0, std=0.7):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(B, D, generator=g, dtype=torch.float64)
    logvar = torch.full((B, D), 2 * math.log(std), dtype=torch.float64) + 0.2 * torch.randn(B, D, generator=g, dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(B, D, generator=g, dtype=torch.float64)
    return z.to(dtype), mu.to(dtype), logvar.to(dtype)


def as_matrix(weights, B):
    if isinstance(weights, StructuredLogWeights):
        return reference.structured_matrix(B, B, *weights)
    return weights.numpy()


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("B,N", [(2, 2), (2, 50), (7, 7), (16, 1000), (64, 64)])
def test_weight_matrix_matches_design_table(name, B, N):
    got = np.exp(as_matrix(tcestim.estimator_log_weights(name, B, N), B))
    np.testing.assert_allclose(got, reference.estimator_weight_matrix(name, B, N), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["stratified", "mss"])
@pytest.mark.parametrize("B,N", [(2, 10), (16, 1000), (64, 64)])
def test_importance_weights_sum_to_one(name, B, N):
    """Each row of a correct estimator is a probability vector over the batch."""
    w = np.exp(as_matrix(tcestim.estimator_log_weights(name, B, N), B))
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-12)


def test_legacy_matrix_reproduces_reference_code():
    """The reference β-TCVAE code, transcribed with NumPy's flat views (its strides, its bug)."""
    B, N = 6, 100
    M = B - 1
    strat_weight = (N - M) / (N * M)
    W = np.full((B, B), 1 / M)
    W.reshape(-1)[:: M + 1] = 1 / N
    W.reshape(-1)[1 :: M + 1] = strat_weight
    W[M - 1, 0] = strat_weight
    got = tcestim.estimator_log_weights("mss-legacy", B, N).exp().numpy()
    np.testing.assert_allclose(got, W, rtol=1e-12)
    assert not np.allclose(np.diag(W), 1 / N), "the legacy matrix must keep the column-0 bug"


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("B,D,N", [(2, 3, 2), (9, 4, 9), (24, 6, 500), (40, 16, 40)])
def test_decompose_matches_reference(name, dtype, B, D, N):
    z, mu, logvar = batch(B, D, dtype, seed=B + D)
    got = tcestim.decompose(z, mu, logvar, dataset_size=N, estimator=name)
    want = reference.decomposition(*(reference.to_numpy(t) for t in (z, mu, logvar)), name, N)
    tol = dict(rtol=1e-10, atol=1e-9) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    for field, value in want.items():
        np.testing.assert_allclose(getattr(got, field).double().numpy(), value, err_msg=field, **tol)
    tc = tcestim.total_correlation(z, mu, logvar, dataset_size=N, estimator=name)
    np.testing.assert_allclose(float(tc), want["tc"].mean(), **tol)


def test_stratified_with_whole_population_is_the_exact_mixture():
    z, mu, logvar = batch(30, 5, seed=3)
    d = tcestim.decompose(z, mu, logvar, estimator="stratified")  # dataset_size None: N = B
    lw = np.full((30, 30), -math.log(30))
    want_qz, want_qzd = reference.mixture_logdensity(*(t.numpy() for t in (z, mu, logvar)), lw)
    np.testing.assert_allclose(d.log_qz.numpy(), want_qz, rtol=1e-12)
    np.testing.assert_allclose(d.log_qzd.numpy(), want_qzd, rtol=1e-12)


def test_mws_offset_is_about_d_minus_one_log_n():
    """MWS as written in the paper: TC offset by (D-1) log N relative to properly weighted sums."""
    B, D, N = 32, 6, 10_000
    z, mu, logvar = batch(B, D, seed=4)
    mws = tcestim.decompose(z, mu, logvar, dataset_size=N, estimator="mws")
    uniform = tcestim.log_aggregate_posterior(z, mu, logvar)  # weights 1/B
    np.testing.assert_allclose((mws.tc - (uniform[0] - uniform[1].sum(1))).numpy(), (D - 1) * math.log(N), rtol=1e-10)


def test_mi_does_not_saturate_with_correct_weights_but_legacy_does():
    """Peaked, well-separated posteriors: each z identifies its n, so I(z; n) = log N.

    Correct "mss"/"stratified" weights recover log N; the reference code's matrix weights the
    query's own component by 1/(B-1) for every row but 0, capping the MI near log(B - 1).
    """
    B, D, N = 64, 4, 20_000
    g = torch.Generator().manual_seed(5)
    mu = 10.0 * torch.randn(B, D, generator=g, dtype=torch.float64)
    logvar = torch.full((B, D), -12.0, dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(B, D, generator=g, dtype=torch.float64)
    for name in ("stratified", "mss"):
        mi = float(tcestim.decompose(z, mu, logvar, dataset_size=N, estimator=name).mi.mean())
        assert abs(mi - math.log(N)) < 0.05, (name, mi)
    legacy = float(tcestim.decompose(z, mu, logvar, dataset_size=N, estimator="mss-legacy").mi.mean())
    assert legacy < math.log(B - 1) + 0.2 < math.log(N) - 4, legacy


def test_prior_argument():
    z, mu, logvar = batch(10, 3, seed=6)
    normal = torch.distributions.Normal(torch.zeros(3, dtype=torch.float64), 2.0 * torch.ones(3, dtype=torch.float64))
    by_distribution = tcestim.decompose(z, mu, logvar, prior=normal)
    by_callable = tcestim.decompose(z, mu, logvar, prior=lambda x: normal.log_prob(x))
    want_log_pz = (-0.5 * (math.log(2 * math.pi) + 2 * math.log(2.0) + z.numpy() ** 2 / 4)).sum(1)
    np.testing.assert_allclose(by_distribution.log_pz.numpy(), want_log_pz, rtol=1e-12)
    torch.testing.assert_close(by_callable.dimkl, by_distribution.dimkl)
    default = tcestim.decompose(z, mu, logvar)
    assert not torch.allclose(default.dimkl, by_distribution.dimkl)


def test_decomposition_means_helper():
    z, mu, logvar = batch(12, 3, seed=7)
    d = tcestim.decompose(z, mu, logvar)
    means = d.means()
    assert set(means) == {"mi", "tc", "dimkl"}
    assert means["tc"] == pytest.approx(float(d.tc.mean()))


def test_gradients_flow_through_total_correlation():
    z, mu, logvar = (t.requires_grad_() for t in batch(8, 3, seed=8))
    assert torch.autograd.gradcheck(
        lambda z, m, v: tcestim.total_correlation(z, m, v, dataset_size=100), (z, mu, logvar))


# Gaussian closed forms ------------------------------------------------------------------------

def test_gaussian_total_correlation_closed_forms():
    rho = 0.6
    cov2 = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    assert float(tcestim.gaussian_total_correlation(cov2)) == pytest.approx(-0.5 * math.log(1 - rho ** 2), rel=1e-12)
    diag = torch.diag(torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64))
    assert float(tcestim.gaussian_total_correlation(diag)) == pytest.approx(0.0, abs=1e-14)
    g = torch.Generator().manual_seed(9)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64)
    cov = A @ A.T + 0.5 * torch.eye(5, dtype=torch.float64)
    want = 0.5 * (np.log(np.diag(cov.numpy())).sum() - np.linalg.slogdet(cov.numpy())[1])
    assert float(tcestim.gaussian_total_correlation(cov)) == pytest.approx(want, rel=1e-12)
    batched = tcestim.gaussian_total_correlation(torch.stack([cov, diag.new_tensor(np.eye(5))]))
    assert batched.shape == (2,) and float(batched[1]) == pytest.approx(0.0, abs=1e-14)


def test_gaussian_tc_of_means_matches_numpy():
    g = torch.Generator().manual_seed(10)
    mu = torch.randn(200, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 4, generator=g, dtype=torch.float64)
    cov = np.cov(mu.numpy(), rowvar=False)
    want = 0.5 * (np.log(np.diag(cov)).sum() - np.linalg.slogdet(cov)[1])
    assert float(tcestim.gaussian_tc_of_means(mu)) == pytest.approx(want, rel=1e-10)


def test_minibatch_estimates_approach_the_gaussian_limit():
    """Large N, broad encoder: stratified TC over the whole population is near the closed form."""
    from tcestim.experiments.synthetic import gaussian_limit_tc, make_posterior

    post = make_posterior(4096, 3, rho=0.5, noise_std=1.0, generator=torch.Generator().manual_seed(11),
                          dtype=torch.float64)
    z = post.sample(torch.arange(4096), torch.Generator().manual_seed(12))
    tc = float(tcestim.total_correlation(z, post.mu, post.logvar))
    assert tc == pytest.approx(gaussian_limit_tc(post), abs=0.03)


# Command line ---------------------------------------------------------------------------------

def test_demo_command_prints_every_estimator():
    out = subprocess.run([sys.executable, "-m", "tcestim", "demo", "--quick"], capture_output=True,
                         text=True, check=True, timeout=300).stdout
    header = next(line for line in out.splitlines() if line.startswith("| D"))
    for column in ("gaussian", "exact", *ESTIMATORS):
        assert column in header
    rows = [line for line in out.splitlines() if line.startswith("| 2 ") or line.startswith("| 4 ")]
    assert len(rows) == 2
