"""The recipes of docs/peers.md: each public implementation's TC estimate, written here from its
formula (a materialised cube in float64, not the peers' code), equals the tcestim call the page
gives for it. If a recipe on the page changes, change it here too."""
import math

import pytest
import torch

import tcestim

B, D, N = 16, 5, 1000


def cube(z, mu, logvar):
    """(B, B, D) log N(z_id; mu_jd, exp(logvar_jd))."""
    diff = z[:, None, :] - mu[None, :, :]
    return -0.5 * (math.log(2 * math.pi) + logvar[None] + diff ** 2 * torch.exp(-logvar[None]))


def tc_from(c, log_w_joint, log_w_marginal):
    log_qz = torch.logsumexp(log_w_joint + c.sum(2), dim=1)
    log_qzd = torch.logsumexp(log_w_marginal[:, :, None] + c, dim=1)
    return (log_qz - log_qzd.sum(1)).mean()


def chen_mss_matrix(b, n):
    """The reference code's matrix, built from its description: 1/(B-1) everywhere, column 0 is 1/N
    (its stride-B flat assignment), column 1 is (N-B+1)/(N(B-1)), and so is entry (B-2, 0)."""
    strat = (n - b + 1) / (n * (b - 1))
    w = torch.full((b, b), 1.0 / (b - 1), dtype=torch.float64)
    w[:, 0] = 1.0 / n
    w[:, 1] = strat
    w[b - 2, 0] = strat
    return w.log()


@pytest.fixture
def batch():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(B, D, generator=g, dtype=torch.float64)
    logvar = torch.rand(B, D, generator=g, dtype=torch.float64) - 2.0
    z = mu + torch.randn(B, D, generator=g, dtype=torch.float64) * (0.5 * logvar).exp()
    return z, mu, logvar


def test_chen_mws_is_mws(batch):
    z, mu, logvar = batch
    log_w = torch.full((B, B), -math.log(B * N), dtype=torch.float64)
    peer = tc_from(cube(*batch), log_w, log_w)
    ours = tcestim.total_correlation(z, mu, logvar, dataset_size=N, estimator="mws")
    torch.testing.assert_close(ours, peer)


def test_chen_mss_is_mss_legacy(batch):
    z, mu, logvar = batch
    log_w = chen_mss_matrix(B, N)
    peer = tc_from(cube(*batch), log_w, log_w)
    ours = tcestim.total_correlation(z, mu, logvar, dataset_size=N, estimator="mss-legacy")
    torch.testing.assert_close(ours, peer)
    # and it is not the corrected estimator
    assert not torch.allclose(ours, tcestim.total_correlation(z, mu, logvar, dataset_size=N, estimator="mss"))


def test_unnormalised_weights_recipe(batch):
    """disentanglement_lib, disent, PyTorch-VAE and disentangling-vae's is_mss=False: weight 1."""
    z, mu, logvar = batch
    zero = torch.zeros(B, B, dtype=torch.float64)
    peer = tc_from(cube(*batch), zero, zero)
    log_qz, log_qzd = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=0.0)
    torch.testing.assert_close((log_qz - log_qzd.sum(1)).mean(), peer)
    mws = tcestim.total_correlation(z, mu, logvar, dataset_size=N, estimator="mws")
    torch.testing.assert_close(mws - (D - 1) * math.log(B * N), peer)


def test_unnormalised_weights_have_mws_gradients(batch):
    z, mu, logvar = (t.clone().requires_grad_() for t in batch)
    log_qz, log_qzd = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=0.0)
    peer_grads = torch.autograd.grad((log_qz - log_qzd.sum(1)).mean(), (z, mu, logvar))
    mws = tcestim.total_correlation(z, mu, logvar, dataset_size=N, estimator="mws")
    for ours, theirs in zip(torch.autograd.grad(mws, (z, mu, logvar)), peer_grads):
        torch.testing.assert_close(ours, theirs)


def test_disentangling_vae_mss_recipe(batch):
    """disentangling-vae's default (is_mss=True) adds the log-weight to each of the D dimensions
    before summing them, so the joint sees it D times and the marginals once."""
    z, mu, logvar = batch
    log_w = chen_mss_matrix(B, N)
    peer = tc_from(cube(*batch), D * log_w, log_w)
    legacy = tcestim.estimator_log_weights("mss-legacy", B, N)
    log_qz, _ = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=D * legacy)
    _, log_qzd = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=legacy)
    torch.testing.assert_close((log_qz - log_qzd.sum(1)).mean(), peer)
    # it is neither mss-legacy nor mss
    for estimator in ("mss-legacy", "mss"):
        ours = tcestim.total_correlation(z, mu, logvar, dataset_size=N, estimator=estimator)
        assert abs(float(ours - peer)) > 1.0
