"""tcestim.losses against independent float64 computations written here (NumPy / SciPy, no tcestim
code), the ELBO identity, gradients and argument checks."""
import math

import numpy as np
import pytest
import torch

from tcestim import losses as L
from tcestim import priors as P

stats = pytest.importorskip("scipy.stats")
special = pytest.importorskip("scipy.special")

B, D, N = 6, 3, 50
LOG_2PI = math.log(2 * math.pi)


def _np(t):
    return t.detach().cpu().double().numpy()


@pytest.fixture
def batch():
    """A fixed float64 batch: log_px (B,), z, mu, logvar (B, D); leaves that require grad."""
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(B, D, generator=g, dtype=torch.float64)
    logvar = 0.4 * torch.randn(B, D, generator=g, dtype=torch.float64) - 0.5
    eps = torch.randn(B, D, generator=g, dtype=torch.float64)
    log_px = -10.0 + torch.randn(B, generator=g, dtype=torch.float64)
    mu.requires_grad_(True)
    logvar.requires_grad_(True)
    log_px.requires_grad_(True)
    z = mu + eps * (0.5 * logvar).exp()
    return log_px, z, mu, logvar


# ----------------------------------------------------------------------------------------------
# independent references (float64 NumPy)


def ref_log_normal(x, mean, logvar):
    return -0.5 * (LOG_2PI + logvar + (x - mean) ** 2 / np.exp(logvar))


def ref_stratified(z, mu, logvar, n):
    """log q(z_i) and log q(z_id) with the stratified weight matrix built by hand."""
    b = z.shape[0]
    w = np.full((b, b), (n - 1) / (n * (b - 1)))
    np.fill_diagonal(w, 1.0 / n)
    cube = ref_log_normal(z[:, None, :], mu[None], logvar[None])  # (B, B, D)
    log_qz = special.logsumexp(np.log(w) + cube.sum(-1), axis=1)
    log_qzd = special.logsumexp(np.log(w)[:, :, None] + cube, axis=1)
    return log_qz, log_qzd


def ref_terms(batch, log_pzd_fn=lambda x: stats.norm.logpdf(x)):
    log_px, z, mu, logvar = (_np(t) for t in batch)
    log_qz, log_qzd = ref_stratified(z, mu, logvar, N)
    log_qzx = ref_log_normal(z, mu, logvar).sum(1)
    log_pzd = log_pzd_fn(z)
    return dict(log_px=log_px, mi=log_qzx - log_qz, tc=log_qz - log_qzd.sum(1),
                dimkl=(log_qzd - log_pzd).sum(1), log_qzx=log_qzx, log_qz=log_qz, log_pz=log_pzd.sum(1))


def ref_gaussian_kl(mu, logvar):
    return 0.5 * (mu ** 2 + np.exp(logvar) - 1.0 - logvar).sum(1)


def ref_mmd_imq(x, y, c):
    n, m = len(x), len(y)
    k = lambda a, b: c / (c + float(np.sum((a - b) ** 2)))  # noqa: E731
    sxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    syy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    sxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
    return sxx + syy - 2.0 * sxy


def ref_uniform_mixture_logpdf(y, mu, logvar):
    """log (1/K) sum_k prod_d N(y_d; mu_kd, exp(logvar_kd)), naive densities (no logsumexp)."""
    out = []
    for row in y:
        dens = [np.prod(np.exp(ref_log_normal(row, mu[k], logvar[k]))) for k in range(len(mu))]
        out.append(np.log(np.mean(dens)))
    return np.array(out)


def close(actual, expected, tol=1e-10):
    np.testing.assert_allclose(_np(actual) if isinstance(actual, torch.Tensor) else actual,
                               expected, rtol=tol, atol=tol)


# ----------------------------------------------------------------------------------------------
# values against independent computations


