"""The CUDA kernels against the CPU kernels and the independent float64 reference.

Skipped as a whole where torch sees no CUDA device. Where one is visible, the extension must have
been built with its CUDA kernels (TCESTIM_CUDA=1, or a CUDA torch with CUDA_HOME set).
"""
import math

import numpy as np
import pytest
import torch

if not torch.cuda.is_available():
    pytest.skip("no CUDA device visible to torch", allow_module_level=True)

import tcestim  # noqa: E402
from tcestim import _fallback  # noqa: E402
from tcestim._extension import CUDA_MAX_DIM as MAX_DIM, has_fused_kernel  # noqa: E402

import reference  # noqa: E402
from op_helpers import WEIGHTS, make_inputs, reference_outputs, run_op  # noqa: E402

CUDA = torch.device("cuda")


def _cuda_kernels_present() -> bool:
    return tcestim.extension_available() and has_fused_kernel(CUDA)


pytestmark = pytest.mark.usefixtures("requires_extension")
needs_kernels = pytest.mark.skipif(not _cuda_kernels_present(),
                                   reason="tcestim._C was built without its CUDA kernels")

# (M, K, D): M != K both ways, D in {1, 10, 64, 300}, sizes off every tile and thread boundary.
SHAPES = [(37, 53, 1), (120, 77, 10), (70, 129, 64), (33, 20, 300)]
# Few rows on one side: the launch splits the other axis over extra blocks (and merges after).
SPLIT_SHAPES = [(6, 1000, 10), (1000, 6, 10)]








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


def tolerances(dtype, D, backward=False):
    if dtype == torch.float64:
        return dict(rtol=1e-10, atol=1e-10)
    if not backward:
        return dict(rtol=1e-5, atol=2e-5)
    # float32 softmax weights carry the rounding of a D-term sum in the exponent.
    scale = max(1.0, D / 16)
    return dict(rtol=1e-4 * scale, atol=1e-4 * scale)


def assert_close(got, want, **tol):
    np.testing.assert_allclose(got.detach().double().cpu().numpy(), want, **tol)


def test_cuda_kernels_registered():
    assert tcestim.extension_available(), "tcestim._C did not load"
    for op in ("mixture_logdensity", "mixture_logdensity_dense", "mixture_logdensity_backward",
               "mixture_logdensity_dense_backward"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"tcestim::{op}", "CUDA"), (
            f"no CUDA kernel for tcestim::{op}: rebuild with TCESTIM_CUDA=1")


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", ["structured", "dense"])
@pytest.mark.parametrize("shape", SHAPES + SPLIT_SHAPES, ids=lambda s: "M{}-K{}-D{}".format(*s))
def test_forward_matches_cpu_and_reference(shape, mode, dtype):
    z, mu, logvar, lw = make_inputs(*shape, dtype)
    want_qz, want_qzd = reference_outputs(z, mu, logvar, lw, mode)
    cpu_qz, cpu_qzd = run_op(z, mu, logvar, lw, mode)
    log_qz, log_qzd = run_op(*(t.to(CUDA) for t in (z, mu, logvar, lw)), mode)
    assert log_qz.device.type == "cuda" and log_qz.dtype == dtype
    assert log_qz.shape == (shape[0],) and log_qzd.shape == (shape[0], shape[2])
    tol = tolerances(dtype, shape[2])
    assert_close(log_qz, want_qz, **tol)
    assert_close(log_qzd, want_qzd, **tol)
    torch.testing.assert_close(log_qz.cpu(), cpu_qz, **tol)
    torch.testing.assert_close(log_qzd.cpu(), cpu_qzd, **tol)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", ["structured", "dense"])
@pytest.mark.parametrize("shape", SHAPES + SPLIT_SHAPES, ids=lambda s: "M{}-K{}-D{}".format(*s))
def test_backward_matches_cpu_and_reference(shape, mode, dtype):
    M, K, D = shape
    z, mu, logvar, lw = make_inputs(M, K, D, dtype, seed=1)
    g = torch.Generator().manual_seed(2)
    g_qz = torch.randn(M, generator=g, dtype=torch.float64).to(dtype)
    g_qzd = torch.randn(M, D, generator=g, dtype=torch.float64).to(dtype)
    want = reference_grads(z, mu, logvar, lw, mode, g_qz, g_qzd)
    inputs = (z, mu, logvar, lw) if mode == "dense" else (z, mu, logvar)
    names = ("grad_z", "grad_mu", "grad_logvar", "grad_logw")
    results = {}
    for device in ("cpu", "cuda"):
        leaves = [t.detach().to(device).requires_grad_() for t in (z, mu, logvar, lw)]
        log_qz, log_qzd = run_op(*leaves, mode)
        loss = (log_qz * g_qz.to(device)).sum() + (log_qzd * g_qzd.to(device)).sum()
        results[device] = torch.autograd.grad(loss, leaves[:len(inputs)])
    tol = tolerances(dtype, D, backward=True)
    for name, got, cpu, ref in zip(names, results["cuda"], results["cpu"], want):
        assert got.device.type == "cuda", name
        assert_close(got, ref, **tol)
        torch.testing.assert_close(got.cpu(), cpu, **tol, msg=lambda m, n=name: f"{n}: {m}")


