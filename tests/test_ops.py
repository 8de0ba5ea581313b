"""The mixture log-density operators on every backend: one suite, parametrised over
``tcestim.testing.backends()`` (the ``backend`` fixture of conftest.py) × dtypes × cases.

Backends: the fused CPU kernels once per instruction set (``cpu-avx512``, ``cpu-avx2``,
``cpu-default``), the pure-PyTorch ``fallback`` (CPU), and ``cuda`` where a GPU and a CUDA build are
present. Fused backends are called through the raw ``torch.ops.tcestim.*`` operators; the fallback
calls no operator and is called through the public ``tcestim.log_aggregate_posterior`` (``helpers.mixture``).

Which cases run where:

* every backend: forward and backward against the independent float64 reference (tests/reference.py),
  gradcheck in float64, one output only, float32 vs float64 gradients, torch.compile(fullgraph) with
  aot_eager, -inf weights, NaN and far queries, float16/bfloat16 through the public API;
* fused backends only (``@pytest.mark.fused``; the fallback has no operator): opcheck, validation of the
  raw operators;
* CPU backends only (``@pytest.mark.backends("cpu")``): bitwise determinism across thread counts, the
  numerical extremes, and the fused-vs-fallback agreements to 1e-12 (the CUDA kernels are built with
  --use_fast_math and are held to the forward/backward reference tolerances instead);
* cuda only (``@pytest.mark.backends("cuda")``): the kernel registration, D = 2048 wide blocks, the
  D > 2048 and device checks, inductor, bitwise determinism of large launches, the 65536² memory run,
  and that CUDA tensors reach the fused kernel. They skip on the other backends.

Outside the parametrisation: the ISA switch, torch.compile with inductor on the CPU (compiles once,
on the default instruction set) and the CPU memory checks (subprocesses, RSS).
"""
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import tcestim
import tcestim.testing
from tcestim import _fallback
from tcestim._extension import CUDA_MAX_DIM, has_fused_kernel
from tcestim.weights import StructuredLogWeights

import reference
from helpers import WEIGHTS, make_inputs, mixture, posterior, reference_outputs, run_op

MODES = ["structured", "dense"]
DTYPES = pytest.mark.parametrize("dtype", tcestim.testing.DTYPES, ids=["f32", "f64"])
MAX_DIM = CUDA_MAX_DIM  # from the extension (csrc/kernel_args.h)

# (M, K, D): sizes straddle every lane width (2..16), M != K both ways, D == 1; then D in
# {1, 10, 64, 300} off every CUDA tile and thread boundary; then few rows on one side (the CUDA
# launch splits the other axis over extra blocks and merges after).
SHAPES = [(1, 1, 1), (3, 5, 2), (17, 17, 4), (33, 20, 1), (9, 40, 11), (64, 64, 32),
          (37, 53, 1), (120, 77, 10), (70, 129, 64), (33, 20, 300),
          (6, 1000, 10), (1000, 6, 10)]
shape_ids = "M{}-K{}-D{}".format
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=2e-5)}


def backward_tolerances(dtype, D):
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-10)
    # float32 softmax weights carry the rounding of a D-term sum in the exponent.
    scale = max(1.0, D / 16)
    return dict(rtol=1e-4 * scale, atol=1e-4 * scale)


def assert_close(got, want, **tol):
    np.testing.assert_allclose(got.detach().double().cpu().numpy(), want, **tol)


def reference_grads(z, mu, logvar, log_weights, mode, g_qz, g_qzd):
    """float64 gradients of sum(g_qz * log_qz) + sum(g_qzd * log_qzd), from the softmax formulas."""
    zz, mm, vv = (reference.to_numpy(t) for t in (z, mu, logvar))
    M, K = zz.shape[0], mm.shape[0]
    lw = reference.to_numpy(log_weights) if mode == "dense" else reference.structured_matrix(M, K, *WEIGHTS)
    c = reference.cube(zz, mm, vv)                                     # (M, K, D)
    lqz, lqzd = reference.mixture_logdensity(zz, mm, vv, lw)
    P = np.exp(lw + c.sum(-1) - lqz[:, None])                          # (M, K)
    Q = np.exp(lw[:, :, None] + c - lqzd[:, None, :])                  # (M, K, D)
    g, gd = reference.to_numpy(g_qz), reference.to_numpy(g_qzd)
    W = g[:, None, None] * P[:, :, None] + gd[:, None, :] * Q          # (M, K, D)
    t = zz[:, None, :] - mm[None, :, :]
    prec = np.exp(-vv)[None]
    grad_z = -(W * t * prec).sum(1)
    grad_mu = (W * t * prec).sum(0)
    grad_logvar = (W * (-0.5 + 0.5 * t * t * prec)).sum(0)
    grad_logw = g[:, None] * P + (gd[:, None, :] * Q).sum(-1)
    return grad_z, grad_mu, grad_logvar, grad_logw


# ----------------------------------------------------------------------------------------------
# forward and backward against the float64 reference


