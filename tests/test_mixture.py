"""tcestim.log_aggregate_posterior (tcestim.mixture): shapes, the accepted forms of log_weights, layouts
and dtypes that must work, and non-finite inputs. The operators under it, on every backend, are
tested in test_ops.py.

Non-finite behaviour asserted here (no exception is raised):
* logvar = +inf (a component of infinite variance has density 0 everywhere) contributes nothing: the
  mixture equals the mixture without that component (same weights for the others); with +inf in
  one dimension only, the component drops out of the joint and that dimension's marginal only.
* log_weights that are NaN or +inf are rejected (-inf, a zero weight, is allowed).
"""
import math

import numpy as np
import pytest
import torch

import tcestim

from helpers import close, posterior
from reference import mixture_logdensity as ref_mixture_logdensity
from reference import to_numpy

# ----------------------------------------------------------------------------------------------
# shapes


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


def test_empty_components_raise_value_error():
    z = posterior()[0]
    with pytest.raises(ValueError, match=r"^mu must be non-empty"):
        tcestim.log_aggregate_posterior(z, z[:0], z[:0])


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


def test_numpy_scalars_and_invalid_log_weights():
    z = torch.randn(5, 2, dtype=torch.float64)
    mu, logvar = torch.randn(4, 2, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64)
    a = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=np.float32(-1.0))
    b = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=-1.0)
    torch.testing.assert_close(a, b)
    for bad in (math.nan, math.inf, tcestim.StructuredLogWeights(0.0, math.nan, -1.0)):
        with pytest.raises(ValueError, match="log_weights must be finite or -inf"):
            tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=bad)
    d = tcestim.decompose_exact(z, z, torch.zeros_like(z), mu, logvar, chunk_size=np.int64(2))
    assert d.tc.shape == (5,)


# ----------------------------------------------------------------------------------------------
# layouts and dtypes that must work


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
# non-finite inputs


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


def test_log_weights_must_be_representable_in_the_compute_dtype():
    z, mu, logvar = torch.randn(4, 2), torch.randn(5, 2), torch.zeros(5, 2)
    for weight in (1e39, -1e39):
        with pytest.raises(ValueError, match=r"log_weights must be representable in torch.float32"):
            tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=weight)
    qz, _ = tcestim.log_aggregate_posterior(z.double(), mu.double(), logvar.double(), log_weights=1e39)
    assert torch.isfinite(qz).all()                       # fine in float64
    qz, _ = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=float("-inf"))
    assert torch.isneginf(qz).all()                       # -inf is a zero weight, not an overflow


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), 1e300], ids=["nan", "inf", "overflows-float32"])
def test_dense_log_weights_with_nan_or_inf_raise(bad):
    z, mu, logvar = torch.randn(4, 2), torch.randn(5, 2), torch.zeros(5, 2)
    w = torch.zeros(4, 5, dtype=torch.float64)
    w[2, 3] = bad
    with pytest.raises(ValueError, match=r"log_weights must be finite or -inf .* at \(2, 3\)"):
        tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=w)
    w[2, 3] = float("-inf")
    qz, qzd = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=w.float())
    assert torch.isfinite(qz).all() and torch.isfinite(qzd).all()


@pytest.mark.parametrize("distance", [1, 100, 1000, 10000])
def test_float32_tc_of_far_queries_keeps_the_documented_relative_precision(distance):
    """docs/robustness.md: in float32 the per-row TC is accurate to about 1e-6 |log q(z)|, not to a
    fixed number of nats: far from every component both log-densities are huge before they are subtracted."""
    g = torch.Generator().manual_seed(distance)
    mu = torch.randn(64, 10, generator=g, dtype=torch.float64)
    logvar = torch.full((64, 10), 2 * math.log(0.1), dtype=torch.float64)
    direction = torch.nn.functional.normalize(torch.randn(32, 10, generator=g, dtype=torch.float64), dim=1)
    z = mu[:32] + distance * 0.1 * direction
    qz, qzd = ref_mixture_logdensity(*(to_numpy(t) for t in (z, mu, logvar)), np.full((32, 64), -math.log(64)))
    qz32, qzd32 = tcestim.log_aggregate_posterior(z.float(), mu.float(), logvar.float())
    error = np.abs((qz32 - qzd32.sum(1)).double().numpy() - (qz - qzd.sum(1)))
    assert np.all(error <= 1e-6 * np.abs(qz) + 1e-5)