@needs_kernels
def test_large_dimension_uses_wide_blocks():
    """D = 2048 (512 threads per block, over 48 KB of shared memory) against the CPU kernel."""
    z, mu, logvar, lw = make_inputs(5, 40, MAX_DIM, torch.float64, seed=3)
    for mode in ("structured", "dense"):
        cpu = run_op(z, mu, logvar, lw, mode)
        got = run_op(*(t.to(CUDA) for t in (z, mu, logvar, lw)), mode)
        for a, b in zip(got, cpu):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-10, atol=1e-8)
    zc, muc, lvc = (t.to(CUDA).requires_grad_() for t in (z, mu, logvar))
    grads = torch.autograd.grad(sum(o.sum() for o in run_op(zc, muc, lvc, None, "structured")), (zc, muc, lvc))
    zs, mus, lvs = (t.clone().requires_grad_() for t in (z, mu, logvar))
    want = torch.autograd.grad(sum(o.sum() for o in run_op(zs, mus, lvs, None, "structured")), (zs, mus, lvs))
    for a, b in zip(grads, want):
        torch.testing.assert_close(a.cpu(), b, rtol=1e-9, atol=1e-9)


@needs_kernels
def test_dimension_limit_and_device_checks():
    z, mu, logvar, _ = make_inputs(3, 4, MAX_DIM + 1, torch.float32, device=CUDA)
    with pytest.raises(RuntimeError, match=f"D <= {MAX_DIM}"):
        torch.ops.tcestim.mixture_logdensity(z, mu, logvar, *WEIGHTS)
    z, mu, logvar, lw = make_inputs(3, 4, 2, torch.float32, device=CUDA)
    # The dispatcher picks the CUDA kernel; binding.h's check_on_device names the stray tensor.
    with pytest.raises(RuntimeError, match=r"expected mu on the cuda device of z \(cuda:0\), got cpu"):
        torch.ops.tcestim.mixture_logdensity(z, mu.cpu(), logvar, *WEIGHTS)
    with pytest.raises(RuntimeError, match=r"expected log_weights on the cuda device of z \(cuda:0\), got cpu"):
        torch.ops.tcestim.mixture_logdensity_dense(z, mu, logvar, lw.cpu())
    with pytest.raises(RuntimeError, match="share one dtype"):
        torch.ops.tcestim.mixture_logdensity(z, mu.double(), logvar, *WEIGHTS)


@needs_kernels
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=["f16", "bf16"])
def test_half_inputs_through_the_public_api(dtype):
    z, mu, logvar, _ = make_inputs(50, 70, 8, dtype, seed=4, device=CUDA)
    log_qz, log_qzd = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=WEIGHTS)
    assert log_qz.dtype == torch.float32 and log_qz.device.type == "cuda"
    want_qz, want_qzd = reference_outputs(z.float(), mu.float(), logvar.float(), None, "structured")
    assert_close(log_qz, want_qz, rtol=1e-5, atol=2e-5)
    assert_close(log_qzd, want_qzd, rtol=1e-5, atol=2e-5)
    tc = tcestim.total_correlation(z, mu[:50], logvar[:50], dataset_size=1000)
    want = tcestim.total_correlation(z.cpu().float(), mu[:50].cpu().float(), logvar[:50].cpu().float(),
                                     dataset_size=1000)
    assert tc.dtype == torch.float32 and tc.device.type == "cuda"
    torch.testing.assert_close(tc.cpu(), want, rtol=1e-5, atol=1e-5)


@needs_kernels
@pytest.mark.parametrize("mode", ["structured", "dense"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 2), (4, 9, 3), (18, 17, 2), (3, 300, 2)],
                         ids=lambda s: "M{}-K{}-D{}".format(*s))
