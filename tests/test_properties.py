"""Hypothesis property tests of the public estimators against symmetries, identities and the reference.

Data are built from a drawn seed with a torch.Generator (not float by float) so that each example is
cheap; hypothesis draws the shapes (B in 2..12, D in 1..6), the seed, the scale of the means, the
estimator and the dataset size. Every property compares against something that can fail: a permuted
or transformed second call, an exact identity, or the independent NumPy reference (tests/reference.py).

TCESTIM_HYPOTHESIS_EXAMPLES sets the number of examples per test (default 25).
"""
from __future__ import annotations

import math
import os

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import tcestim
import tcestim.testing

from reference import decomposition as ref_decomposition
from reference import mixture_logdensity as ref_mixture_logdensity
from reference import structured_matrix, to_numpy

EXAMPLES = int(os.environ.get("TCESTIM_HYPOTHESIS_EXAMPLES", "25"))
SETTINGS = settings(deadline=None, max_examples=EXAMPLES)

ESTIMATORS = tcestim.ESTIMATORS
NEED_TWO = ("stratified", "mss", "mss-legacy")
FIELDS = ("mi", "tc", "dimkl", "log_qzx", "log_qz", "log_qzd", "log_pz")


# ----------------------------------------------------------------------------------------------
# data


def make_posterior(seed: int, B: int, D: int, *, spread: float = 1.0, dtype=torch.float64):
    """Correlated Gaussian-encoder batch: mu = spread * (x @ mix), z ~ N(mu, exp(logvar))."""
    g = torch.Generator().manual_seed(seed)
    opts = dict(generator=g, dtype=torch.float64)
    base = torch.randn(B, D, **opts)
    if D > 1:
        base = base @ (torch.eye(D, dtype=torch.float64) + 0.8 * torch.randn(D, D, **opts))
    mu = spread * base
    logvar = -1.0 + 0.5 * torch.randn(B, D, **opts)
    z = mu + torch.exp(0.5 * logvar) * torch.randn(B, D, **opts)
    return tuple(t.to(dtype) for t in (z, mu, logvar))


seeds = st.integers(0, 2**32 - 1)
spreads = st.sampled_from([0.1, 1.0, 3.0])


@st.composite
def posteriors(draw, min_b=2, max_b=12, min_d=1, max_d=6, dtype=torch.float64):
    B = draw(st.integers(min_b, max_b))
    D = draw(st.integers(min_d, max_d))
    return make_posterior(draw(seeds), B, D, spread=draw(spreads), dtype=dtype)


@st.composite
def dataset_sizes(draw, B):
    """None (N = B), N = B, or N > B (up to B + 5000)."""
    kind = draw(st.sampled_from(["none", "equal", "larger"]))
    if kind == "none":
        return None
    if kind == "equal":
        return B
    return B + draw(st.integers(1, 5000))


def effective_n(dataset_size, B):
    return B if dataset_size is None else dataset_size


# The CPU backends (every fused instruction set, whose lane counts move the block edges, and the
# fallback): hypothesis draws CPU tensors, and its examples cannot use the function-scoped
# ``backend`` fixture of conftest.py, so the backends are a plain parameter here.
BACKENDS = [b for b in tcestim.testing.backends() if b.device == "cpu"]
backends = pytest.mark.parametrize("backend", BACKENDS, ids=[b.name for b in BACKENDS])


def assert_close(actual, expected, *, rtol, atol, what=""):
    actual = to_numpy(actual) if isinstance(actual, torch.Tensor) else np.asarray(actual, np.float64)
    expected = to_numpy(expected) if isinstance(expected, torch.Tensor) else np.asarray(expected, np.float64)
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


# ----------------------------------------------------------------------------------------------
# symmetries


