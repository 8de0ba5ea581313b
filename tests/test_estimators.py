"""tcestim.estimators (decompose, total_correlation): every estimator against the exact finite mixture and
the float64 reference, the known public bugs, the arguments (dataset_size, estimator, batch size,
prior), layouts and dtypes that must work, and NaN/Inf behaviour.

NaN/Inf behaviour asserted here (no exception is raised in any of these cases):
* NaN in z[i, d]: row i of log_qzx, log_qz, mi, tc, dimkl and log_qzd[i, d] are NaN; every other
  row, and the other columns of row i of log_qzd, stay finite (a NaN query poisons only itself).
* NaN in mu[j, d]: component j is in every row's mixture with a nonzero weight, so log_qz (all rows)
  and log_qzd[:, d] (all rows) are NaN, log_qzd[:, d' != d] stays finite, and log_qzx is NaN in row j
  only.
* z[i, d] = +inf or -inf: log_qzx[i], log_qz[i], log_qzd[i, d] and log_pz[i] are -inf (not NaN);
  every other entry stays finite. (mi, tc and dimkl of that row are differences of -inf terms and
  are not asserted; they are undefined.)
"""
import math

import numpy as np
import pytest
import torch

import tcestim

import reference
from helpers import FIELDS, NEED_TWO, assert_decompositions_close, close, posterior
from reference import decomposition as ref_decomposition
from reference import to_numpy

ESTIMATORS = ("stratified", "mss", "mws", "mss-legacy")
BATCH_FNS = {"decompose": tcestim.decompose, "total_correlation": tcestim.total_correlation}


def batch(B, D, dtype=torch.float64, seed=0, std=0.7):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(B, D, generator=g, dtype=torch.float64)
    logvar = (torch.full((B, D), 2 * math.log(std), dtype=torch.float64)
              + 0.2 * torch.randn(B, D, generator=g, dtype=torch.float64))
    z = mu + torch.exp(0.5 * logvar) * torch.randn(B, D, generator=g, dtype=torch.float64)
    return z.to(dtype), mu.to(dtype), logvar.to(dtype)


def with_arg(name, value, B=5, D=3):
    args = dict(zip(("z", "mu", "logvar"), posterior(B, D)))
    args[name] = value
    return args["z"], args["mu"], args["logvar"]


# ----------------------------------------------------------------------------------------------
# against the reference and the exact mixture


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


def test_minibatch_estimates_approach_the_gaussian_limit():
    """Large N, broad encoder: stratified TC over the whole population is near the closed form."""
    from tcestim.experiments.synthetic import gaussian_limit_tc, make_posterior

    post = make_posterior(4096, 3, rho=0.5, noise_std=1.0, generator=torch.Generator().manual_seed(11),
                          dtype=torch.float64)
    z = post.sample(torch.arange(4096), torch.Generator().manual_seed(12))
    tc = float(tcestim.total_correlation(z, post.mu, post.logvar))
    assert tc == pytest.approx(gaussian_limit_tc(post), abs=0.03)


def test_reference_agrees_on_a_plain_case():
    """Sanity anchor for this file's helpers: decompose vs the NumPy reference."""
    z, mu, logvar = posterior(B=5, D=3)
    out = tcestim.decompose(z, mu, logvar, dataset_size=17, estimator="mss")
    ref = ref_decomposition(to_numpy(z), to_numpy(mu), to_numpy(logvar), "mss", 17)
    for name in FIELDS:
        np.testing.assert_allclose(to_numpy(getattr(out, name)), ref[name], rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# shapes, batch size, dataset size, estimator


@pytest.mark.parametrize("fn", BATCH_FNS.values(), ids=BATCH_FNS.keys())
@pytest.mark.parametrize("arg, shape", [("mu", (6, 3)), ("mu", (5, 4)), ("mu", (3, 5)),
                                        ("logvar", (4, 3)), ("logvar", (5, 2))])
def test_batch_shape_mismatch_raises_value_error(fn, arg, shape):
    bad = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"^{arg} must have the shape of z \(5, 3\), got \({shape[0]}, {shape[1]}\)"):
        fn(*with_arg(arg, bad))


