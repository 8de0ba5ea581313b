"""Bad-input battery of the public API, the inputs that must work, and NaN/Inf behaviour.

Errors: every rejected input asserts the exception type (TypeError for wrong Python types and
dtypes, ValueError for wrong shapes, sizes and ranges) and that the message starts with / names the
offending argument.

Inputs that must work: non-contiguous views (transposes, slices with a step), expanded (stride-0)
tensors, float16/bfloat16 inputs (computed and returned in float32, equal to the float32 result on
the same values), torch.distributions priors and callables, B = 1 for "mws", M != K mixtures.

NaN/Inf behaviour asserted here (no exception is raised in any of these cases):
* NaN in z[i, d]: row i of log_qzx, log_qz, mi, tc, dimkl and log_qzd[i, d] are NaN; every other
  row, and the other columns of row i of log_qzd, stay finite (a NaN query poisons only itself).
* NaN in mu[j, d]: component j is in every row's mixture with a nonzero weight, so log_qz (all rows)
  and log_qzd[:, d] (all rows) are NaN, log_qzd[:, d' != d] stays finite, and log_qzx is NaN in row j
  only.
* logvar = +inf (a component of infinite variance has density 0 everywhere) contributes nothing: the
  mixture equals the mixture without that component (same weights for the others); with +inf in
  one dimension only, the component drops out of the joint and that dimension's marginal only.
* z[i, d] = +inf or -inf: log_qzx[i], log_qz[i], log_qzd[i, d] and log_pz[i] are -inf (not NaN);
  every other entry stays finite. (mi, tc and dimkl of that row are differences of -inf terms and
  are not asserted; they are undefined.)
"""
from __future__ import annotations

import math
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import tcestim  # noqa: E402
from reference import decomposition as ref_decomposition  # noqa: E402
from reference import mixture_logdensity as ref_mixture_logdensity  # noqa: E402
from reference import to_numpy  # noqa: E402

ESTIMATORS = tcestim.ESTIMATORS
NEED_TWO = ("stratified", "mss", "mss-legacy")
FIELDS = ("mi", "tc", "dimkl", "log_qzx", "log_qz", "log_qzd", "log_pz")


def posterior(B=5, D=3, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(B, D, generator=g, dtype=torch.float64)
    logvar = -1.0 + 0.3 * torch.randn(B, D, generator=g, dtype=torch.float64)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(B, D, generator=g, dtype=torch.float64)
    return z.to(dtype), mu.to(dtype), logvar.to(dtype)


def _decompose(z, mu, logvar, **kw):
    return tcestim.decompose(z, mu, logvar, **kw)


def _total_correlation(z, mu, logvar, **kw):
    return tcestim.total_correlation(z, mu, logvar, **kw)


def _log_aggregate_posterior(z, mu, logvar, **kw):
    return tcestim.log_aggregate_posterior(z, mu, logvar, **kw)


POSTERIOR_FNS = {
    "decompose": _decompose,
    "total_correlation": _total_correlation,
    "log_aggregate_posterior": _log_aggregate_posterior,
}
BATCH_FNS = {k: POSTERIOR_FNS[k] for k in ("decompose", "total_correlation")}
ARGS = ("z", "mu", "logvar")


def with_arg(name, value, B=5, D=3):
    args = dict(zip(ARGS, posterior(B, D)))
    args[name] = value
    return args["z"], args["mu"], args["logvar"]


def close(a, b, rtol=1e-12, atol=1e-12):
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def assert_decompositions_close(a, b, rtol=1e-12, atol=1e-12):
    for name in FIELDS:
        torch.testing.assert_close(getattr(a, name), getattr(b, name), rtol=rtol, atol=atol,
                                   msg=lambda m, name=name: f"{name}: {m}")


# ----------------------------------------------------------------------------------------------
# types and dtypes


@pytest.mark.parametrize("fn", POSTERIOR_FNS.values(), ids=POSTERIOR_FNS.keys())
@pytest.mark.parametrize("arg", ARGS)
@pytest.mark.parametrize("bad", [[[0.0, 1.0], [2.0, 3.0]], np.zeros((5, 3)), 1.5, None],
                         ids=["list", "ndarray", "float", "None"])
def test_non_tensor_input_raises_type_error(fn, arg, bad):
    with pytest.raises(TypeError, match=rf"^{arg} must be a torch\.Tensor"):
        fn(*with_arg(arg, bad))


@pytest.mark.parametrize("fn", POSTERIOR_FNS.values(), ids=POSTERIOR_FNS.keys())
@pytest.mark.parametrize("arg", ARGS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64,
                                   torch.complex128])