@DTYPES
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: shape_ids(*s))
def test_forward_matches_reference(backend, shape, mode, dtype):
    """On cuda, also equal to the CPU kernel (formerly test_cuda.py's test_forward_matches_cpu_and_reference)."""
    z, mu, logvar, lw = make_inputs(*shape, dtype)
    want_qz, want_qzd = reference_outputs(z, mu, logvar, lw, mode)
    log_qz, log_qzd = mixture(backend, *(t.to(backend.device) for t in (z, mu, logvar, lw)), mode)
    assert log_qz.device.type == backend.device
    assert log_qz.dtype == dtype and log_qz.shape == (shape[0],) and log_qzd.shape == (shape[0], shape[2])
    assert_close(log_qz, want_qz, **TOL[dtype])
    assert_close(log_qzd, want_qzd, **TOL[dtype])
    if backend.device != "cpu":
        cpu_qz, cpu_qzd = run_op(z, mu, logvar, lw, mode)
        torch.testing.assert_close(log_qz.cpu(), cpu_qz, **TOL[dtype])
        torch.testing.assert_close(log_qzd.cpu(), cpu_qzd, **TOL[dtype])


@DTYPES
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: shape_ids(*s))
def test_backward_matches_reference(backend, shape, mode, dtype):
    """Gradients against the softmax formulas in float64; on cuda, also against the CPU kernel
    (formerly test_cuda.py's test_backward_matches_cpu_and_reference)."""
    M, K, D = shape
    z, mu, logvar, lw = make_inputs(M, K, D, dtype, seed=1)
    g = torch.Generator().manual_seed(2)
    g_qz = torch.randn(M, generator=g, dtype=torch.float64).to(dtype)
    g_qzd = torch.randn(M, D, generator=g, dtype=torch.float64).to(dtype)
    want = reference_grads(z, mu, logvar, lw, mode, g_qz, g_qzd)
    inputs = (z, mu, logvar, lw) if mode == "dense" else (z, mu, logvar)
    names = ("grad_z", "grad_mu", "grad_logvar", "grad_logw")
    devices = [backend.device] + (["cpu"] if backend.device != "cpu" else [])
    results = {}
    for device in devices:
        leaves = [t.detach().to(device).requires_grad_() for t in (z, mu, logvar, lw)]
        log_qz, log_qzd = (mixture(backend, *leaves, mode) if device == backend.device
                           else run_op(*leaves, mode))
        loss = (log_qz * g_qz.to(device)).sum() + (log_qzd * g_qzd.to(device)).sum()
        results[device] = torch.autograd.grad(loss, leaves[:len(inputs)])
    tol = backward_tolerances(dtype, D)
    for name, got, ref in zip(names, results[backend.device], want):
        assert got.device.type == backend.device, name
        assert_close(got, ref, **tol)
    if backend.device != "cpu":
        for name, got, cpu in zip(names, results[backend.device], results["cpu"]):
            torch.testing.assert_close(got.cpu(), cpu, **tol, msg=lambda m, n=name: f"{n}: {m}")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 2), (4, 9, 3), (18, 17, 2), (3, 300, 2)],
                         ids=lambda s: shape_ids(*s))
def test_gradcheck_float64(backend, shape, mode):
    z, mu, logvar, lw = make_inputs(*shape, torch.float64, seed=1, device=backend.device, requires_grad=True)
    if mode == "dense":
        fn, inputs = (lambda z, m, v, w: mixture(backend, z, m, v, w, "dense")), (z, mu, logvar, lw)
    else:
        fn, inputs = (lambda z, m, v: mixture(backend, z, m, v, None, "structured")), (z, mu, logvar)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("output", ["joint", "marginals"])
def test_gradient_of_one_output_only(backend, output):
    """A loss that uses only one output still gets exact gradients (the other grad is None)."""
    z, mu, logvar, lw = make_inputs(6, 7, 3, torch.float64, seed=2, device=backend.device, requires_grad=True)
    pick = 0 if output == "joint" else 1
    assert torch.autograd.gradcheck(
        lambda z, m, v: mixture(backend, z, m, v, None, "structured")[pick].sum(), (z, mu, logvar))


def test_backward_float32_matches_float64(backend):
    z, mu, logvar, _ = make_inputs(40, 24, 6, torch.float64, seed=3, device=backend.device, requires_grad=True)
    grads64 = torch.autograd.grad(sum(o.sum() for o in mixture(backend, z, mu, logvar, None, "structured")),
                                  (z, mu, logvar))
    z32, mu32, lv32 = (t.detach().float().requires_grad_() for t in (z, mu, logvar))
    grads32 = torch.autograd.grad(sum(o.sum() for o in mixture(backend, z32, mu32, lv32, None, "structured")),
                                  (z32, mu32, lv32))
    for g32, g64 in zip(grads32, grads64):
        torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# opcheck and torch.compile