def test_gaussian_kl_closed_form(batch):
    _, _, mu, logvar = batch
    close(L.gaussian_kl(mu, logvar), ref_gaussian_kl(_np(mu), _np(logvar)))
    # against torch.distributions as a second opinion
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    close(L.gaussian_kl(mu, logvar), _np(torch.distributions.kl_divergence(q, p).sum(1)))


def test_beta_vae(batch):
    log_px, _, mu, logvar = batch
    beta = 4.0
    obj = L.beta_vae(log_px, mu, logvar, kl_weight=beta)
    kl = ref_gaussian_kl(_np(mu), _np(logvar)).mean()
    recon = -_np(log_px).mean()
    close(obj.loss, recon + beta * kl)
    assert obj.loss.shape == ()
    close(obj.terms["kl"], kl)
    close(obj.terms["recon"], recon)
    close(obj.terms["elbo"], -recon - kl)
    assert set(obj.terms) == {"loss", "recon", "kl", "elbo"}
    assert obj.weights == {"kl_weight": beta}
    assert all(isinstance(v, torch.Tensor) and v.shape == () and not v.requires_grad for v in obj.terms.values())
    assert obj.floats() == {name: float(value) for name, value in obj.terms.items()}


def test_beta_tcvae_matches_reference(batch):
    log_px, z, mu, logvar = batch
    alpha, beta, gamma = 0.5, 6.0, 2.0
    obj = L.beta_tcvae(log_px, z, mu, logvar, dataset_size=N, mi_weight=alpha, tc_weight=beta, dimkl_weight=gamma)
    r = ref_terms(batch)
    expected = -r["log_px"].mean() + alpha * r["mi"].mean() + beta * r["tc"].mean() + gamma * r["dimkl"].mean()
    close(obj.loss, expected)
    for name in ("mi", "tc", "dimkl"):
        close(obj.terms[name], r[name].mean())
    close(obj.terms["kl"], (r["log_qzx"] - r["log_pz"]).mean())


@pytest.mark.parametrize("prior", [None, P.FactorisedStudentT(D, 3.0).double(), P.SpikeAndSlab(D, 0.6).double()],
                         ids=["normal", "student_t", "spike_and_slab"])
@pytest.mark.parametrize("estimator", ["stratified", "mss", "mws"])
def test_beta_tcvae_with_unit_weights_is_the_negative_elbo(batch, prior, estimator):
    log_px, z, mu, logvar = batch
    obj = L.beta_tcvae(log_px, z, mu, logvar, dataset_size=N, mi_weight=1.0, tc_weight=1.0, dimkl_weight=1.0,
                       estimator=estimator, prior=prior)
    log_qzx = torch.distributions.Normal(mu, (0.5 * logvar).exp()).log_prob(z).sum(1)
    log_pz = P.prior_log_prob(prior, z)
    neg_elbo = -(log_px - (log_qzx - log_pz)).mean()
    torch.testing.assert_close(obj.loss, neg_elbo, rtol=1e-12, atol=1e-12)
    close(obj.terms["elbo"], -float(neg_elbo.detach()), tol=1e-12)


def test_beta_tcvae_with_student_t_prior_matches_reference(batch):
    log_px, z, mu, logvar = batch
    obj = L.beta_tcvae(log_px, z, mu, logvar, dataset_size=N, tc_weight=3.0, prior=P.FactorisedStudentT(D, 3.0))
    r = ref_terms(batch, lambda x: stats.t.logpdf(x, df=3.0))
    close(obj.loss, -r["log_px"].mean() + r["mi"].mean() + 3.0 * r["tc"].mean() + r["dimkl"].mean())


def test_rtc_variance_penalty_closed_form(batch):
    logvar = _np(batch[3])
    expected = sum(np.mean([math.exp(logvar[n, d]) for n in range(B)]) for d in range(D))
    close(L.rtc_variance_penalty(batch[3]), expected)