@pytest.mark.parametrize("fn", BATCH_FNS.values(), ids=BATCH_FNS.keys())
@pytest.mark.parametrize("estimator", NEED_TWO)
def test_batch_of_one_rejected_for_estimators_that_need_two(fn, estimator):
    z, mu, logvar = posterior(B=1)
    with pytest.raises(ValueError, match=rf"estimator '{estimator}' needs a batch size of at least 2, got 1"):
        fn(z, mu, logvar, estimator=estimator)
    with pytest.raises(ValueError, match=r"at least 2"):
        fn(z, mu, logvar, dataset_size=100, estimator=estimator)


@pytest.mark.parametrize("dataset_size", [None, 1, 100])
def test_batch_of_one_works_for_mws(dataset_size):
    """B = 1 with mws: q(z) = q(z|x_1) / N, so mi = log N and tc = (D - 1) log N exactly."""
    z, mu, logvar = posterior(B=1, D=3)
    N = 1 if dataset_size is None else dataset_size
    out = tcestim.decompose(z, mu, logvar, dataset_size=dataset_size, estimator="mws")
    assert out.mi.shape == (1,) and out.log_qzd.shape == (1, 3)
    close(out.mi, torch.full((1,), math.log(N), dtype=torch.float64))
    close(out.tc, torch.full((1,), 2 * math.log(N), dtype=torch.float64))
    tc = tcestim.total_correlation(z, mu, logvar, dataset_size=dataset_size, estimator="mws")
    close(tc, torch.tensor(2 * math.log(N), dtype=torch.float64))
    w = tcestim.estimator_log_weights("mws", 1, dataset_size)
    assert w == tcestim.StructuredLogWeights.constant(-math.log(N))


@pytest.mark.parametrize("fn", BATCH_FNS.values(), ids=BATCH_FNS.keys())
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("dataset_size", [4, 1, 0, -1, -100])
def test_dataset_size_below_batch_size_raises_value_error(fn, estimator, dataset_size):
    z, mu, logvar = posterior(B=5)
    with pytest.raises(ValueError, match=rf"^dataset_size must be >= the batch size 5, got {dataset_size}"):
        fn(z, mu, logvar, dataset_size=dataset_size, estimator=estimator)


@pytest.mark.parametrize("fn", BATCH_FNS.values(), ids=BATCH_FNS.keys())
@pytest.mark.parametrize("dataset_size", [10.0, 5.0, True, False, "10", torch.tensor(10)],
                         ids=["float", "float-equal", "True", "False", "str", "tensor"])
def test_dataset_size_of_wrong_type_raises_type_error(fn, dataset_size):
    z, mu, logvar = posterior(B=5)
    with pytest.raises(TypeError, match=r"^dataset_size must be an int or None"):
        fn(z, mu, logvar, dataset_size=dataset_size)


@pytest.mark.parametrize("fn", BATCH_FNS.values(), ids=BATCH_FNS.keys())
@pytest.mark.parametrize("estimator", ["exact", "Stratified", "mss_legacy", "", None])
def test_unknown_estimator_raises_value_error_listing_names(fn, estimator):
    z, mu, logvar = posterior()
    with pytest.raises(ValueError, match=r"^estimator must be one of") as info:
        fn(z, mu, logvar, estimator=estimator)
    for name in ESTIMATORS:
        assert repr(name) in str(info.value)
    assert repr(estimator) in str(info.value)


# ----------------------------------------------------------------------------------------------
# priors


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


def test_prior_of_wrong_shape_raises_value_error():
    z, mu, logvar = posterior(B=5, D=3)
    bad_priors = [
        lambda t: t.sum(1),                                   # joint (B,) instead of (B, D)
        lambda t: t[:, :2],                                   # too few dimensions
        lambda t: t.T,                                        # transposed
        torch.distributions.MultivariateNormal(torch.zeros(3, dtype=torch.float64),
                                               torch.eye(3, dtype=torch.float64)),
        torch.distributions.Independent(torch.distributions.Normal(torch.zeros(3, dtype=torch.float64),
                                                                   torch.ones(3, dtype=torch.float64)), 1),
    ]
    for prior in bad_priors:
        with pytest.raises(ValueError, match=r"^prior must give per-dimension log densities of shape "
                                             r"\(B, D\) = \(5, 3\)"):
            tcestim.decompose(z, mu, logvar, prior=prior)
    with pytest.raises(TypeError, match=r"^prior gave float, expected a tensor of log densities"):
        tcestim.decompose(z, mu, logvar, prior=lambda t: 0.0)