def _opcheck_cases(device):
    z, mu, logvar, lw = make_inputs(7, 5, 3, torch.float64, seed=4, device=device, requires_grad=True)
    log_qz, log_qzd = (t.detach() for t in torch.ops.tcestim.mixture_logdensity_dense(z, mu, logvar, lw))
    g, gd = torch.randn_like(log_qz), torch.randn_like(log_qzd)
    zd, mud, lvd, lwd = (t.detach() for t in (z, mu, logvar, lw))
    return {
        "mixture_logdensity": (z, mu, logvar, *WEIGHTS),
        "mixture_logdensity_dense": (z, mu, logvar, lw),
        "mixture_logdensity_backward": (g, gd, zd, mud, lvd, log_qz, log_qzd, *WEIGHTS),
        "mixture_logdensity_dense_backward": (g, gd, zd, mud, lvd, lwd, log_qz, log_qzd),
    }


@pytest.mark.fused
@pytest.mark.parametrize("name", [
    "mixture_logdensity", "mixture_logdensity_dense", "mixture_logdensity_backward",
    "mixture_logdensity_dense_backward"])
def test_opcheck(backend, name):
    torch.library.opcheck(getattr(torch.ops.tcestim, name).default, _opcheck_cases(backend.device)[name])


@pytest.mark.fused
def test_opcheck_with_grad_components(backend):
    """The operators with grad_components = 2 of K = 5 (the components from row 2 on are constants)."""
    cases = _opcheck_cases(backend.device)
    for name in ("mixture_logdensity", "mixture_logdensity_dense", "mixture_logdensity_backward",
                 "mixture_logdensity_dense_backward"):
        torch.library.opcheck(getattr(torch.ops.tcestim, name).default, (*cases[name], 2))
    z, mu, logvar, _ = cases["mixture_logdensity"][:4]
    stacked = torch.tensor(list(WEIGHTS), dtype=torch.float64)
    torch.library.opcheck(torch.ops.tcestim.mixture_logdensity_tensor_weights.default, (z, mu, logvar, stacked, 2))


# ----------------------------------------------------------------------------------------------
# grad_components: gradients for the leading components only (a batch before a bank, issue 16)


@pytest.mark.fused
@pytest.mark.parametrize("create_graph", [False, True], ids=["fused", "create_graph"])
@pytest.mark.parametrize("mode", MODES + ["tensor_weights"])
def test_grad_components_differentiates_the_leading_components_only(backend, mode, create_graph):
    """7 queries, 5 of K = 300 components differentiated: the values are those of the full call;
    grad z (over all 300), grad log-weights and the first 5 rows of grad mu / grad logvar equal the
    float64 reference; the other 295 rows are exactly 0. The same through the differentiable
    (create_graph) path, which recomputes through the fallback."""
    z, mu, logvar, lw = make_inputs(7, 300, 3, torch.float64, seed=11, device=backend.device, requires_grad=True)
    owned = 5

    def call(grad_components):
        if mode == "dense":
            return torch.ops.tcestim.mixture_logdensity_dense(z, mu, logvar, lw, grad_components)
        if mode == "tensor_weights":
            stacked = torch.tensor(list(WEIGHTS), dtype=torch.float64)
            return torch.ops.tcestim.mixture_logdensity_tensor_weights(z, mu, logvar, stacked, grad_components)
        return torch.ops.tcestim.mixture_logdensity(z, mu, logvar, *WEIGHTS, grad_components)

    log_qz, log_qzd = call(owned)
    full_qz, full_qzd = call(-1)
    assert torch.equal(log_qz, full_qz) and torch.equal(log_qzd, full_qzd)
    g = torch.randn(7, dtype=torch.float64, generator=torch.Generator().manual_seed(1)).to(backend.device)
    gd = torch.randn(7, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2)).to(backend.device)
    wrt = (z, mu, logvar, lw) if mode == "dense" else (z, mu, logvar)
    grads = torch.autograd.grad((g * log_qz).sum() + (gd * log_qzd).sum(), wrt, create_graph=create_graph)
    want = reference_grads(z, mu, logvar, lw, "dense" if mode == "dense" else "structured", g, gd)
    tol = backward_tolerances(torch.float64, 3)
    assert_close(grads[0], want[0], **tol)
    for got, full in zip(grads[1:3], want[1:3]):
        assert_close(got[:owned], full[:owned], **tol)
        assert torch.count_nonzero(got[owned:]) == 0 and np.count_nonzero(full[owned:]) > 0
    if mode == "dense":
        assert_close(grads[3], want[3], **tol)


@pytest.mark.fused
def test_grad_components_out_of_range_is_refused(backend):
    z, mu, logvar, lw = make_inputs(4, 6, 2, torch.float64, device=backend.device)
    for bad in (-2, 7):
        with pytest.raises(RuntimeError, match=r"grad_components must be -1 \(all\) or in \[0, K = 6\]"):
            torch.ops.tcestim.mixture_logdensity(z, mu, logvar, *WEIGHTS, bad)
        with pytest.raises(RuntimeError, match=r"grad_components must be -1"):
            torch.ops.tcestim.mixture_logdensity_dense_backward(
                z[:, 0], z, z, mu, logvar, lw, z[:, 0], z, bad)