def test_gradcheck_float64(shape, mode):
    z, mu, logvar, lw = make_inputs(*shape, torch.float64, seed=5, device=CUDA, requires_grad=True)
    if mode == "dense":
        fn, inputs = (lambda z, m, v, w: run_op(z, m, v, w, "dense")), (z, mu, logvar, lw)
    else:
        fn, inputs = (lambda z, m, v: run_op(z, m, v, None, "structured")), (z, mu, logvar)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


def _opcheck_cases():
    z, mu, logvar, lw = make_inputs(7, 5, 3, torch.float64, seed=6, device=CUDA, requires_grad=True)
    log_qz, log_qzd = (t.detach() for t in torch.ops.tcestim.mixture_logdensity_dense(z, mu, logvar, lw))
    g, gd = torch.randn_like(log_qz), torch.randn_like(log_qzd)
    zd, mud, lvd, lwd = (t.detach() for t in (z, mu, logvar, lw))
    return {
        "mixture_logdensity": (z, mu, logvar, *WEIGHTS),
        "mixture_logdensity_dense": (z, mu, logvar, lw),
        "mixture_logdensity_backward": (g, gd, zd, mud, lvd, log_qz, log_qzd, *WEIGHTS),
        "mixture_logdensity_dense_backward": (g, gd, zd, mud, lvd, lwd, log_qz, log_qzd),
    }


@needs_kernels
@pytest.mark.parametrize("name", [
    "mixture_logdensity", "mixture_logdensity_dense", "mixture_logdensity_backward",
    "mixture_logdensity_dense_backward"])
def test_opcheck(name):
    torch.library.opcheck(getattr(torch.ops.tcestim, name).default, _opcheck_cases()[name])


@needs_kernels
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("mode", ["structured", "dense"])
def test_torch_compile_fullgraph_same_values_and_grads(mode, backend):
    z, mu, logvar, lw = make_inputs(200, 120, 16, torch.float32, seed=7, device=CUDA, requires_grad=True)

    def loss(z, mu, logvar, lw):
        log_qz, log_qzd = run_op(z, mu, logvar, lw, mode)
        return (log_qz - log_qzd.sum(1)).mean()

    torch._dynamo.reset()
    compiled = torch.compile(loss, fullgraph=True, backend=backend)
    wrt = (z, mu, logvar, lw) if mode == "dense" else (z, mu, logvar)
    eager_value = loss(z, mu, logvar, lw)
    eager_grads = torch.autograd.grad(eager_value, wrt)
    value = compiled(z, mu, logvar, lw)
    grads = torch.autograd.grad(value, wrt)
    # aot_eager runs the same kernels on the same inputs: bitwise equal. Inductor may fuse the
    # surrounding reductions differently: equal to rounding.
    tol = dict(rtol=0, atol=0) if backend == "aot_eager" else dict(rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(value, eager_value, **tol)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, **tol)


