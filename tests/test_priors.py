"""tcestim.priors against torch.distributions / SciPy closed forms, sampling moments, gradients,
argument checks, and use as ``prior=`` in tcestim.decompose."""
import math

import numpy as np
import pytest
import torch

import tcestim
from tcestim import priors as P

stats = pytest.importorskip("scipy.stats")
special = pytest.importorskip("scipy.special")

D = 3


def _z(B=7, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, D, generator=g, dtype=dtype) * 2.0


def _np(t):
    return t.detach().cpu().double().numpy()


def _factorised_priors():
    return [
        P.StandardNormal(D),
        P.AnisotropicGaussian(D, [0.5, 1.0, 2.0]),
        P.FactorisedStudentT(D, 3.0, scale=[1.0, 0.5, 2.0]),
        P.SpikeAndSlab(D, 0.7, spike_scale=0.05, slab_scale=1.5),
    ]


# ----------------------------------------------------------------------------------------------
# log densities against closed forms


def test_standard_normal_matches_torch():
    z = _z()
    expected = torch.distributions.Normal(0.0, 1.0).log_prob(z)
    torch.testing.assert_close(P.StandardNormal(D).log_prob_per_dim(z), expected, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(P.StandardNormal(D).log_prob(z), expected.sum(1), rtol=1e-12, atol=1e-12)


def test_anisotropic_gaussian_matches_scipy():
    scales = np.array([0.5, 1.0, 2.0])
    z = _z()
    prior = P.AnisotropicGaussian(D, scales.tolist())
    expected = stats.norm.logpdf(_np(z), loc=0.0, scale=scales)
    # float32 parameters: log(scale) is rounded to float32
    np.testing.assert_allclose(_np(prior.log_prob_per_dim(z)), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_np(prior.log_prob(z)), expected.sum(1), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(_np(prior.scale), scales, rtol=1e-6)


def test_student_t_matches_scipy_and_torch():
    z = _z()
    scale = np.array([1.0, 0.5, 2.0])
    for nu in (0.7, 3.0, 30.0):
        prior = P.FactorisedStudentT(D, nu, scale=scale.tolist()).double()
        expected = stats.t.logpdf(_np(z), df=nu, loc=0.0, scale=scale)
        np.testing.assert_allclose(_np(prior.log_prob_per_dim(z)), expected, rtol=1e-11, atol=1e-11)
        np.testing.assert_allclose(_np(prior.log_prob(z)), expected.sum(1), rtol=1e-11, atol=1e-11)
        torch_t = torch.distributions.StudentT(nu, torch.zeros(D, dtype=torch.float64),
                                               torch.tensor(scale)).log_prob(z)
        torch.testing.assert_close(prior.log_prob_per_dim(z), torch_t, rtol=1e-10, atol=1e-10)


def test_spike_and_slab_matches_scipy():
    z = torch.cat([_z(), torch.tensor([[0.0, 1e-3, -40.0]], dtype=torch.float64)])  # includes far tails
    gamma, spike, slab = 0.7, 0.05, 1.5
    prior = P.SpikeAndSlab(D, gamma, spike_scale=spike, slab_scale=slab)
    x = _np(z)
    expected = special.logsumexp(
        np.stack([np.log1p(-gamma) + stats.norm.logpdf(x, scale=slab),
                  np.log(gamma) + stats.norm.logpdf(x, scale=spike)]), axis=0)
    np.testing.assert_allclose(_np(prior.log_prob_per_dim(z)), expected, rtol=1e-12, atol=1e-12)
    assert torch.isfinite(prior.log_prob(z)).all()


def _naive_mog_logpdf(x, means, scales, weights):
    """float64 log sum_c w_c prod_d N(x_d; m_cd, s_cd) via logsumexp, row by row."""
    out = []
    for row in x:
        comp = [np.log(w) + stats.norm.logpdf(row, loc=m, scale=s).sum()
                for m, s, w in zip(means, scales, weights)]
        out.append(special.logsumexp(comp))
    return np.array(out)


def test_mixture_of_gaussians_matches_naive_and_torch():
    g = torch.Generator().manual_seed(1)
    means = torch.randn(4, D, generator=g, dtype=torch.float64)
    log_scales = 0.3 * torch.randn(4, D, generator=g, dtype=torch.float64)
    weights = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)
    prior = P.MixtureOfGaussians(means, log_scales, weights).double()
    z = _z()
    expected = _naive_mog_logpdf(_np(z), _np(means), np.exp(_np(log_scales)), _np(weights))
    np.testing.assert_allclose(_np(prior.log_prob(z)), expected, rtol=1e-6, atol=1e-6)  # float32 params
    mix = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(probs=prior.weights),
        torch.distributions.Independent(torch.distributions.Normal(prior.means, prior.log_scales.exp()), 1))
    torch.testing.assert_close(prior.log_prob(z), mix.log_prob(z), rtol=1e-7, atol=1e-7)  # float32 weights