@pytest.mark.parametrize("compiler", ["aot_eager", "inductor"])
@pytest.mark.parametrize("mode", MODES)
def test_torch_compile_fullgraph_same_values_and_grads(backend, mode, compiler):
    if compiler == "inductor" and backend.device != "cuda":
        pytest.skip("inductor on the CPU: test_total_correlation_under_inductor (compiles once)")
    z, mu, logvar, lw = make_inputs(200, 120, 16, torch.float32, seed=7, device=backend.device,
                                    requires_grad=True)

    def loss(z, mu, logvar, lw):
        log_qz, log_qzd = mixture(backend, z, mu, logvar, lw, mode)
        return (log_qz - log_qzd.sum(1)).mean()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend=compiler)
    wrt = (z, mu, logvar, lw) if mode == "dense" else (z, mu, logvar)
    eager_value = loss(z, mu, logvar, lw)
    eager_grads = torch.autograd.grad(eager_value, wrt)
    value = compiled(z, mu, logvar, lw)
    grads = torch.autograd.grad(value, wrt)
    # aot_eager runs the same kernels on the same inputs: bitwise equal. Inductor may fuse the
    # surrounding reductions differently: equal to rounding.
    tol = dict(rtol=0, atol=0) if compiler == "aot_eager" else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(value, eager_value, **tol)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, **tol)


@pytest.mark.usefixtures("requires_extension")
def test_total_correlation_under_inductor():
    z, mu, logvar, _ = make_inputs(32, 32, 5, torch.float32, seed=6, requires_grad=True)
    fn = lambda z, m, v: tcestim.total_correlation(z, m, v, dataset_size=1000)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    expected = fn(z, mu, logvar)
    got = compiled(z, mu, logvar)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(got, z)[0], torch.autograd.grad(expected, z)[0],
                               rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------
# determinism


@pytest.mark.backends("cpu")
def test_bitwise_deterministic_across_thread_counts(backend):
    z, mu, logvar, _ = make_inputs(200, 150, 7, torch.float32, seed=7, requires_grad=True)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            log_qz, log_qzd = mixture(backend, z, mu, logvar, None, "structured")
            grads = torch.autograd.grad(log_qz.sum() + log_qzd.sum(), (z, mu, logvar))
            results.append([log_qz, log_qzd, *grads])
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.backends("cuda")
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("shape", [(3000, 2000, 17), (64, 5000, 9), (5000, 64, 9)], ids=lambda s: shape_ids(*s))
def test_bitwise_deterministic(backend, shape, mode):
    z, mu, logvar, lw = make_inputs(*shape, torch.float32, seed=9, device=backend.device)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        results = []
        for _ in range(2):
            leaves = [t.detach().clone().requires_grad_() for t in (z, mu, logvar, lw)]
            log_qz, log_qzd = run_op(*leaves, mode)
            loss = (log_qz * torch.linspace(-1, 1, shape[0], device=backend.device)).sum() + log_qzd.sum()
            wrt = leaves if mode == "dense" else leaves[:3]
            results.append([log_qz, log_qzd, *torch.autograd.grad(loss, wrt)])
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(*results):
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------
# the fallback against the fused kernels


@pytest.mark.fused
@pytest.mark.backends("cpu")
@pytest.mark.parametrize("mode", MODES)
def test_fallback_matches_fused(backend, mode):
    """The pure-PyTorch path (used on devices without a kernel) agrees with the fused kernel."""
    z, mu, logvar, lw = make_inputs(23, 31, 5, torch.float64, seed=8, requires_grad=True)
    weights = lw if mode == "dense" else WEIGHTS
    fused = run_op(z, mu, logvar, lw, mode)
    fallback = _fallback.mixture_logdensity(z, mu, logvar, weights)
    for a, b in zip(fused, fallback):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    g_fused = torch.autograd.grad(fused[0].sum() + fused[1].sum(), (z, mu, logvar))
    g_fallback = torch.autograd.grad(fallback[0].sum() + fallback[1].sum(), (z, mu, logvar))
    for a, b in zip(g_fused, g_fallback):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


# ----------------------------------------------------------------------------------------------
# zero weights, NaN, far queries


def test_zero_weights_give_minus_inf_not_nan(backend):
    z, mu, logvar, _ = make_inputs(5, 4, 2, torch.float64, device=backend.device)
    zero = StructuredLogWeights(-math.inf, -math.inf, -math.inf)
    log_qz, log_qzd = mixture(backend, z, mu, logvar, None, "structured", weights=zero)
    assert torch.all(log_qz == -math.inf) and torch.all(log_qzd == -math.inf)