@needs_kernels
def test_large_run_memory_stays_linear():
    """M = K = 65536, D = 64 float32 forward+backward: extra memory is O((M + K) D), not the cube."""
    M = K = 65536
    D = 64
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    g = torch.Generator(device=CUDA).manual_seed(8)
    z = torch.randn(M, D, device=CUDA, generator=g).requires_grad_()
    mu = torch.randn(K, D, device=CUDA, generator=g).requires_grad_()
    logvar = (0.3 * torch.randn(K, D, device=CUDA, generator=g) - 1.0).requires_grad_()
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
        z.detach()[rows.to(CUDA)].cpu(), mu.detach().cpu(), logvar.detach().cpu(), lw)
    torch.testing.assert_close(log_qz.detach()[rows.to(CUDA)].cpu(), cpu_qz, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(log_qzd.detach()[rows.to(CUDA)].cpu(), cpu_qzd, rtol=1e-5, atol=1e-4)


@needs_kernels
@pytest.mark.parametrize("mode", ["structured", "dense"])
@pytest.mark.parametrize("shape", [(3000, 2000, 17), (64, 5000, 9), (5000, 64, 9)],
                         ids=lambda s: "M{}-K{}-D{}".format(*s))
def test_bitwise_deterministic(shape, mode):
    z, mu, logvar, lw = make_inputs(*shape, torch.float32, seed=9, device=CUDA)
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        results = []
        for _ in range(2):
            leaves = [t.detach().clone().requires_grad_() for t in (z, mu, logvar, lw)]
            log_qz, log_qzd = run_op(*leaves, mode)
            loss = (log_qz * torch.linspace(-1, 1, shape[0], device=CUDA)).sum() + log_qzd.sum()
            wrt = leaves if mode == "dense" else leaves[:3]
            results.append([log_qz, log_qzd, *torch.autograd.grad(loss, wrt)])
    finally:
        torch.use_deterministic_algorithms(previous)
    for a, b in zip(*results):
        assert torch.equal(a, b)


@needs_kernels
def test_minus_inf_weights_give_minus_inf_not_nan():
    z, mu, logvar, lw = make_inputs(5, 40, 3, torch.float32, device=CUDA)
    log_qz, log_qzd = torch.ops.tcestim.mixture_logdensity(z, mu, logvar, -math.inf, -math.inf, -math.inf)
    assert torch.all(log_qz == -math.inf) and torch.all(log_qzd == -math.inf)
    # Only self and next count (log_other = -inf): exactly the two-component mixture.
    log_qz, log_qzd = torch.ops.tcestim.mixture_logdensity(z, mu, logvar, math.log(0.5), math.log(0.5), -math.inf)
    lw_ref = reference.structured_matrix(5, 40, math.log(0.5), math.log(0.5), -math.inf)
    want_qz, want_qzd = reference.mixture_logdensity(*(reference.to_numpy(t) for t in (z, mu, logvar)), lw_ref)
    assert_close(log_qz, want_qz, rtol=1e-5, atol=2e-5)
    assert_close(log_qzd, want_qzd, rtol=1e-5, atol=2e-5)
    # Dense: an all -inf row is an empty mixture, the others are untouched.
    lw = lw.clone()
    lw[2] = -math.inf
    log_qz, log_qzd = torch.ops.tcestim.mixture_logdensity_dense(z, mu, logvar, lw)
    assert log_qz[2] == -math.inf and torch.all(log_qzd[2] == -math.inf)
    assert torch.isfinite(log_qz[[0, 1, 3, 4]]).all()


@needs_kernels
def test_nan_propagates_and_far_queries_stay_exact():
    z, mu, logvar, _ = make_inputs(6, 50, 3, torch.float32, device=CUDA)
    z_nan = z.clone()
    z_nan[1, 2] = math.nan
    log_qz, log_qzd = torch.ops.tcestim.mixture_logdensity(z_nan, mu, logvar, *WEIGHTS)
    assert torch.isnan(log_qz[1]) and torch.isnan(log_qzd[1, 2])
    assert torch.isfinite(log_qzd[1, :2]).all() and torch.isfinite(log_qz[[0, 2, 3, 4, 5]]).all()
    far = z + 1000.0
    log_qz, log_qzd = torch.ops.tcestim.mixture_logdensity(far, mu, logvar, *WEIGHTS)
    want_qz, want_qzd = reference_outputs(far, mu, logvar, None, "structured")
    assert torch.isfinite(log_qz).all() and torch.isfinite(log_qzd).all()
    assert_close(log_qz, want_qz, rtol=1e-5, atol=0)
    assert_close(log_qzd, want_qzd, rtol=1e-5, atol=0)


@needs_kernels
def test_total_correlation_on_cuda_uses_the_fused_kernel(monkeypatch):
    assert has_fused_kernel(CUDA)

    def no_fallback(*args, **kwargs):
        raise AssertionError("the pure-PyTorch fallback ran for CUDA tensors")

    monkeypatch.setattr(_fallback, "mixture_logdensity", no_fallback)
    z, mu, logvar, _ = make_inputs(64, 64, 6, torch.float64, seed=10)
    zc, muc, lvc = (t.to(CUDA).requires_grad_() for t in (z, mu, logvar))
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


@needs_kernels
def test_decompose_exact_streams_on_cuda():
    """The streamed full-dataset decomposition (few queries, many components) agrees with CPU."""
    z, mu, logvar, _ = make_inputs(32, 32, 4, torch.float64, seed=11)
    g = torch.Generator().manual_seed(12)
    mu_all = torch.randn(3000, 4, generator=g, dtype=torch.float64)
    lv_all = 0.3 * torch.randn(3000, 4, generator=g, dtype=torch.float64) - 0.5
    want = tcestim.decompose_exact(z, mu, logvar, mu_all, lv_all, chunk_size=1000)
    got = tcestim.decompose_exact(*(t.to(CUDA) for t in (z, mu, logvar, mu_all, lv_all)), chunk_size=1000)
    for name in ("mi", "tc", "dimkl", "log_qz", "log_qzd"):
        torch.testing.assert_close(getattr(got, name).cpu(), getattr(want, name), rtol=1e-10, atol=1e-10)