@pytest.mark.parametrize("bad", ["normal", 3, torch.zeros(5, 3)], ids=["str", "int", "tensor"])
def test_prior_of_wrong_kind_raises_type_error(bad):
    z, mu, logvar = posterior()
    with pytest.raises(TypeError, match=r"^prior must be None, a tcestim\.priors\.Prior, "
                                        r"a torch\.distributions\.Distribution"):
        tcestim.decompose(z, mu, logvar, prior=bad)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_distribution_and_callable_priors(dtype):
    z, mu, logvar = posterior(dtype=dtype)
    default = tcestim.decompose(z, mu, logvar)
    standard = tcestim.decompose(z, mu, logvar, prior=torch.distributions.Normal(0.0, 1.0))
    assert_decompositions_close(standard, default, rtol=1e-6, atol=1e-6)
    loc = torch.tensor([0.5, -1.0, 0.0], dtype=dtype)
    scale = torch.tensor([2.0, 0.5, 1.0], dtype=dtype)
    normal = torch.distributions.Normal(loc, scale)
    out = tcestim.decompose(z, mu, logvar, prior=normal)
    expected_pz = (-0.5 * math.log(2 * math.pi) - scale.log() - 0.5 * ((z - loc) / scale) ** 2).sum(1)
    close(out.log_pz, expected_pz, rtol=1e-5, atol=1e-5)
    assert out.log_pz.dtype == dtype
    # the prior changes only dimkl (and log_pz); mi and tc stay
    close(out.mi, default.mi, rtol=0, atol=0)
    close(out.tc, default.tc, rtol=0, atol=0)
    close(out.dimkl - default.dimkl, default.log_pz - out.log_pz, rtol=1e-5, atol=1e-5)
    callable_out = tcestim.decompose(z, mu, logvar, prior=normal.log_prob)
    assert_decompositions_close(callable_out, out, rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# layouts and dtypes that must work


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_non_contiguous_inputs(estimator):
    z, mu, logvar = posterior(B=6, D=4)
    z_nc = torch.zeros(6, 8, dtype=torch.float64)
    z_nc[:, ::2] = z
    z_nc = z_nc[:, ::2]                                       # column slice with a step
    mu_nc = mu.T.contiguous().T                              # transposed view
    logvar_nc = torch.zeros(12, 4, dtype=torch.float64)
    logvar_nc[::2] = logvar
    logvar_nc = logvar_nc[::2]                                # row slice with a step
    assert not (z_nc.is_contiguous() or mu_nc.is_contiguous() or logvar_nc.is_contiguous())
    expected = tcestim.decompose(z, mu, logvar, dataset_size=50, estimator=estimator)
    got = tcestim.decompose(z_nc, mu_nc, logvar_nc, dataset_size=50, estimator=estimator)
    assert_decompositions_close(got, expected)
    close(tcestim.total_correlation(z_nc, mu_nc, logvar_nc, dataset_size=50, estimator=estimator),
          tcestim.total_correlation(z, mu, logvar, dataset_size=50, estimator=estimator))


@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_expanded_inputs(estimator):
    """Stride-0 (broadcast) tensors from .expand work and equal their materialised copies."""
    B, D = 6, 3
    g = torch.Generator().manual_seed(3)
    z = torch.randn(B, D, generator=g, dtype=torch.float64)
    mu = torch.randn(1, D, generator=g, dtype=torch.float64).expand(B, D)       # one shared mean
    logvar = torch.tensor(-0.7, dtype=torch.float64).expand(B, D)              # one shared variance
    assert mu.stride() == (0, 1) and logvar.stride() == (0, 0)
    got = tcestim.decompose(z, mu, logvar, dataset_size=20, estimator=estimator)
    expected = tcestim.decompose(z, mu.contiguous(), logvar.contiguous(), dataset_size=20,
                                 estimator=estimator)
    assert_decompositions_close(got, expected)
    z_row = z[:1].expand(B, D)
    got = tcestim.decompose(z_row, mu, logvar, estimator=estimator)
    expected = tcestim.decompose(z_row.contiguous(), mu.contiguous(), logvar.contiguous(),
                                 estimator=estimator)
    assert_decompositions_close(got, expected)
    lqz, lqzd = tcestim.log_aggregate_posterior(z_row, mu, logvar,
                                                log_weights=torch.tensor(-1.0, dtype=torch.float64).expand(B, B))
    elqz, elqzd = tcestim.log_aggregate_posterior(z_row.contiguous(), mu.contiguous(), logvar.contiguous(),
                                                  log_weights=-1.0)
    close(lqz, elqz)
    close(lqzd, elqzd)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_half_precision_inputs_compute_in_float32(dtype, estimator):
    z, mu, logvar = (t.to(dtype) for t in posterior(B=6, D=3))
    got = tcestim.decompose(z, mu, logvar, dataset_size=30, estimator=estimator)
    expected = tcestim.decompose(z.float(), mu.float(), logvar.float(), dataset_size=30, estimator=estimator)
    for name in FIELDS:
        assert getattr(got, name).dtype == torch.float32
    assert_decompositions_close(got, expected, rtol=0, atol=0)
    tc = tcestim.total_correlation(z, mu, logvar, dataset_size=30, estimator=estimator)
    assert tc.dtype == torch.float32
    close(tc, tcestim.total_correlation(z.float(), mu.float(), logvar.float(), dataset_size=30,
                                        estimator=estimator), rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# NaN / Inf


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_nan_in_z_poisons_only_its_row(dtype, estimator):
    z, mu, logvar = posterior(B=6, D=3, dtype=dtype)
    z = z.clone()
    z[2, 1] = float("nan")
    out = tcestim.decompose(z, mu, logvar, dataset_size=40, estimator=estimator)
    others = [0, 1, 3, 4, 5]
    for name in ("mi", "tc", "dimkl", "log_qzx", "log_qz", "log_pz"):
        value = getattr(out, name)
        assert torch.isnan(value[2]), name
        assert torch.isfinite(value[others]).all(), name
    assert torch.isnan(out.log_qzd[2, 1])
    assert torch.isfinite(out.log_qzd[2, [0, 2]]).all()
    assert torch.isfinite(out.log_qzd[others]).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("estimator", ESTIMATORS)
def test_nan_in_mu_poisons_its_dimension(dtype, estimator):
    z, mu, logvar = posterior(B=6, D=3, dtype=dtype)
    mu = mu.clone()
    mu[4, 0] = float("nan")
    out = tcestim.decompose(z, mu, logvar, dataset_size=40, estimator=estimator)
    assert torch.isnan(out.log_qz).all()
    assert torch.isnan(out.log_qzd[:, 0]).all()
    assert torch.isfinite(out.log_qzd[:, 1:]).all()
    assert torch.isnan(out.log_qzx[4]) and torch.isfinite(out.log_qzx[[0, 1, 2, 3, 5]]).all()
    assert torch.isnan(out.tc).all() and torch.isnan(out.mi).all() and torch.isnan(out.dimkl).all()
    assert torch.isfinite(out.log_pz).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("value", [float("inf"), float("-inf")], ids=["+inf", "-inf"])
def test_infinite_z_gives_minus_inf_log_densities(dtype, estimator, value):
    z, mu, logvar = posterior(B=6, D=3, dtype=dtype)
    z = z.clone()
    z[3, 0] = value
    out = tcestim.decompose(z, mu, logvar, dataset_size=40, estimator=estimator)
    others = [0, 1, 2, 4, 5]
    for name in ("log_qzx", "log_qz", "log_pz"):
        value_ = getattr(out, name)
        assert value_[3].item() == float("-inf"), name
        assert torch.isfinite(value_[others]).all(), name
    assert out.log_qzd[3, 0].item() == float("-inf")
    assert torch.isfinite(out.log_qzd[3, 1:]).all()
    assert torch.isfinite(out.log_qzd[others]).all()
    for name in ("mi", "tc", "dimkl"):
        assert torch.isfinite(getattr(out, name)[others]).all(), name
    # the mixture alone, with M != K, behaves the same
    lqz, lqzd = tcestim.log_aggregate_posterior(z, mu[:4], logvar[:4])
    assert lqz[3].item() == float("-inf") and lqzd[3, 0].item() == float("-inf")
    assert not torch.isnan(lqz).any() and not torch.isnan(lqzd).any()