def test_minus_inf_weights_give_minus_inf_not_nan(backend):
    z, mu, logvar, lw = make_inputs(5, 40, 3, torch.float32, device=backend.device)
    zero = StructuredLogWeights(-math.inf, -math.inf, -math.inf)
    log_qz, log_qzd = mixture(backend, z, mu, logvar, None, "structured", weights=zero)
    assert torch.all(log_qz == -math.inf) and torch.all(log_qzd == -math.inf)
    # Only self and next count (log_other = -inf): exactly the two-component mixture.
    pair = StructuredLogWeights(math.log(0.5), math.log(0.5), -math.inf)
    log_qz, log_qzd = mixture(backend, z, mu, logvar, None, "structured", weights=pair)
    lw_ref = reference.structured_matrix(5, 40, math.log(0.5), math.log(0.5), -math.inf)
    want_qz, want_qzd = reference.mixture_logdensity(*(reference.to_numpy(t) for t in (z, mu, logvar)), lw_ref)
    assert_close(log_qz, want_qz, rtol=1e-5, atol=2e-5)
    assert_close(log_qzd, want_qzd, rtol=1e-5, atol=2e-5)
    # Dense: an all -inf row is an empty mixture, the others are untouched.
    lw = lw.clone()
    lw[2] = -math.inf
    log_qz, log_qzd = mixture(backend, z, mu, logvar, lw, "dense")
    assert log_qz[2] == -math.inf and torch.all(log_qzd[2] == -math.inf)
    assert torch.isfinite(log_qz[[0, 1, 3, 4]]).all()


def test_far_queries_do_not_underflow(backend):
    """Queries 1e3 standard deviations from every component: finite, exact log-densities."""
    z, mu, logvar, _ = make_inputs(6, 5, 3, torch.float32, device=backend.device)
    z = z + 1000.0
    log_qz, log_qzd = mixture(backend, z, mu, logvar, None, "structured")
    want_qz, want_qzd = reference_outputs(z, mu, logvar, None, "structured")
    assert torch.isfinite(log_qz).all() and torch.isfinite(log_qzd).all()
    assert_close(log_qz, want_qz, rtol=1e-5)
    assert_close(log_qzd, want_qzd, rtol=1e-5)


def test_nan_propagates_and_far_queries_stay_exact(backend):
    z, mu, logvar, _ = make_inputs(6, 50, 3, torch.float32, device=backend.device)
    z_nan = z.clone()
    z_nan[1, 2] = math.nan
    log_qz, log_qzd = mixture(backend, z_nan, mu, logvar, None, "structured")
    assert torch.isnan(log_qz[1]) and torch.isnan(log_qzd[1, 2])
    assert torch.isfinite(log_qzd[1, :2]).all() and torch.isfinite(log_qz[[0, 2, 3, 4, 5]]).all()
    far = z + 1000.0
    log_qz, log_qzd = mixture(backend, far, mu, logvar, None, "structured")
    want_qz, want_qzd = reference_outputs(far, mu, logvar, None, "structured")
    assert torch.isfinite(log_qz).all() and torch.isfinite(log_qzd).all()
    assert_close(log_qz, want_qz, rtol=1e-5, atol=0)
    assert_close(log_qzd, want_qzd, rtol=1e-5, atol=0)