def test_rtc_vae_matches_reference(batch):
    log_px, z, mu, logvar = batch
    beta, eta = 5.0, 10.0
    obj = L.rtc_vae(log_px, z, mu, logvar, dataset_size=N, tc_weight=1.0 + beta, variance_weight=eta)
    r = ref_terms(batch)
    neg_elbo = -(r["log_px"] - (r["log_qzx"] - r["log_pz"])).mean()
    penalty = np.exp(_np(logvar)).mean(0).sum()
    # RTC-VAE eq. 3-4: -L_RTC = -ELBO + beta TC + eta sum_d E_n sigma_d^2
    close(obj.loss, neg_elbo + beta * r["tc"].mean() + eta * penalty)
    close(obj.terms["var_penalty"], penalty)
    assert obj.weights["tc_weight"] == 1.0 + beta and obj.weights["variance_weight"] == eta
    # the same as beta_tcvae with TC weight 1 + beta, plus the penalty
    base = L.beta_tcvae(log_px, z, mu, logvar, dataset_size=N, tc_weight=1.0 + beta)
    torch.testing.assert_close(obj.loss, base.loss + eta * L.rtc_variance_penalty(logvar), rtol=1e-12, atol=1e-12)


def test_decomposition_objective_kl_standard_normal(batch):
    log_px, z, mu, logvar = batch
    beta, alpha = 2.0, 3.0
    obj = L.decomposition_objective(log_px, z, mu, logvar, dataset_size=N, kl_weight=beta, divergence_weight=alpha,
                                    divergence="kl")
    r = ref_terms(batch)
    kl = ref_gaussian_kl(_np(mu), _np(logvar)).mean()
    div = (r["log_qz"] - r["log_pz"]).mean()
    close(obj.loss, -r["log_px"].mean() + beta * kl + alpha * div)
    close(obj.terms["divergence"], div)
    close(obj.terms["kl"], kl)
    assert obj.terms["kl_analytic"] == 1.0
    # beta = 1, alpha = 0 with a Gaussian prior is the VAE (beta-VAE with beta = 1)
    vae = L.decomposition_objective(log_px, z, mu, logvar, dataset_size=N, kl_weight=1.0, divergence_weight=0.0)
    torch.testing.assert_close(vae.loss, L.beta_vae(log_px, mu, logvar, 1.0).loss, rtol=1e-12, atol=1e-12)


def test_decomposition_objective_kl_mixture_prior_monte_carlo(batch):
    log_px, z, mu, logvar = batch
    g = torch.Generator().manual_seed(2)
    means = torch.randn(4, D, generator=g, dtype=torch.float64)
    prior = P.MixtureOfGaussians(means, math.log(0.7)).double()
    obj = L.decomposition_objective(log_px, z, mu, logvar, dataset_size=N, kl_weight=1.5, divergence_weight=2.0,
                                    divergence="kl", prior=prior)
    zn = _np(z)
    log_pz = np.array([special.logsumexp([np.log(0.25) + stats.norm.logpdf(row, m, 0.7).sum()
                                          for m in _np(means)]) for row in zn])
    r = ref_terms(batch)
    kl_mc = (r["log_qzx"] - log_pz).mean()
    div = (r["log_qz"] - log_pz).mean()
    close(obj.loss, -r["log_px"].mean() + 1.5 * kl_mc + 2.0 * div, tol=1e-6)  # float32 log(0.7) in the prior
    assert obj.terms["kl_analytic"] == 0.0