def test_non_floating_dtype_raises_type_error(fn, arg, dtype):
    bad = torch.ones(5, 3, dtype=dtype)
    with pytest.raises(TypeError, match=rf"^{arg} must have a floating dtype"):
        fn(*with_arg(arg, bad))


@pytest.mark.parametrize("fn", POSTERIOR_FNS.values(), ids=POSTERIOR_FNS.keys())
@pytest.mark.parametrize("arg", ["mu", "logvar"])
@pytest.mark.parametrize("dtypes", [(torch.float64, torch.float32), (torch.float32, torch.float64),
                                    (torch.float32, torch.float16), (torch.bfloat16, torch.float16)])
def test_mixed_floating_dtypes_raise_type_error(fn, arg, dtypes):
    z, mu, logvar = posterior(dtype=dtypes[0])
    args = dict(z=z, mu=mu, logvar=logvar)
    args[arg] = args[arg].to(dtypes[1])
    with pytest.raises(TypeError, match=rf"^{arg} must have the dtype of z"):
        fn(args["z"], args["mu"], args["logvar"])


@pytest.mark.parametrize("fn", POSTERIOR_FNS.values(), ids=POSTERIOR_FNS.keys())
@pytest.mark.parametrize("arg", ["mu", "logvar"])
def test_device_mismatch_raises_value_error(fn, arg):
    z, mu, logvar = posterior()
    args = dict(z=z, mu=mu, logvar=logvar)
    args[arg] = torch.empty(args[arg].shape, dtype=args[arg].dtype, device="meta")
    with pytest.raises(ValueError, match=rf"^{arg} must be on the device of z"):
        fn(args["z"], args["mu"], args["logvar"])


# ----------------------------------------------------------------------------------------------
# shapes


@pytest.mark.parametrize("fn", POSTERIOR_FNS.values(), ids=POSTERIOR_FNS.keys())
@pytest.mark.parametrize("arg", ARGS)
@pytest.mark.parametrize("shape", [(15,), (5, 3, 1), (), (1, 5, 3)], ids=["1d", "3d", "0d", "3d-lead"])
def test_wrong_rank_raises_value_error(fn, arg, shape):
    bad = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"^{arg} must be 2-D"):
        fn(*with_arg(arg, bad))


@pytest.mark.parametrize("fn", BATCH_FNS.values(), ids=BATCH_FNS.keys())
@pytest.mark.parametrize("arg, shape", [("mu", (6, 3)), ("mu", (5, 4)), ("mu", (3, 5)),
                                        ("logvar", (4, 3)), ("logvar", (5, 2))])
def test_batch_shape_mismatch_raises_value_error(fn, arg, shape):
    bad = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"^{arg} must have the shape of z \(5, 3\), got \({shape[0]}, {shape[1]}\)"):
        fn(*with_arg(arg, bad))


def test_mixture_shape_mismatch_raises_value_error():
    z, _, _ = posterior(B=4, D=3)
    mu, logvar = posterior(B=7, D=3)[1:]
    with pytest.raises(ValueError, match=r"^logvar must have the shape of mu \(7, 3\)"):
        tcestim.log_aggregate_posterior(z, mu, logvar[:6])
    with pytest.raises(ValueError, match=r"^logvar must have the shape of mu \(7, 3\)"):
        tcestim.log_aggregate_posterior(z, mu, logvar[:, :2])
    with pytest.raises(ValueError, match=r"^z must have D = 3 columns"):
        tcestim.log_aggregate_posterior(z[:, :2], mu, logvar)
    # M != K is fine
    log_qz, log_qzd = tcestim.log_aggregate_posterior(z, mu, logvar)
    assert log_qz.shape == (4,) and log_qzd.shape == (4, 3)