@DTYPES
@pytest.mark.parametrize("mode", MODES)
def test_nearer_components_late_in_the_sweep(backend, mode, dtype):
    """Components ordered from far to near: every later run of them has terms far above the earlier
    maximum (hundreds of nats, past the range of exp), so the forward must move its reference
    instead of overflowing; and one near component at the very end. Forward and gradients against
    the float64 reference."""
    M, K, D = 20, 96, 3
    z, _, logvar, lw = make_inputs(M, K, D, dtype, seed=3)
    distance = torch.linspace(40.0, 0.0, K, dtype=torch.float64)[:, None]
    mu = (z.double().mean(0) + distance * torch.tensor([1.0, -0.5, 0.25], dtype=torch.float64)).to(dtype)
    logvar = torch.full_like(logvar, -1.0)
    inputs = [t.to(backend.device).requires_grad_() for t in (z, mu, logvar, lw)]
    log_qz, log_qzd = mixture(backend, *inputs, mode)
    want_qz, want_qzd = reference_outputs(z, mu, logvar, lw, mode)
    c = reference.cube(*(reference.to_numpy(t) for t in (z, mu, logvar)))
    assert (c[:, 16, 0] - c[:, 0, 0]).min() > 100  # the second run of components far above the first
    assert_close(log_qz, want_qz, **TOL[dtype])
    assert_close(log_qzd, want_qzd, **TOL[dtype])
    g_qz, g_qzd = torch.ones(M, dtype=torch.float64), torch.ones(M, D, dtype=torch.float64)
    grads = torch.autograd.grad((log_qz, log_qzd), inputs[:3], (g_qz.to(log_qz), g_qzd.to(log_qzd)))
    want = reference_grads(z, mu, logvar, lw, mode, g_qz, g_qzd)
    for got, ref in zip(grads, want):
        assert_close(got, ref, **backward_tolerances(dtype, D))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_inputs_through_the_public_api(backend, dtype):
    z, mu, logvar, _ = make_inputs(50, 70, 8, dtype, seed=4, device=backend.device)
    log_qz, log_qzd = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=WEIGHTS)
    assert log_qz.dtype == torch.float32 and log_qz.device.type == backend.device
    want_qz, want_qzd = reference_outputs(z.float(), mu.float(), logvar.float(), None, "structured")
    assert_close(log_qz, want_qz, rtol=1e-5, atol=2e-5)
    assert_close(log_qzd, want_qzd, rtol=1e-5, atol=2e-5)
    tc = tcestim.total_correlation(z, mu[:50], logvar[:50], dataset_size=1000)
    want = tcestim.total_correlation(z.cpu().float(), mu[:50].cpu().float(), logvar[:50].cpu().float(),
                                     dataset_size=1000)
    assert tc.dtype == torch.float32 and tc.device.type == backend.device
    torch.testing.assert_close(tc.cpu(), want, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# numerical extremes (formerly test_robustness.py): the kernels stay finite wherever the float64
# reference is, for logvar in [-30, 30], |z - mu| up to 1e4, D up to 1024, one query, one
# component. The reference gets the inputs after rounding to the tested dtype, so differences
# measure the kernel, not the input rounding.

EXTREME_WEIGHTS = StructuredLogWeights(math.log(0.01), math.log(0.3), math.log(0.05))
# (M, K, D, scale of z, logvar low, logvar high)
EXTREMES = [
    (9, 7, 3, 1e4, -30.0, 30.0),
    (5, 6, 1024, 3.0, -2.0, 2.0),
    (1, 1, 4, 1e4, -30.0, -30.0),
    (7, 5, 2, 1e4, 30.0, 30.0),
    (20, 20, 8, 1.0, -30.0, -29.0),
    (1, 40, 5, 1.0, -1.0, 1.0),
    (40, 1, 5, 10.0, -1.0, 1.0),
]


def extreme_inputs(M, K, D, scale, lo, hi, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(M, D, generator=g, dtype=torch.float64)
    mu = torch.randn(K, D, generator=g, dtype=torch.float64)
    logvar = lo + (hi - lo) * torch.rand(K, D, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (z, mu, logvar)]


@pytest.mark.backends("cpu")
@DTYPES
@pytest.mark.parametrize("case", EXTREMES, ids=lambda c: "M{}-K{}-D{}-z{:g}-lv{:g}..{:g}".format(*c))
def test_extremes_finite_and_match_reference(backend, case, dtype):
    z, mu, logvar = extreme_inputs(*case, dtype)
    log_qz, log_qzd = mixture(backend, z, mu, logvar, None, "structured", weights=EXTREME_WEIGHTS)
    M, K = case[0], case[1]
    want_qz, want_qzd = reference.mixture_logdensity(
        *(reference.to_numpy(t) for t in (z, mu, logvar)), reference.structured_matrix(M, K, *EXTREME_WEIGHTS))
    assert np.isfinite(want_qz).all() and np.isfinite(want_qzd).all()
    assert torch.isfinite(log_qz).all() and torch.isfinite(log_qzd).all()
    rtol = 2e-6 if dtype == torch.float32 else 1e-12
    for got, want in ((log_qz, want_qz), (log_qzd, want_qzd)):
        error = np.abs(got.double().numpy() - want) / np.maximum(1.0, np.abs(want))
        assert error.max() <= rtol


@pytest.mark.fused
@pytest.mark.backends("cpu")
@pytest.mark.parametrize("case", EXTREMES[:1] + EXTREMES[2:5], ids=lambda c: "M{}-K{}-D{}".format(*c[:3]))
def test_gradients_at_extremes_match_autograd_reference(backend, case):
    """Gradients agree with PyTorch autograd through the materialised cube, to the conditioning limit.

    The softmax weights are exp(x - logsumexp(x)) with |x| up to max|C|: any float64 implementation
    knows them only to about max|C| * eps, so the tolerance (relative to the largest gradient) is
    10 * eps * max|C|, and never looser than 1e-9.
    """
    z, mu, logvar = (t.requires_grad_() for t in extreme_inputs(*case, torch.float64, seed=1))
    fused = torch.ops.tcestim.mixture_logdensity(z, mu, logvar, *EXTREME_WEIGHTS)
    grads = torch.autograd.grad(fused[0].sum() + fused[1].sum(), (z, mu, logvar))
    slow = _fallback.mixture_logdensity(z, mu, logvar, EXTREME_WEIGHTS)
    want = torch.autograd.grad(slow[0].sum() + slow[1].sum(), (z, mu, logvar))
    max_c = float(np.abs(reference.cube(*(reference.to_numpy(t) for t in (z, mu, logvar)))).max())
    relative = max(1e-9, 10 * np.finfo(np.float64).eps * max_c)
    for g, w in zip(grads, want):
        assert torch.isfinite(g).all()
        scale = float(w.abs().max().clamp(min=1.0))
        assert float((g - w).abs().max()) <= relative * scale


# ----------------------------------------------------------------------------------------------
# validation of the raw operators


@pytest.mark.fused
def test_raw_operator_rejects_bad_inputs(backend):
    ops = torch.ops.tcestim
    z, mu, logvar = (t.to(backend.device) for t in posterior())
    zeros = dict(dtype=torch.float64, device=backend.device)
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
        ops.mixture_logdensity_dense(z[0], mu, logvar, torch.zeros(5, 5, **zeros))
    with pytest.raises(RuntimeError, match=r"log_weights must have shape \(M, K\)"):
        ops.mixture_logdensity_dense(z, mu, logvar, torch.zeros(5, 4, **zeros))
    with pytest.raises(RuntimeError, match=r"log_weights must have dtype"):
        ops.mixture_logdensity_dense(z, mu, logvar, torch.zeros(5, 5, dtype=torch.float32, device=backend.device))


@pytest.mark.backends("cuda")
def test_dimension_limit_and_device_checks(backend):
    z, mu, logvar, _ = make_inputs(3, 4, MAX_DIM + 1, torch.float32, device=backend.device)
    with pytest.raises(RuntimeError, match=f"D <= {MAX_DIM}"):
        torch.ops.tcestim.mixture_logdensity(z, mu, logvar, *WEIGHTS)
    z, mu, logvar, lw = make_inputs(3, 4, 2, torch.float32, device=backend.device)
    # The dispatcher picks the CUDA kernel; binding.h's check_on_device names the stray tensor.
    with pytest.raises(RuntimeError, match=r"expected mu on the cuda device of z \(cuda:0\), got cpu"):
        torch.ops.tcestim.mixture_logdensity(z, mu.cpu(), logvar, *WEIGHTS)
    with pytest.raises(RuntimeError, match=r"expected log_weights on the cuda device of z \(cuda:0\), got cpu"):
        torch.ops.tcestim.mixture_logdensity_dense(z, mu, logvar, lw.cpu())
    with pytest.raises(RuntimeError, match="share one dtype"):
        torch.ops.tcestim.mixture_logdensity(z, mu.double(), logvar, *WEIGHTS)


@pytest.mark.usefixtures("requires_extension")
def test_cpu_isa_controls():
    assert tcestim.cpu_isa() in ("default", "avx2", "avx512")
    with pytest.raises(RuntimeError, match="name must be one of"):
        tcestim.set_cpu_isa("sse9")


# ----------------------------------------------------------------------------------------------
# CUDA: registration, wide blocks, the fused path of the public API, memory


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device visible to torch")
@pytest.mark.usefixtures("requires_extension")
def test_cuda_kernels_registered():
    """Where torch sees a GPU, the extension must have been built with its CUDA kernels
    (TCESTIM_CUDA=1, or a CUDA torch with CUDA_HOME set)."""
    assert tcestim.extension_available(), "tcestim._C did not load"
    for op in ("mixture_logdensity", "mixture_logdensity_dense", "mixture_logdensity_backward",
               "mixture_logdensity_dense_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tcestim::{op}", "CUDA"), (
            f"no CUDA kernel for tcestim::{op}: rebuild with TCESTIM_CUDA=1")


@pytest.mark.backends("cuda")
def test_large_dimension_uses_wide_blocks(backend):
    """D = 2048 (512 threads per block, over 48 KB of shared memory) against the CPU kernel."""
    device = backend.device
    z, mu, logvar, lw = make_inputs(5, 40, MAX_DIM, torch.float64, seed=3)
    for mode in ("structured", "dense"):
        cpu = run_op(z, mu, logvar, lw, mode)
        got = run_op(*(t.to(device) for t in (z, mu, logvar, lw)), mode)
        for a, b in zip(got, cpu):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-8)
    zc, muc, lvc = (t.to(device).requires_grad_() for t in (z, mu, logvar))
    grads = torch.autograd.grad(sum(o.sum() for o in run_op(zc, muc, lvc, None, "structured")), (zc, muc, lvc))
    zs, mus, lvs = (t.clone().requires_grad_() for t in (z, mu, logvar))
    want = torch.autograd.grad(sum(o.sum() for o in run_op(zs, mus, lvs, None, "structured")), (zs, mus, lvs))
    for a, b in zip(grads, want):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-9)