def test_decomposition_objective_inclusive_kl(batch):
    log_px, z, mu, logvar = batch
    ys = torch.randn(7, D, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    prior = P.SpikeAndSlab(D, 0.5, spike_scale=0.3)
    obj = L.decomposition_objective(log_px, z, mu, logvar, dataset_size=N, kl_weight=1.0, divergence_weight=5.0,
                                    divergence="inclusive_kl", prior=prior, prior_samples=ys)
    y = _np(ys)
    log_p = np.log(0.5 * stats.norm.pdf(y, scale=1.0) + 0.5 * stats.norm.pdf(y, scale=0.3)).sum(1)
    log_q = ref_uniform_mixture_logpdf(y, _np(mu), _np(logvar))
    div = (log_p - log_q).mean()
    zn = _np(z)
    log_pz = np.log(0.5 * stats.norm.pdf(zn, scale=1.0) + 0.5 * stats.norm.pdf(zn, scale=0.3)).sum(1)
    kl_mc = (ref_log_normal(zn, _np(mu), _np(logvar)).sum(1) - log_pz).mean()
    close(obj.terms["divergence"], div)
    close(obj.loss, -_np(log_px).mean() + kl_mc + 5.0 * div)


@pytest.mark.parametrize("c", [None, 0.7])
def test_mmd_imq_matches_double_loop(batch, c):
    z = batch[1]
    ys = torch.randn(5, D, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    expected = ref_mmd_imq(_np(z), _np(ys), 2.0 * D if c is None else c)
    close(L.mmd_imq(z, ys, c=c), expected, tol=1e-12)
    # identical samples: the unbiased estimate is small but (typically) not exactly 0
    assert abs(float(L.mmd_imq(ys, ys))) < 1.0


def test_decomposition_objective_mmd(batch):
    log_px, z, mu, logvar = batch
    ys = torch.randn(8, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    obj = L.decomposition_objective(log_px, z, mu, logvar, dataset_size=N, kl_weight=0.5, divergence_weight=100.0,
                                    divergence="mmd", prior_samples=ys)
    mmd = ref_mmd_imq(_np(z), _np(ys), 2.0 * D)
    kl = ref_gaussian_kl(_np(mu), _np(logvar)).mean()
    close(obj.terms["divergence"], mmd)
    close(obj.loss, -_np(log_px).mean() + 0.5 * kl + 100.0 * mmd)


def test_decomposition_objective_draws_prior_samples(batch):
    log_px, z, mu, logvar = batch
    prior = P.FactorisedStudentT(D, 4.0)
    kw = dict(dataset_size=N, divergence_weight=1.0, divergence="mmd", prior=prior)
    a = L.decomposition_objective(log_px, z, mu, logvar, generator=torch.Generator().manual_seed(0), **kw)
    b = L.decomposition_objective(log_px, z, mu, logvar, generator=torch.Generator().manual_seed(0), **kw)
    assert a.floats() == b.floats()
    ys = prior.sample(B, generator=torch.Generator().manual_seed(0)).double()
    close(a.terms["divergence"], ref_mmd_imq(_np(z), _np(ys), 2.0 * D), tol=1e-6)


def test_analytic_kl_for_gaussian_priors(batch):
    log_px, z, mu, logvar = batch
    scales = [0.5, 1.0, 2.0]
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    for prior in (P.AnisotropicGaussian(D, scales).double(),
                  torch.distributions.Normal(torch.tensor([0.1, -0.2, 0.3], dtype=torch.float64),
                                             torch.tensor(scales, dtype=torch.float64))):
        p = torch.distributions.Normal(torch.zeros(D, dtype=torch.float64) if isinstance(prior, P.Prior)
                                       else prior.loc, torch.tensor(scales, dtype=torch.float64))
        expected = torch.distributions.kl_divergence(q, p).sum(1).mean().detach()
        obj = L.decomposition_objective(log_px, z, mu, logvar, dataset_size=N, prior=prior)
        assert obj.terms["kl_analytic"] == 1.0
        close(obj.terms["kl"], float(expected), tol=1e-7)
        mc = L.decomposition_objective(log_px, z, mu, logvar, dataset_size=N, prior=prior, kl="sample")
        assert mc.terms["kl_analytic"] == 0.0
        close(mc.terms["kl"], float((q.log_prob(z).sum(1) - P.prior_log_prob(prior, z)).mean().detach()), tol=1e-10)
    with pytest.raises(ValueError, match="analytic"):
        L.decomposition_objective(log_px, z, mu, logvar, dataset_size=N, prior=P.FactorisedStudentT(D, 3.0),
                                  kl="analytic")


# ----------------------------------------------------------------------------------------------
# gradients


def _objectives(prior):
    yield "beta_vae", lambda lp, z, mu, lv: L.beta_vae(lp, mu, lv, 4.0)
    yield "beta_tcvae", lambda lp, z, mu, lv: L.beta_tcvae(lp, z, mu, lv, dataset_size=N, prior=prior)
    yield "rtc_vae", lambda lp, z, mu, lv: L.rtc_vae(lp, z, mu, lv, dataset_size=N, tc_weight=6.0,
                                                     variance_weight=10.0, prior=prior)
    for div in L.DIVERGENCES:
        yield div, lambda lp, z, mu, lv, div=div: L.decomposition_objective(
            lp, z, mu, lv, dataset_size=N, kl_weight=2.0, divergence_weight=3.0, divergence=div, prior=prior,
            generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_every_objective_backpropagates(batch, dtype):
    prior = P.AnisotropicGaussian(D, [0.5, 1.0, 2.0]).to(dtype)
    for name, fn in _objectives(prior):
        prior.zero_grad()
        log_px, _, mu, logvar = (t.detach().to(dtype).requires_grad_(True) for t in batch)
        eps = torch.randn(B, D, generator=torch.Generator().manual_seed(1), dtype=dtype)
        z = mu + eps * (0.5 * logvar).exp()
        obj = fn(log_px, z, mu, logvar)
        assert obj.loss.shape == () and obj.loss.dtype == dtype, name
        assert math.isfinite(obj.terms["loss"]), name
        obj.loss.backward()
        for t in (log_px, mu, logvar):
            assert t.grad is not None and torch.isfinite(t.grad).all(), name
        torch.testing.assert_close(log_px.grad, torch.full_like(log_px, -1.0 / B))
        if name != "beta_vae":  # beta_vae's KL is to N(0, I), not to the prior
            g = prior.log_scale.grad
            assert g is not None and torch.isfinite(g).all() and (g != 0).any(), name


def test_gradcheck_float64():
    g = torch.Generator().manual_seed(7)
    b, d, n = 4, 2, 20
    log_px = torch.randn(b, generator=g, dtype=torch.float64, requires_grad=True)
    z = torch.randn(b, d, generator=g, dtype=torch.float64, requires_grad=True)
    mu = (z.detach() + 0.3 * torch.randn(b, d, generator=g, dtype=torch.float64)).requires_grad_(True)
    logvar = (0.3 * torch.randn(b, d, generator=g, dtype=torch.float64)).requires_grad_(True)
    ys = torch.randn(5, d, generator=g, dtype=torch.float64)
    prior = P.FactorisedStudentT(d, 3.0).double()

    def tcvae(lp, z_, m, lv):
        return L.rtc_vae(lp, z_, m, lv, dataset_size=n, tc_weight=3.0, variance_weight=0.5, prior=prior).loss

    def inclusive(lp, z_, m, lv):
        return L.decomposition_objective(lp, z_, m, lv, dataset_size=n, kl_weight=1.5, divergence_weight=2.0,
                                         divergence="inclusive_kl", prior=prior, prior_samples=ys).loss

    def mmd(lp, z_, m, lv):
        return L.decomposition_objective(lp, z_, m, lv, dataset_size=n, divergence_weight=2.0, divergence="mmd",
                                         prior_samples=ys).loss

    for fn in (tcvae, inclusive, mmd):
        assert torch.autograd.gradcheck(fn, (log_px, z, mu, logvar), eps=1e-6, atol=1e-6, rtol=1e-5)


# ----------------------------------------------------------------------------------------------
# argument checks


def test_bad_arguments(batch):
    log_px, z, mu, logvar = (t.detach() for t in batch)
    with pytest.raises(ValueError, match="log_px"):
        L.beta_vae(log_px[:-1], mu, logvar, 1.0)
    with pytest.raises(ValueError, match="log_px"):
        L.beta_tcvae(log_px[:, None], z, mu, logvar, dataset_size=N)
    with pytest.raises(ValueError, match="kl_weight"):
        L.beta_vae(log_px, mu, logvar, float("nan"))
    with pytest.raises(TypeError, match="kl_weight"):
        L.beta_vae(log_px, mu, logvar, "4")
    with pytest.raises(ValueError, match="logvar"):
        L.beta_vae(log_px, mu, logvar[:, :-1], 1.0)
    with pytest.raises(ValueError, match="divergence"):
        L.decomposition_objective(log_px, z, mu, logvar, dataset_size=N, divergence="js")
    with pytest.raises(ValueError, match="prior_samples"):
        L.decomposition_objective(log_px, z, mu, logvar, dataset_size=N, divergence="mmd",
                                  prior_samples=torch.zeros(4, D + 1, dtype=z.dtype))
    with pytest.raises(ValueError, match="at least 2"):
        L.mmd_imq(z, z[:1])
    with pytest.raises(ValueError, match="dataset_size"):
        L.beta_tcvae(log_px, z, mu, logvar, dataset_size=B - 1)
    with pytest.raises(TypeError, match="dataset_size"):
        L.beta_tcvae(log_px, z, mu, logvar)  # dataset_size is a required keyword
    mog = P.MixtureOfGaussians(torch.zeros(2, D))
    with pytest.raises(P.NonFactorisedPriorError, match="decomposition_objective"):
        L.beta_tcvae(log_px, z, mu, logvar, dataset_size=N, prior=mog)
    with pytest.raises(TypeError, match="prior_samples"):
        L.decomposition_objective(log_px, z, mu, logvar, dataset_size=N, divergence="mmd",
                                  prior=lambda x: -x.square())


def test_tcestim_namespace_unchanged():
    # the new modules are importable as submodules without touching the package's __init__
    import tcestim.losses
    import tcestim.priors
    assert tcestim.losses.Objective is L.Objective and tcestim.priors.Prior is P.Prior


# ----------------------------------------------------------------------------------------------
# the 0.1 keywords (alpha, beta, gamma, eta) map onto the weights' names, with a warning


@pytest.mark.parametrize("old, new", [
    (lambda b: L.beta_vae(*b[:1], *b[2:], beta=4.0), lambda b: L.beta_vae(*b[:1], *b[2:], kl_weight=4.0)),
    (lambda b: L.beta_tcvae(*b, dataset_size=N, alpha=0.5, beta=3.0, gamma=2.0),
     lambda b: L.beta_tcvae(*b, dataset_size=N, mi_weight=0.5, tc_weight=3.0, dimkl_weight=2.0)),
    (lambda b: L.rtc_vae(*b, dataset_size=N, beta=5.0, eta=10.0),
     lambda b: L.rtc_vae(*b, dataset_size=N, tc_weight=6.0, variance_weight=10.0)),
    (lambda b: L.decomposition_objective(*b, dataset_size=N, beta=1.5, alpha=2.0),
     lambda b: L.decomposition_objective(*b, dataset_size=N, kl_weight=1.5, divergence_weight=2.0)),
], ids=["beta_vae", "beta_tcvae", "rtc_vae", "decomposition_objective"])
def test_deprecated_weight_names_warn_and_mean_the_same(batch, old, new):
    with pytest.warns(DeprecationWarning, match="is deprecated since tcestim 0.2: use"):
        before = old(batch)
    after = new(batch)
    assert float(before.loss.detach()) == float(after.loss.detach())
    assert before.weights == after.weights


def test_deprecated_weight_names_refuse_ambiguity(batch):
    with pytest.raises(TypeError, match="got both tc_weight= and its deprecated alias beta="):
        L.beta_tcvae(*batch, dataset_size=N, tc_weight=2.0, beta=3.0)
    with pytest.raises(TypeError, match="unexpected keyword argument 'delta'"):
        L.beta_tcvae(*batch, dataset_size=N, delta=3.0)
    with pytest.raises(TypeError, match="missing required keyword argument 'variance_weight'"):
        L.rtc_vae(*batch, dataset_size=N, tc_weight=2.0)