def test_mixture_scalar_log_scale_and_unnormalised_weights():
    # Mathieu et al. eq. 9: D = 2, C = 4, variance 0.03, means in {0, 1}^2
    means = [[0.0, 0.0], [0.0, 1.0], [1.0, 0.0], [1.0, 1.0]]
    prior = P.MixtureOfGaussians(means, 0.5 * math.log(0.03), weights=[2.0, 2.0, 2.0, 2.0])
    torch.testing.assert_close(prior.weights, torch.full((4,), 0.25))
    z = torch.tensor([[0.1, 0.9], [0.5, 0.5]], dtype=torch.float64)
    expected = _naive_mog_logpdf(_np(z), np.array(means), np.full((4, 2), math.sqrt(0.03)), [0.25] * 4)
    np.testing.assert_allclose(_np(prior.log_prob(z)), expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("prior", _factorised_priors(), ids=lambda p: type(p).__name__)
def test_per_dim_sums_to_joint_and_forward_is_per_dim(prior):
    z = _z()
    per_dim = prior.log_prob_per_dim(z)
    assert per_dim.shape == z.shape and per_dim.dtype == torch.float64
    torch.testing.assert_close(per_dim.sum(1), prior.log_prob(z), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(prior(z), per_dim)
    assert prior.factorised and P.is_factorised(prior)
    # float32 in, float32 out; half computed in float32
    assert prior.log_prob(z.float()).dtype == torch.float32
    assert prior.log_prob(z.half()).dtype == torch.float32


def test_non_factorised_prior_raises_clear_error():
    prior = P.MixtureOfGaussians(torch.randn(3, D))
    z = _z()
    assert not prior.factorised and not P.is_factorised(prior)
    for call in (prior.log_prob_per_dim, prior):
        with pytest.raises(P.NonFactorisedPriorError, match="factorised"):
            call(z)
    # the error is both a TypeError and a NotImplementedError
    with pytest.raises(TypeError):
        prior.log_prob_per_dim(z)
    with pytest.raises(NotImplementedError):
        prior.log_prob_per_dim(z)
    with pytest.raises(TypeError, match="dimension-wise KL"):
        tcestim.decompose(z, z, torch.zeros_like(z), dataset_size=10, prior=prior)


# ----------------------------------------------------------------------------------------------
# sampling


@pytest.mark.parametrize("prior", _factorised_priors() + [P.MixtureOfGaussians(torch.randn(2, D))],
                         ids=lambda p: type(p).__name__)
def test_sample_shapes_dtype_and_reproducibility(prior):
    s1 = prior.sample(5, generator=torch.Generator().manual_seed(3))
    s2 = prior.sample(5, generator=torch.Generator().manual_seed(3))
    assert s1.shape == (5, D) and s1.dtype == torch.float32
    torch.testing.assert_close(s1, s2, rtol=0, atol=0)
    assert prior.sample(0).shape == (0, D)
    assert prior.double().sample(4).dtype == torch.float64
    prior.float()


def test_sample_moments():
    n = 40_000
    gen = torch.Generator().manual_seed(0)
    s = P.StandardNormal(D).sample(n, generator=gen).double()
    np.testing.assert_allclose(_np(s.mean(0)), 0.0, atol=0.03)
    np.testing.assert_allclose(_np(s.var(0)), 1.0, rtol=0.05)

    scales = np.array([0.5, 1.0, 2.0])
    s = P.AnisotropicGaussian(D, scales.tolist()).sample(n, generator=gen).double()
    np.testing.assert_allclose(_np(s.std(0)), scales, rtol=0.03)

    gamma, spike, slab = 0.8, 0.05, 1.0
    s = P.SpikeAndSlab(D, gamma, spike, slab).sample(n, generator=gen).double()
    np.testing.assert_allclose(_np(s.var(0)), (1 - gamma) * slab ** 2 + gamma * spike ** 2, rtol=0.08)
    off = _np((s.abs() < 0.2).double().mean(0))  # P(|z| < 0.2) under the mixture
    expected_off = gamma * (2 * stats.norm.cdf(0.2 / spike) - 1) + (1 - gamma) * (2 * stats.norm.cdf(0.2 / slab) - 1)
    np.testing.assert_allclose(off, expected_off, atol=0.015)

    means = torch.tensor([[-2.0, 0.0, 1.0], [2.0, 1.0, -1.0]])
    mog = P.MixtureOfGaussians(means, math.log(0.5), weights=[0.25, 0.75])
    s = mog.sample(n, generator=gen).double()
    mean = 0.25 * means[0] + 0.75 * means[1]
    var = 0.25 + 0.25 * (means[0] - mean) ** 2 + 0.75 * (means[1] - mean) ** 2
    np.testing.assert_allclose(_np(s.mean(0)), _np(mean), atol=0.04)
    np.testing.assert_allclose(_np(s.var(0)), _np(var), rtol=0.05)


@pytest.mark.parametrize("nu", [0.5, 3.0, 10.0])
def test_student_t_samples_follow_the_distribution(nu):
    s = P.FactorisedStudentT(D, nu, scale=2.0).sample(100_000, generator=torch.Generator().manual_seed(1))
    x = _np(s).ravel() / 2.0
    assert np.isfinite(x).all()
    # Kolmogorov-Smirnov test against the exact CDF on 300k draws (seeded): sensitive to a ~2% scale error
    assert stats.kstest(x, stats.t(df=nu).cdf).pvalue > 1e-3


# ----------------------------------------------------------------------------------------------
# gradients


def test_learnable_scales_get_gradients():
    prior = P.AnisotropicGaussian(D, [0.5, 1.0, 2.0])
    assert [name for name, _ in prior.named_parameters()] == ["log_scale"]
    prior.log_prob(_z().float()).sum().backward()
    assert prior.log_scale.grad is not None and torch.isfinite(prior.log_scale.grad).all()
    assert (prior.log_scale.grad != 0).all()

    # samples are reparameterised: d sample / d log_scale = sample
    prior.zero_grad()
    s = prior.sample(6, generator=torch.Generator().manual_seed(0))
    s.sum().backward()
    torch.testing.assert_close(prior.log_scale.grad, s.detach().sum(0))

    fixed = P.AnisotropicGaussian(D, 2.0, learnable=False)
    assert list(fixed.parameters()) == [] and "log_scale" in dict(fixed.named_buffers())

    mog = P.MixtureOfGaussians(torch.randn(2, D), 0.0, learnable=True)
    mog.log_prob(_z().float()).sum().backward()
    assert torch.isfinite(mog.means.grad).all() and torch.isfinite(mog.log_scales.grad).all()


def test_learnable_prior_gets_gradients_through_decompose():
    prior = P.AnisotropicGaussian(D, [0.5, 1.0, 2.0]).double()
    z = _z(8)
    mu, logvar = z + 0.1, torch.full_like(z, -1.0)
    d = tcestim.decompose(z, mu, logvar, dataset_size=100, prior=prior)
    d.dimkl.mean().backward()
    assert prior.log_scale.grad is not None and torch.isfinite(prior.log_scale.grad).all()


# ----------------------------------------------------------------------------------------------
# argument checks


@pytest.mark.parametrize("make, match", [
    (lambda: P.StandardNormal(0), "dim"),
    (lambda: P.StandardNormal(-2), "dim"),
    (lambda: P.AnisotropicGaussian(3, [1.0, 0.0, 1.0]), "scales"),
    (lambda: P.AnisotropicGaussian(3, -1.0), "scales"),
    (lambda: P.AnisotropicGaussian(3, [1.0, 2.0]), "scales"),
    (lambda: P.AnisotropicGaussian(3, float("inf")), "scales"),
    (lambda: P.FactorisedStudentT(3, 0.0), "nu"),
    (lambda: P.FactorisedStudentT(3, -1.0), "nu"),
    (lambda: P.FactorisedStudentT(3, float("nan")), "nu"),
    (lambda: P.FactorisedStudentT(3, float("inf")), "nu"),
    (lambda: P.FactorisedStudentT(3, 3.0, scale=0.0), "scale"),
    (lambda: P.SpikeAndSlab(3, 0.0), "gamma"),
    (lambda: P.SpikeAndSlab(3, 1.0), "gamma"),
    (lambda: P.SpikeAndSlab(3, 1.5), "gamma"),
    (lambda: P.SpikeAndSlab(3, 0.5, spike_scale=0.0), "spike_scale"),
    (lambda: P.SpikeAndSlab(3, 0.5, slab_scale=-1.0), "slab_scale"),
    (lambda: P.MixtureOfGaussians(torch.zeros(3)), "means"),
    (lambda: P.MixtureOfGaussians(torch.zeros(0, 2)), "means"),
    (lambda: P.MixtureOfGaussians(torch.zeros(2, 3), torch.zeros(3, 3)), "log_scales"),
    (lambda: P.MixtureOfGaussians(torch.zeros(2, 3), float("inf")), "log_scales"),
    (lambda: P.MixtureOfGaussians(torch.zeros(2, 3), 0.0, [1.0, -1.0]), "weights"),
    (lambda: P.MixtureOfGaussians(torch.zeros(2, 3), 0.0, [1.0, 1.0, 1.0]), "weights"),
])
def test_bad_arguments_raise_value_error_naming_them(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize("dim", [2.5, True, "3", None])
def test_non_integer_dim_raises_type_error(dim):
    with pytest.raises(TypeError, match=r"^dim must be an int"):
        P.StandardNormal(dim)


def test_bad_types_and_inputs():
    with pytest.raises(TypeError, match="nu"):
        P.FactorisedStudentT(3, "3")
    with pytest.raises(TypeError, match="gamma"):
        P.SpikeAndSlab(3, None)
    prior = P.StandardNormal(3)
    with pytest.raises(ValueError, match="D = 3"):
        prior.log_prob(torch.zeros(4, 2))
    with pytest.raises(TypeError, match="floating"):
        prior.log_prob(torch.zeros(4, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="z must be a torch.Tensor"):
        prior.log_prob([[0.0, 0.0, 0.0]])
    with pytest.raises(ValueError, match="n must be"):
        prior.sample(-1)


# ----------------------------------------------------------------------------------------------
# prior= in tcestim.decompose


def _stratified_log_q(z, mu, logvar, N):
    """Naive float64 stratified mixture: self 1/N, every other batch member (N-1)/(N(B-1))."""
    B = z.shape[0]
    w = np.full((B, B), (N - 1) / (N * (B - 1)))
    np.fill_diagonal(w, 1.0 / N)
    cube = stats.norm.logpdf(z[:, None, :], loc=mu[None], scale=np.exp(0.5 * logvar)[None])  # (B, B, D)
    log_qz = special.logsumexp(np.log(w) + cube.sum(-1), axis=1)
    log_qzd = special.logsumexp(np.log(w)[:, :, None] + cube, axis=1)
    return log_qz, log_qzd


def test_decompose_with_student_t_prior_matches_manual_dimkl():
    g = torch.Generator().manual_seed(5)
    B, N, nu = 9, 200, 3.0
    mu = torch.randn(B, D, generator=g, dtype=torch.float64)
    logvar = 0.5 * torch.randn(B, D, generator=g, dtype=torch.float64) - 1.0
    z = mu + torch.randn(B, D, generator=g, dtype=torch.float64) * (0.5 * logvar).exp()

    d = tcestim.decompose(z, mu, logvar, dataset_size=N, prior=P.FactorisedStudentT(D, nu))

    zn, mun, lvn = _np(z), _np(mu), _np(logvar)
    log_qz, log_qzd = _stratified_log_q(zn, mun, lvn, N)
    log_pzd = stats.t.logpdf(zn, df=nu)
    log_qzx = stats.norm.logpdf(zn, loc=mun, scale=np.exp(0.5 * lvn)).sum(1)
    np.testing.assert_allclose(_np(d.dimkl), (log_qzd - log_pzd).sum(1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(_np(d.log_pz), log_pzd.sum(1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(_np(d.tc), log_qz - log_qzd.sum(1), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(_np(d.mi), log_qzx - log_qz, rtol=1e-9, atol=1e-9)
    # identity mi + tc + dimkl == log q(z|x) - log p(z)
    torch.testing.assert_close(d.mi + d.tc + d.dimkl, d.log_qzx - d.log_pz, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("prior", _factorised_priors(), ids=lambda p: type(p).__name__)
def test_every_factorised_prior_works_in_decompose(prior):
    z = _z(6)
    d = tcestim.decompose(z, z + 0.1, torch.full_like(z, -1.0), dataset_size=50, prior=prior)
    torch.testing.assert_close(d.log_pz, prior.log_prob(z), rtol=1e-12, atol=1e-12)


def test_helpers_prior_log_prob_and_sample_prior():
    z = _z()
    torch.testing.assert_close(P.prior_log_prob(None, z), P.StandardNormal(D).log_prob(z))
    normal = torch.distributions.Normal(torch.zeros(D, dtype=torch.float64), 2.0)
    torch.testing.assert_close(P.prior_log_prob(normal, z), normal.log_prob(z).sum(1))
    mvn = torch.distributions.MultivariateNormal(torch.zeros(D, dtype=torch.float64),
                                                 torch.eye(D, dtype=torch.float64))
    torch.testing.assert_close(P.prior_log_prob(mvn, z), P.prior_log_prob(None, z))
    torch.testing.assert_close(P.prior_log_prob(lambda x: -x.square(), z), -z.square().sum(1))
    with pytest.raises(ValueError, match="shape"):
        P.prior_log_prob(lambda x: x[:, :1], z)
    with pytest.raises(TypeError, match="prior"):
        P.prior_log_prob(3.0, z)
    assert P.sample_prior(None, 4, D).shape == (4, D)
    assert P.sample_prior(mvn, 4, D, dtype=torch.float64).dtype == torch.float64
    assert P.sample_prior(P.SpikeAndSlab(D, 0.5), 4, D).shape == (4, D)
    with pytest.raises(TypeError, match="prior_samples"):
        P.sample_prior(lambda x: x, 4, D)
    with pytest.raises(ValueError, match="dim"):
        P.sample_prior(P.StandardNormal(D + 1), 4, D)