@pytest.mark.backends("cuda")
def test_total_correlation_on_cuda_uses_the_fused_kernel(backend, monkeypatch):
    device = torch.device(backend.device)
    assert has_fused_kernel(device)

    def no_fallback(*args, **kwargs):
        raise AssertionError("the pure-PyTorch fallback ran for CUDA tensors")

    monkeypatch.setattr(_fallback, "mixture_logdensity", no_fallback)
    z, mu, logvar, _ = make_inputs(64, 64, 6, torch.float64, seed=10)
    zc, muc, lvc = (t.to(device).requires_grad_() for t in (z, mu, logvar))
    tc = tcestim.total_correlation(zc, muc, lvc, dataset_size=1000)
    assert tc.device.type == "cuda"
    zs, mus, lvs = (t.clone().requires_grad_() for t in (z, mu, logvar))
    want = tcestim.total_correlation(zs, mus, lvs, dataset_size=1000)
    torch.testing.assert_close(tc.cpu(), want, rtol=1e-10, atol=1e-10)
    for a, b in zip(torch.autograd.grad(tc, (zc, muc, lvc)), torch.autograd.grad(want, (zs, mus, lvs))):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-10)
    for estimator in ("mss", "mws", "mss-legacy"):
        got = tcestim.total_correlation(zc, muc, lvc, dataset_size=1000, estimator=estimator)
        torch.testing.assert_close(
            got.cpu(), tcestim.total_correlation(zs, mus, lvs, dataset_size=1000, estimator=estimator),
            rtol=1e-10, atol=1e-10)