@pytest.mark.parametrize("fn", POSTERIOR_FNS.values(), ids=POSTERIOR_FNS.keys())
@pytest.mark.parametrize("shape", [(0, 3), (5, 0), (0, 0)], ids=["B=0", "D=0", "both"])
def test_empty_inputs_raise_value_error(fn, shape):
    empty = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^z must be non-empty"):
        fn(empty, empty.clone(), empty.clone())


def test_empty_components_raise_value_error():
    z = posterior()[0]
    with pytest.raises(ValueError, match=r"^mu must be non-empty"):
        tcestim.log_aggregate_posterior(z, z[:0], z[:0])


# ----------------------------------------------------------------------------------------------
# batch size, dataset size, estimator


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


def test_estimator_log_weights_validation():
    with pytest.raises(ValueError, match=r"^estimator must be one of") as info:
        tcestim.estimator_log_weights("bogus", 4, 10)
    assert all(repr(name) in str(info.value) for name in ESTIMATORS)
    for bad in (0, -3):
        with pytest.raises(ValueError, match=r"^batch_size must be >= 1"):
            tcestim.estimator_log_weights("stratified", bad, 10)
    for bad in (2.0, True, "4", None):
        with pytest.raises(TypeError, match=r"^batch_size must be an int"):
            tcestim.estimator_log_weights("stratified", bad, 10)
    # NumPy integers are integers
    assert tcestim.estimator_log_weights("stratified", np.int64(4), np.int32(10)) == \
        tcestim.estimator_log_weights("stratified", 4, 10)
    for estimator in NEED_TWO:
        with pytest.raises(ValueError, match=rf"estimator '{estimator}' needs a batch size of at least 2"):
            tcestim.estimator_log_weights(estimator, 1, 10)
    with pytest.raises(ValueError, match=r"^dataset_size must be >= the batch size 4, got 3"):
        tcestim.estimator_log_weights("mss", 4, 3)
    with pytest.raises(ValueError, match=r"^dataset_size must be >= the batch size 4, got 0"):
        tcestim.estimator_log_weights("mws", 4, 0)
    for bad in (10.0, True, "10"):
        with pytest.raises(TypeError, match=r"^dataset_size must be an int or None"):
            tcestim.estimator_log_weights("stratified", 4, bad)
    # the shapes of what it returns
    assert isinstance(tcestim.estimator_log_weights("mws", 1), tcestim.StructuredLogWeights)
    legacy = tcestim.estimator_log_weights("mss-legacy", 4, 10, dtype=torch.float32)
    assert legacy.shape == (4, 4) and legacy.dtype == torch.float32


# ----------------------------------------------------------------------------------------------
# log_weights


@pytest.mark.parametrize("shape", [(4, 8), (4,), (7, 4), (4, 7, 1), (1, 7), ()],
                         ids=["MxK+1", "1d", "KxM", "3d", "1xK", "0d"])
def test_log_weights_of_wrong_shape_raise_value_error(shape):
    z = posterior(B=4)[0]
    mu, logvar = posterior(B=7)[1:]
    with pytest.raises(ValueError, match=r"^log_weights must have shape \(M, K\) = \(4, 7\)"):
        tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=torch.zeros(shape, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, torch.complex128])
def test_log_weights_of_wrong_dtype_raise_type_error(dtype):
    z = posterior(B=4)[0]
    mu, logvar = posterior(B=7)[1:]
    with pytest.raises(TypeError, match=r"^log_weights must have a floating dtype"):
        tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=torch.zeros(4, 7, dtype=dtype))


@pytest.mark.parametrize("bad", ["uniform", True, [0.0] * 7, np.zeros((4, 7)), (0.0, 0.0)],
                         ids=["str", "bool", "list", "ndarray", "tuple"])
def test_log_weights_of_wrong_kind_raise_type_error(bad):
    z = posterior(B=4)[0]
    mu, logvar = posterior(B=7)[1:]
    with pytest.raises(TypeError, match=r"^log_weights must be None, a float"):
        tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=bad)