@pytest.mark.parametrize("estimator", ["stratified", "mws"])
@SETTINGS
@given(data=posteriors(), seed=seeds, extra=st.one_of(st.none(), st.integers(0, 1000)))
def test_batch_permutation_permutes_outputs(estimator, data, seed, extra):
    z, mu, logvar = data
    B = z.shape[0]
    N = None if extra is None else B + extra
    perm = torch.randperm(B, generator=torch.Generator().manual_seed(seed))
    out = tcestim.decompose(z, mu, logvar, dataset_size=N, estimator=estimator)
    out_p = tcestim.decompose(z[perm], mu[perm], logvar[perm], dataset_size=N, estimator=estimator)
    for name in FIELDS:
        assert_close(getattr(out_p, name), getattr(out, name)[perm], rtol=1e-10, atol=1e-10, what=name)
    tc = tcestim.total_correlation(z, mu, logvar, dataset_size=N, estimator=estimator)
    tc_p = tcestim.total_correlation(z[perm], mu[perm], logvar[perm], dataset_size=N, estimator=estimator)
    assert_close(tc_p, tc, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("estimator", ["mss", "mss-legacy"])
def test_mss_depends_on_batch_order(estimator):
    """mss singles out the next neighbour (mss-legacy: column 0), so a reordering changes values."""
    z, mu, logvar = make_posterior(1234, 6, 3, spread=1.0)
    perm = torch.tensor([0, 2, 1, 3, 5, 4])
    out = tcestim.decompose(z, mu, logvar, estimator=estimator)
    out_p = tcestim.decompose(z[perm], mu[perm], logvar[perm], estimator=estimator)
    gap = (out_p.log_qz - out.log_qz[perm]).abs().max().item()
    assert gap > 0.1, f"{estimator} unexpectedly order independent (gap {gap})"
    tc_gap = abs(tcestim.total_correlation(z[perm], mu[perm], logvar[perm], estimator=estimator).item()
                 - tcestim.total_correlation(z, mu, logvar, estimator=estimator).item())
    assert tc_gap > 1e-2, f"{estimator} batch TC unexpectedly order independent (gap {tc_gap})"
    # ... while the order-free estimators give the permuted values on the same input
    for other in ("stratified", "mws"):
        ref = tcestim.decompose(z, mu, logvar, estimator=other).log_qz[perm]
        got = tcestim.decompose(z[perm], mu[perm], logvar[perm], estimator=other).log_qz
        assert_close(got, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@SETTINGS
@given(data=posteriors(), seed=seeds, extra=st.one_of(st.none(), st.integers(0, 1000)))
def test_latent_dimension_permutation(estimator, data, seed, extra):
    z, mu, logvar = data
    B, D = z.shape
    N = None if extra is None else B + extra
    perm = torch.randperm(D, generator=torch.Generator().manual_seed(seed))
    out = tcestim.decompose(z, mu, logvar, dataset_size=N, estimator=estimator)
    out_p = tcestim.decompose(z[:, perm], mu[:, perm], logvar[:, perm], dataset_size=N, estimator=estimator)
    for name in ("mi", "tc", "dimkl", "log_qzx", "log_qz", "log_pz"):
        assert_close(getattr(out_p, name), getattr(out, name), rtol=1e-10, atol=1e-10, what=name)
    assert_close(out_p.log_qzd, out.log_qzd[:, perm], rtol=1e-10, atol=1e-10, what="log_qzd")


@pytest.mark.parametrize("estimator", ESTIMATORS)
@SETTINGS
@given(data=posteriors(), seed=seeds, extra=st.one_of(st.none(), st.integers(0, 1000)))
def test_per_dimension_affine_invariance(estimator, data, seed, extra):
    """z' = a z + b (per dimension, a != 0 of either sign): TC and MI per sample are unchanged."""
    z, mu, logvar = data
    B, D = z.shape
    N = None if extra is None else B + extra
    g = torch.Generator().manual_seed(seed)
    sign = torch.where(torch.rand(D, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
    a = sign * torch.exp(torch.empty(D, dtype=torch.float64).uniform_(-1.5, 1.5, generator=g))
    b = 2.0 * torch.randn(D, generator=g, dtype=torch.float64)
    log_abs_a = torch.log(a.abs())
    out = tcestim.decompose(z, mu, logvar, dataset_size=N, estimator=estimator)
    out_t = tcestim.decompose(a * z + b, a * mu + b, logvar + 2 * log_abs_a, dataset_size=N,
                              estimator=estimator)
    assert_close(out_t.tc, out.tc, rtol=1e-9, atol=1e-9, what="tc")
    assert_close(out_t.mi, out.mi, rtol=1e-9, atol=1e-9, what="mi")
    assert_close(out_t.log_qzd, out.log_qzd - log_abs_a, rtol=1e-9, atol=1e-9, what="log_qzd")
    assert_close(out_t.log_qz, out.log_qz - log_abs_a.sum(), rtol=1e-9, atol=1e-9, what="log_qz")
    assert_close(out_t.log_qzx, out.log_qzx - log_abs_a.sum(), rtol=1e-9, atol=1e-9, what="log_qzx")


# ----------------------------------------------------------------------------------------------
# identities


priors = st.sampled_from(["none", "normal", "laplace", "callable"])


def build_prior(kind, D):
    if kind == "none":
        return None
    if kind == "normal":
        return torch.distributions.Normal(torch.linspace(-0.5, 0.5, D, dtype=torch.float64),
                                          torch.linspace(0.5, 2.0, D, dtype=torch.float64))
    if kind == "laplace":
        return torch.distributions.Laplace(torch.tensor(0.3, dtype=torch.float64),
                                           torch.tensor(1.7, dtype=torch.float64))
    return lambda z: -0.5 * z.square() - 0.5 * math.log(2 * math.pi) - 0.1 * z


@pytest.mark.parametrize("estimator", ESTIMATORS)
@SETTINGS
@given(data=posteriors(), extra=st.one_of(st.none(), st.integers(0, 5000)), prior=priors)
def test_decomposition_identity(estimator, data, extra, prior):
    """mi + tc + dimkl == log q(z|n) - log p(z) per sample, for every estimator and prior."""
    z, mu, logvar = data
    B, D = z.shape
    N = None if extra is None else B + extra
    out = tcestim.decompose(z, mu, logvar, dataset_size=N, estimator=estimator,
                            prior=build_prior(prior, D))
    scale = 1.0 + max(out.log_qz.abs().max().item(), out.log_qzd.sum(1).abs().max().item(),
                      out.log_pz.abs().max().item(), out.log_qzx.abs().max().item())
    assert_close(out.mi + out.tc + out.dimkl, out.log_qzx - out.log_pz, rtol=1e-10, atol=1e-13 * scale)
    assert_close(out.mi, out.log_qzx - out.log_qz, rtol=1e-12, atol=1e-12)
    assert_close(out.tc, out.log_qz - out.log_qzd.sum(1), rtol=1e-12, atol=1e-12)
    for field in FIELDS:
        value = getattr(out, field)
        assert value.dtype == torch.float64
        assert value.shape == ((B, D) if field == "log_qzd" else (B,))
        assert torch.isfinite(value).all()
    tc = tcestim.total_correlation(z, mu, logvar, dataset_size=N, estimator=estimator)
    assert tc.shape == ()
    assert_close(tc, out.tc.mean(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@SETTINGS
@given(data=posteriors(max_d=1), extra=st.one_of(st.none(), st.integers(0, 5000)))
def test_single_dimension_has_zero_tc(estimator, data, extra):
    """D == 1: q(z) is its own marginal, so TC == 0 (for mws the offset (D - 1) log N vanishes too)."""
    z, mu, logvar = data
    N = None if extra is None else z.shape[0] + extra
    out = tcestim.decompose(z, mu, logvar, dataset_size=N, estimator=estimator)
    assert out.tc.abs().max().item() <= 1e-12
    assert_close(out.log_qz, out.log_qzd[:, 0], rtol=0, atol=1e-12)
    assert abs(tcestim.total_correlation(z, mu, logvar, dataset_size=N, estimator=estimator).item()) <= 1e-12


@SETTINGS
@given(data=posteriors(), extra=st.one_of(st.none(), st.integers(0, 5000)))
def test_mws_is_uniform_mixture_offset_by_log_n(data, extra):
    """mws weights 1/(N B): tc = TC(uniform 1/B mixture) + (D - 1) log N and mi = MI(uniform) + log N."""
    z, mu, logvar = data
    B, D = z.shape
    N = effective_n(None if extra is None else B + extra, B)
    out = tcestim.decompose(z, mu, logvar, dataset_size=N, estimator="mws")
    log_qz, log_qzd = tcestim.log_aggregate_posterior(z, mu, logvar)
    assert_close(out.tc, log_qz - log_qzd.sum(1) + (D - 1) * math.log(N), rtol=1e-10, atol=1e-10)
    assert_close(out.mi, out.log_qzx - log_qz + math.log(N), rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# against the reference


@backends
@pytest.mark.parametrize("estimator", ESTIMATORS)
@SETTINGS
@given(data=st.data())
def test_decompose_matches_reference_float64(backend, estimator, data):
    z, mu, logvar = data.draw(posteriors(), label="posterior")
    B = z.shape[0]
    N = data.draw(dataset_sizes(B), label="dataset_size")
    with tcestim.testing.use_backend(backend):
        out = tcestim.decompose(z, mu, logvar, dataset_size=N, estimator=estimator)
    ref = ref_decomposition(to_numpy(z), to_numpy(mu), to_numpy(logvar), estimator, effective_n(N, B))
    for name in FIELDS:
        assert_close(getattr(out, name), ref[name], rtol=1e-10, atol=1e-10, what=name)


@backends
@pytest.mark.parametrize("estimator", ESTIMATORS)
@SETTINGS
@given(data=st.data())
def test_decompose_matches_reference_float32(backend, estimator, data):
    z, mu, logvar = data.draw(posteriors(dtype=torch.float32), label="posterior")
    B = z.shape[0]
    N = data.draw(dataset_sizes(B), label="dataset_size")
    with tcestim.testing.use_backend(backend):
        out = tcestim.decompose(z, mu, logvar, dataset_size=N, estimator=estimator)
    # the reference sees exactly the float32 inputs, in float64
    ref = ref_decomposition(to_numpy(z), to_numpy(mu), to_numpy(logvar), estimator, effective_n(N, B))
    for name in FIELDS:
        value = getattr(out, name)
        assert value.dtype == torch.float32
        assert_close(value, ref[name], rtol=1e-5, atol=1e-4, what=name)


@st.composite
def mixture_problems(draw, dtype=torch.float64, max_size=40):
    """(z (M, D), mu (K, D), logvar (K, D)) with M != K; sizes past one SIMD block of rows/columns."""
    M = draw(st.integers(1, max_size))
    K = draw(st.integers(1, max_size).filter(lambda k: k != M))
    D = draw(st.integers(1, 6))
    g = torch.Generator().manual_seed(draw(seeds))
    spread = draw(spreads)
    mu = spread * torch.randn(K, D, generator=g, dtype=torch.float64)
    logvar = -1.0 + 0.5 * torch.randn(K, D, generator=g, dtype=torch.float64)
    z = spread * torch.randn(M, D, generator=g, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (z, mu, logvar)) + (g,)


@backends
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@SETTINGS
@given(data=st.data())
def test_log_aggregate_posterior_dense_weights_match_reference(backend, dtype, data):
    z, mu, logvar, g = data.draw(mixture_problems(dtype=dtype), label="problem")
    M, K = z.shape[0], mu.shape[0]
    log_weights = (torch.randn(M, K, generator=g, dtype=torch.float64) - math.log(K)).to(dtype)
    with tcestim.testing.use_backend(backend):
        log_qz, log_qzd = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=log_weights)
    ref_qz, ref_qzd = ref_mixture_logdensity(to_numpy(z), to_numpy(mu), to_numpy(logvar),
                                             to_numpy(log_weights))
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    assert log_qz.dtype == dtype and log_qz.shape == (M,) and log_qzd.shape == z.shape
    assert_close(log_qz, ref_qz, **tol, what="log_qz")
    assert_close(log_qzd, ref_qzd, **tol, what="log_qzd")


@backends
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@SETTINGS
@given(data=st.data())
def test_log_aggregate_posterior_structured_weights_match_reference(backend, dtype, data):
    """StructuredLogWeights (self / next mod M / other), a float and None against the dense reference."""
    z, mu, logvar, g = data.draw(mixture_problems(dtype=dtype), label="problem")
    M, K = z.shape[0], mu.shape[0]
    kind = data.draw(st.sampled_from(["structured", "float", "none"]), label="kind")
    if kind == "structured":
        ls, ln, lo = (float(v) for v in torch.randn(3, generator=g, dtype=torch.float64) * 2 - math.log(K))
        weights = tcestim.StructuredLogWeights(ls, ln, lo)
        matrix = structured_matrix(M, K, ls, ln, lo)
    elif kind == "float":
        c = float(torch.randn((), generator=g, dtype=torch.float64)) - 1.0
        weights, matrix = c, np.full((M, K), c)
    else:
        weights, matrix = None, np.full((M, K), -math.log(K))
    with tcestim.testing.use_backend(backend):
        log_qz, log_qzd = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=weights)
    ref_qz, ref_qzd = ref_mixture_logdensity(to_numpy(z), to_numpy(mu), to_numpy(logvar), matrix)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    assert_close(log_qz, ref_qz, **tol, what="log_qz")
    assert_close(log_qzd, ref_qzd, **tol, what="log_qzd")
    # the structured path must agree with the same weights passed as a dense matrix
    dense = torch.as_tensor(matrix, dtype=dtype)
    with tcestim.testing.use_backend(backend):
        d_qz, d_qzd = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=dense)
    assert_close(log_qz, d_qz, **tol, what="structured vs dense log_qz")
    assert_close(log_qzd, d_qzd, **tol, what="structured vs dense log_qzd")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@SETTINGS
@given(data=posteriors(), explicit_n=st.booleans())
def test_stratified_full_batch_is_exact_uniform_mixture(dtype, data, explicit_n):
    """stratified with N == B weights every component 1/B: the exact aggregate posterior of the batch."""
    z, mu, logvar = (t.to(dtype) for t in data)
    B = z.shape[0]
    out = tcestim.decompose(z, mu, logvar, dataset_size=B if explicit_n else None, estimator="stratified")
    log_qz, log_qzd = tcestim.log_aggregate_posterior(z, mu, logvar)
    ref_qz, ref_qzd = ref_mixture_logdensity(to_numpy(z), to_numpy(mu), to_numpy(logvar),
                                             np.full((B, B), -math.log(B)))
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-4)
    assert_close(out.log_qz, log_qz, **tol, what="log_qz vs log_aggregate_posterior")
    assert_close(out.log_qzd, log_qzd, **tol, what="log_qzd vs log_aggregate_posterior")
    assert_close(out.log_qz, ref_qz, **tol, what="log_qz vs reference")
    assert_close(out.log_qzd, ref_qzd, **tol, what="log_qzd vs reference")
    assert_close(out.tc, ref_qz - ref_qzd.sum(1), **tol, what="tc vs reference")


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ESTIMATORS)
@settings(deadline=None, max_examples=max(EXAMPLES, 100))
@given(data=st.data())
def test_decompose_matches_reference_large_batches(estimator, data):
    """Heavier variant: batches of up to 200 rows (several SIMD blocks and parallel tasks)."""
    z, mu, logvar = data.draw(posteriors(min_b=13, max_b=200, max_d=12), label="posterior")
    B = z.shape[0]
    N = data.draw(dataset_sizes(B), label="dataset_size")
    for backend in BACKENDS:
        with tcestim.testing.use_backend(backend):
            out = tcestim.decompose(z, mu, logvar, dataset_size=N, estimator=estimator)
        ref = ref_decomposition(to_numpy(z), to_numpy(mu), to_numpy(logvar), estimator, effective_n(N, B))
        for name in FIELDS:
            assert_close(getattr(out, name), ref[name], rtol=1e-10, atol=1e-10, what=f"{backend.name} {name}")


# ----------------------------------------------------------------------------------------------
# jackknife (with and without a memory bank)


@SETTINGS
@given(data=posteriors(min_b=3), seed=seeds, bank_size=st.integers(0, 40), extra=st.integers(0, 500))
def test_jackknife_symmetries(data, seed, bank_size, extra):
    """Batch and dimension permutations permute the jackknifed outputs; a per-dimension affine map
    shifts log q(z_d) by -log|a_d| and leaves the TC unchanged."""
    z, mu, logvar = data
    B, D = z.shape
    g = torch.Generator().manual_seed(seed)
    bank = None
    if bank_size:
        bank = tcestim.MemoryBank(bank_size, D)
        bank.update(mu[torch.randint(B, (bank_size,), generator=g)] + torch.randn(bank_size, D, generator=g,
                                                                                  dtype=mu.dtype),
                    logvar[torch.randint(B, (bank_size,), generator=g)])
    N = B + bank_size + extra

    def run(z, mu, logvar, bank):
        return tcestim.decompose(z, mu, logvar, dataset_size=N, bank=bank, jackknife=True)

    out = run(z, mu, logvar, bank)
    perm = torch.randperm(B, generator=g)
    out_p = run(z[perm], mu[perm], logvar[perm], bank)
    for name in ("log_qz", "log_qzd", "tc"):
        assert_close(getattr(out_p, name), getattr(out, name)[perm], rtol=1e-9, atol=1e-9, what=name)
    dims = torch.randperm(D, generator=g)
    bank_d = None
    if bank is not None:
        bank_d = tcestim.MemoryBank(bank_size, D)
        bank_d.update(bank.mu[:, dims], bank.logvar[:, dims])
    out_d = run(z[:, dims], mu[:, dims], logvar[:, dims], bank_d)
    assert_close(out_d.log_qzd, out.log_qzd[:, dims], rtol=1e-9, atol=1e-9, what="log_qzd")
    assert_close(out_d.tc, out.tc, rtol=1e-9, atol=1e-9, what="tc")
    scale = torch.exp(torch.randn(D, generator=g, dtype=z.dtype)) * torch.sign(torch.randn(D, generator=g,
                                                                                          dtype=z.dtype))
    shift = torch.randn(D, generator=g, dtype=z.dtype)
    bank_a = None
    if bank is not None:
        bank_a = tcestim.MemoryBank(bank_size, D)
        bank_a.update(bank.mu * scale + shift, bank.logvar + 2 * scale.abs().log())
    out_a = run(z * scale + shift, mu * scale + shift, logvar + 2 * scale.abs().log(), bank_a)
    assert_close(out_a.log_qzd, out.log_qzd - scale.abs().log(), rtol=1e-8, atol=1e-8, what="log_qzd")
    assert_close(out_a.tc, out.tc, rtol=1e-8, atol=1e-8, what="tc")