@pytest.mark.backends("cuda")
def test_large_run_memory_stays_linear(backend):
    """M = K = 65536, D = 64 float32 forward+backward: extra memory is O((M + K) D), not the cube."""
    device = torch.device(backend.device)
    M = K = 65536
    D = 64
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    g = torch.Generator(device=device).manual_seed(8)
    z = torch.randn(M, D, device=device, generator=g).requires_grad_()
    mu = torch.randn(K, D, device=device, generator=g).requires_grad_()
    logvar = (0.3 * torch.randn(K, D, device=device, generator=g) - 1.0).requires_grad_()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    baseline = torch.cuda.memory_allocated()
    log_qz, log_qzd = torch.ops.tcestim.mixture_logdensity(z, mu, logvar, *WEIGHTS)
    loss = (log_qz - log_qzd.sum(1)).mean()
    loss.backward()
    torch.cuda.synchronize()
    element = 4
    outputs = (M + M * D) * element
    grads = 3 * M * D * element
    extra = torch.cuda.max_memory_allocated() - baseline - outputs - grads
    assert extra < 1 << 30, f"peak extra memory {extra / 2**20:.0f} MiB"
    for t in (log_qz, log_qzd, z.grad, mu.grad, logvar.grad):
        assert torch.isfinite(t).all()
    # A few rows against the CPU kernel (dense rows of the same structured weights).
    rows = torch.tensor([0, 1, 4097, M - 1])
    lw = torch.full((len(rows), K), WEIGHTS.other)
    for k, i in enumerate(rows.tolist()):  # structured_matrix's rule, for these rows only
        lw[k, (i + 1) % M] = WEIGHTS.next
        lw[k, i] = WEIGHTS.self
    cpu_qz, cpu_qzd = torch.ops.tcestim.mixture_logdensity_dense(
        z.detach()[rows.to(device)].cpu(), mu.detach().cpu(), logvar.detach().cpu(), lw)
    torch.testing.assert_close(log_qz.detach()[rows.to(device)].cpu(), cpu_qz, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log_qzd.detach()[rows.to(device)].cpu(), cpu_qzd, rtol=1e-5, atol=1e-4)


# ----------------------------------------------------------------------------------------------
# CPU memory (formerly test_robustness.py): subprocesses, resident set size


def _run_python(code: str, timeout: int) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


_RSS = """
def rss_mib():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
def peak_mib():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
"""


@pytest.mark.usefixtures("requires_extension")
@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_no_memory_growth_over_ten_thousand_calls():
    out = _run_python(_RSS + """
import torch, tcestim
torch.manual_seed(0)
z, mu, logvar = (torch.randn(64, 8, requires_grad=True) for _ in range(3))
def step():
    tcestim.total_correlation(z, mu, logvar, dataset_size=1000).backward()
for _ in range(1000):
    step()
before = rss_mib()
for _ in range(10000):
    step()
print(rss_mib() - before)
""", timeout=600)
    growth = float(out.strip().splitlines()[-1])
    assert growth < 8.0, f"RSS grew by {growth:.1f} MiB over 10000 forward+backward calls"


@pytest.mark.slow
@pytest.mark.usefixtures("requires_extension")
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_no_cube_sized_allocation_at_16384():
    """M = K = 16384, D = 64, float32: the cube would be 64 GiB; forward+backward needs megabytes."""
    out = _run_python(_RSS + """
import torch, tcestim
torch.manual_seed(0)
M, D = 16384, 64
z, mu = torch.randn(M, D, requires_grad=True), torch.randn(M, D, requires_grad=True)
logvar = (0.3 * torch.randn(M, D)).requires_grad_()
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
base = peak_mib()
tcestim.total_correlation(z, mu, logvar, dataset_size=100000).backward()
print(peak_mib() - base)
""", timeout=900)
    extra = float(out.strip().splitlines()[-1])
    assert extra < 256.0, f"peak RSS rose by {extra:.0f} MiB"