def test_log_weights_accepted_forms_agree():
    """None == float -log K == StructuredLogWeights.constant == dense matrix; int is a float."""
    z = posterior(B=4)[0]
    mu, logvar = posterior(B=7)[1:]
    expected = tcestim.log_aggregate_posterior(z, mu, logvar)
    c = -math.log(7)
    for w in (c, tcestim.StructuredLogWeights.constant(c), torch.full((4, 7), c, dtype=torch.float64),
              torch.full((4, 7), c, dtype=torch.float32)):
        got = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=w)
        atol = 1e-6 if isinstance(w, torch.Tensor) and w.dtype == torch.float32 else 1e-12
        close(got[0], expected[0], atol=atol)
        close(got[1], expected[1], atol=atol)
    shifted = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=0)
    close(shifted[0], expected[0] + math.log(7))


# ----------------------------------------------------------------------------------------------
# Gaussian closed forms


def test_gaussian_total_correlation_validation():
    with pytest.raises(TypeError, match=r"^cov must be a torch\.Tensor"):
        tcestim.gaussian_total_correlation([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(TypeError, match=r"^cov must have a floating dtype"):
        tcestim.gaussian_total_correlation(torch.eye(2, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"^cov must have a floating dtype"):
        tcestim.gaussian_total_correlation(torch.eye(2, dtype=torch.complex64))
    for shape in [(3,), (2, 3), (4, 3, 2), (0, 0), ()]:
        with pytest.raises(ValueError, match=r"^cov must have shape \(\.\.\., D, D\)"):
            tcestim.gaussian_total_correlation(torch.ones(shape, dtype=torch.float64))


@pytest.mark.parametrize("cov", [
    [[1.0, 2.0], [2.0, 1.0]],           # indefinite
    [[1.0, 1.0], [1.0, 1.0]],           # singular
    [[0.0, 0.0], [0.0, 0.0]],           # zero
    [[-1.0, 0.0], [0.0, 1.0]],          # negative variance
], ids=["indefinite", "singular", "zero", "negative"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_total_correlation_rejects_non_pd(cov, dtype):
    with pytest.raises(ValueError, match=r"^cov must be symmetric positive definite"):
        tcestim.gaussian_total_correlation(torch.tensor(cov, dtype=dtype))
    batch = torch.stack([torch.eye(2, dtype=dtype), torch.tensor(cov, dtype=dtype)])
    with pytest.raises(ValueError, match=r"^cov must be symmetric positive definite"):
        tcestim.gaussian_total_correlation(batch)


def test_gaussian_total_correlation_rejects_non_symmetric():
    with pytest.raises(ValueError, match=r"^cov must be symmetric"):
        tcestim.gaussian_total_correlation(torch.tensor([[1.0, 5.0], [0.0, 1.0]], dtype=torch.float64))


def test_gaussian_total_correlation_values():
    rho = 0.6
    cov = torch.tensor([[2.0, rho * math.sqrt(2.0 * 3.0)], [rho * math.sqrt(2.0 * 3.0), 3.0]],
                       dtype=torch.float64)
    close(tcestim.gaussian_total_correlation(cov), torch.tensor(-0.5 * math.log(1 - rho ** 2),
                                                                   dtype=torch.float64))
    diag = torch.diag_embed(torch.tensor([[1.0, 2.0, 3.0], [0.1, 5.0, 7.0]], dtype=torch.float64))
    close(tcestim.gaussian_total_correlation(diag), torch.zeros(2, dtype=torch.float64))
    batch = torch.stack([cov, cov, torch.eye(2, dtype=torch.float64)])
    assert tcestim.gaussian_total_correlation(batch).shape == (3,)


def test_gaussian_tc_of_means_validation():
    with pytest.raises(TypeError, match=r"^mu must be a torch\.Tensor"):
        tcestim.gaussian_tc_of_means(np.zeros((10, 2)))
    with pytest.raises(TypeError, match=r"^mu must have a floating dtype"):
        tcestim.gaussian_tc_of_means(torch.zeros(10, 2, dtype=torch.int64))
    for shape in [(10,), (10, 2, 1)]:
        with pytest.raises(ValueError, match=r"^mu must be 2-D"):
            tcestim.gaussian_tc_of_means(torch.randn(shape, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^mu must be non-empty"):
        tcestim.gaussian_tc_of_means(torch.zeros(0, 2, dtype=torch.float64))
    for B, D in [(3, 3), (2, 5), (1, 1)]:
        with pytest.raises(ValueError, match=r"^mu needs more rows than columns \(B > D\)"):
            tcestim.gaussian_tc_of_means(torch.randn(B, D, dtype=torch.float64))


def test_gaussian_tc_of_means_values():
    mu = posterior(B=50, D=4)[1]
    close(tcestim.gaussian_tc_of_means(mu), tcestim.gaussian_total_correlation(torch.cov(mu.T)))
    assert abs(tcestim.gaussian_tc_of_means(mu[:, :1]).item()) <= 1e-12  # D = 1
    # constant columns make the covariance singular: a ValueError, not NaN
    with pytest.raises(ValueError, match=r"^cov must be symmetric positive definite"):
        tcestim.gaussian_tc_of_means(torch.ones(10, 2, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gaussian_half_inputs_compute_in_float32(dtype):
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=dtype)
    got = tcestim.gaussian_total_correlation(cov)
    expected = tcestim.gaussian_total_correlation(cov.float())
    assert got.dtype == torch.float32
    close(got, expected, rtol=1e-6, atol=1e-6)
    mu = posterior(B=40, D=3)[1].to(dtype)
    got = tcestim.gaussian_tc_of_means(mu)
    assert got.dtype == torch.float32
    close(got, tcestim.gaussian_tc_of_means(mu.float()), rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# priors


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
    with pytest.raises(TypeError, match=r"^prior must be None, a tcestim\.priors\.Prior, a torch\.distributions\.Distribution"):
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


def test_non_contiguous_mixture_inputs_and_dense_weights():
    z, _, _ = posterior(B=5, D=3, seed=1)
    _, mu, logvar = posterior(B=9, D=3, seed=2)
    w = torch.randn(9, 5, dtype=torch.float64)                # (K, M): transposed view is (M, K)
    expected = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=w.T.contiguous())
    z_nc = z.T.contiguous().T                                 # transposed view
    mu_nc = torch.stack([mu, mu], 1).reshape(18, 3)[::2]      # row slice with a step
    logvar_nc = logvar.T.contiguous().T
    assert not (z_nc.is_contiguous() or mu_nc.is_contiguous() or logvar_nc.is_contiguous())
    assert not w.T.is_contiguous()
    got = tcestim.log_aggregate_posterior(z_nc, mu_nc, logvar_nc, log_weights=w.T)
    close(got[0], expected[0])
    close(got[1], expected[1])
    ref_qz, ref_qzd = ref_mixture_logdensity(to_numpy(z), to_numpy(mu), to_numpy(logvar), to_numpy(w.T))
    np.testing.assert_allclose(to_numpy(got[0]), ref_qz, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(to_numpy(got[1]), ref_qzd, rtol=1e-10, atol=1e-10)


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


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_mixture_inputs_compute_in_float32(dtype):
    z = posterior(B=4, seed=5)[0].to(dtype)
    _, mu, logvar = (t.to(dtype) for t in posterior(B=7, seed=6))
    w = torch.randn(4, 7, dtype=torch.float64).to(dtype)
    for weights, weights32 in [(None, None), (w, w.float()),
                               (tcestim.StructuredLogWeights(-1.0, -2.0, -3.0),) * 2]:
        got = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=weights)
        expected = tcestim.log_aggregate_posterior(z.float(), mu.float(), logvar.float(), log_weights=weights32)
        assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
        close(got[0], expected[0], rtol=0, atol=0)
        close(got[1], expected[1], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------
# raw operators


@pytest.fixture
def ops():
    if not tcestim.extension_available():
        pytest.skip("compiled extension not available")
    return torch.ops.tcestim


def test_raw_operator_rejects_bad_inputs(ops):
    z, mu, logvar = posterior()
    with pytest.raises(RuntimeError, match=r"z must be 2-D"):
        ops.mixture_logdensity(z[0], mu, logvar, -1.0, -1.0, -1.0)
    with pytest.raises(RuntimeError, match=r"mu must be 2-D"):
        ops.mixture_logdensity(z, mu[0], logvar, -1.0, -1.0, -1.0)
    with pytest.raises(RuntimeError, match=r"logvar must have the shape of mu"):
        ops.mixture_logdensity(z, mu, logvar[:3], -1.0, -1.0, -1.0)
    with pytest.raises(RuntimeError, match=r"same number of columns"):
        ops.mixture_logdensity(z[:, :2], mu, logvar, -1.0, -1.0, -1.0)
    with pytest.raises(RuntimeError, match=r"z must be float32 or float64"):
        ops.mixture_logdensity(z.half(), mu.half(), logvar.half(), -1.0, -1.0, -1.0)
    with pytest.raises(RuntimeError, match=r"share one dtype"):
        ops.mixture_logdensity(z, mu.float(), logvar, -1.0, -1.0, -1.0)
    with pytest.raises(RuntimeError, match=r"z must be 2-D"):
        ops.mixture_logdensity_dense(z[0], mu, logvar, torch.zeros(5, 5, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"log_weights must have shape \(M, K\)"):
        ops.mixture_logdensity_dense(z, mu, logvar, torch.zeros(5, 4, dtype=torch.float64))
    with pytest.raises(RuntimeError, match=r"log_weights must have dtype"):
        ops.mixture_logdensity_dense(z, mu, logvar, torch.zeros(5, 5, dtype=torch.float32))


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
def test_infinite_logvar_component_contributes_nothing(dtype):
    z = posterior(B=5, D=3, seed=7)[0].to(dtype)
    _, mu, logvar = (t.to(dtype) for t in posterior(B=6, D=3, seed=8))
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-6, atol=1e-6)
    # a whole component of infinite variance: the mixture without it (same weights for the rest)
    logvar_inf = logvar.clone()
    logvar_inf[3] = float("inf")
    keep = [0, 1, 2, 4, 5]
    for w in (-1.3, tcestim.StructuredLogWeights(-0.5, -1.0, -2.0)):
        got = tcestim.log_aggregate_posterior(z, mu, logvar_inf, log_weights=w)
        dense = torch.as_tensor(
            np.asarray([[(w if isinstance(w, float) else (w.self if j == i else w.next if j == (i + 1) % 5
                                                           else w.other)) for j in range(6)]
                        for i in range(5)]), dtype=dtype)
        expected = tcestim.log_aggregate_posterior(z, mu[keep], logvar[keep],
                                                   log_weights=dense[:, keep].contiguous())
        assert torch.isfinite(got[0]).all() and torch.isfinite(got[1]).all()
        close(got[0], expected[0], **tol)
        close(got[1], expected[1], **tol)
    # +inf in one dimension of one component: it drops out of the joint and of that marginal only
    logvar_one = logvar.clone()
    logvar_one[1, 2] = float("inf")
    w = torch.randn(5, 6, dtype=torch.float64).to(dtype)
    got = tcestim.log_aggregate_posterior(z, mu, logvar_one, log_weights=w)
    ref_qz, ref_qzd = ref_mixture_logdensity(to_numpy(z), to_numpy(mu), to_numpy(logvar_one), to_numpy(w))
    np.testing.assert_allclose(to_numpy(got[0]), ref_qz, **tol)
    np.testing.assert_allclose(to_numpy(got[1]), ref_qzd, **tol)
    no_j = tcestim.log_aggregate_posterior(z, mu[[0, 2, 3, 4, 5]], logvar[[0, 2, 3, 4, 5]],
                                           log_weights=w[:, [0, 2, 3, 4, 5]].contiguous())
    close(got[0], no_j[0], **tol)
    close(got[1][:, 2], no_j[1][:, 2], **tol)


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


def test_reference_agrees_on_a_plain_case():
    """Sanity anchor for this file's helpers: decompose vs the NumPy reference."""
    z, mu, logvar = posterior(B=5, D=3)
    out = tcestim.decompose(z, mu, logvar, dataset_size=17, estimator="mss")
    ref = ref_decomposition(to_numpy(z), to_numpy(mu), to_numpy(logvar), "mss", 17)
    for name in FIELDS:
        np.testing.assert_allclose(to_numpy(getattr(out, name)), ref[name], rtol=1e-10, atol=1e-10)


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
