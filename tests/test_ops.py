"""The compiled operators against the independent float64 reference, gradients, opcheck, compile."""
import math

import numpy as np
import pytest
import torch

import tcestim
from tcestim import _fallback

from op_helpers import WEIGHTS, make_inputs, reference_outputs, run_op

pytestmark = pytest.mark.usefixtures("requires_extension")

# (M, K, D): sizes straddle every lane width (2..16), M != K both ways, D == 1.
SHAPES = [(1, 1, 1), (3, 5, 2), (17, 17, 4), (33, 20, 1), (9, 40, 11), (64, 64, 32)]
TOL = {torch.float64: dict(rtol=1e-10, atol=1e-10), torch.float32: dict(rtol=1e-5, atol=2e-5)}








@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", ["structured", "dense"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "M{}-K{}-D{}".format(*s))
def test_forward_matches_reference(cpu_isa, shape, mode, dtype):
    z, mu, logvar, lw = make_inputs(*shape, dtype)
    log_qz, log_qzd = run_op(z, mu, logvar, lw, mode)
    want_qz, want_qzd = reference_outputs(z, mu, logvar, lw, mode)
    assert log_qz.dtype == dtype and log_qz.shape == (shape[0],) and log_qzd.shape == (shape[0], shape[2])
    np.testing.assert_allclose(log_qz.double().numpy(), want_qz, **TOL[dtype])
    np.testing.assert_allclose(log_qzd.double().numpy(), want_qzd, **TOL[dtype])


@pytest.mark.parametrize("mode", ["structured", "dense"])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 2), (4, 9, 3), (18, 17, 2)], ids=lambda s: "M{}-K{}-D{}".format(*s))
def test_gradcheck_float64(cpu_isa, shape, mode):
    z, mu, logvar, lw = make_inputs(*shape, torch.float64, seed=1, requires_grad=True)
    if mode == "dense":
        fn, inputs = (lambda z, m, v, w: run_op(z, m, v, w, "dense")), (z, mu, logvar, lw)
    else:
        fn, inputs = (lambda z, m, v: run_op(z, m, v, None, "structured")), (z, mu, logvar)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("output", ["joint", "marginals"])
def test_gradient_of_one_output_only(output):
    """A loss that uses only one output still gets exact gradients (the other grad is None)."""
    z, mu, logvar, lw = make_inputs(6, 7, 3, torch.float64, seed=2, requires_grad=True)
    pick = 0 if output == "joint" else 1
    assert torch.autograd.gradcheck(
        lambda z, m, v: run_op(z, m, v, None, "structured")[pick].sum(), (z, mu, logvar))


def test_backward_float32_matches_float64():
    z, mu, logvar, _ = make_inputs(40, 24, 6, torch.float64, seed=3, requires_grad=True)
    grads64 = torch.autograd.grad(sum(o.sum() for o in run_op(z, mu, logvar, None, "structured")), (z, mu, logvar))
    z32, mu32, lv32 = (t.detach().float().requires_grad_() for t in (z, mu, logvar))
    grads32 = torch.autograd.grad(sum(o.sum() for o in run_op(z32, mu32, lv32, None, "structured")), (z32, mu32, lv32))
    for g32, g64 in zip(grads32, grads64):
        torch.testing.assert_close(g32.double(), g64, rtol=1e-4, atol=1e-4)


def _opcheck_cases():
    z, mu, logvar, lw = make_inputs(7, 5, 3, torch.float64, seed=4, requires_grad=True)
    log_qz, log_qzd = (t.detach() for t in torch.ops.tcestim.mixture_logdensity_dense(z, mu, logvar, lw))
    g, gd = torch.randn_like(log_qz), torch.randn_like(log_qzd)
    zd, mud, lvd, lwd = (t.detach() for t in (z, mu, logvar, lw))
    return {
        "mixture_logdensity": (z, mu, logvar, *WEIGHTS),
        "mixture_logdensity_dense": (z, mu, logvar, lw),
        "mixture_logdensity_backward": (g, gd, zd, mud, lvd, log_qz, log_qzd, *WEIGHTS),
        "mixture_logdensity_dense_backward": (g, gd, zd, mud, lvd, lwd, log_qz, log_qzd),
    }


@pytest.mark.parametrize("name", [
    "mixture_logdensity", "mixture_logdensity_dense", "mixture_logdensity_backward",
    "mixture_logdensity_dense_backward"])
def test_opcheck(name):
    args = _opcheck_cases()[name]
    torch.library.opcheck(getattr(torch.ops.tcestim, name).default, args)


@pytest.mark.parametrize("mode", ["structured", "dense"])
def test_torch_compile_fullgraph_same_values_and_grads(mode):
    z, mu, logvar, lw = make_inputs(20, 12, 4, torch.float32, seed=5, requires_grad=True)

    def loss(z, mu, logvar, lw):
        log_qz, log_qzd = run_op(z, mu, logvar, lw, mode)
        return (log_qz - log_qzd.sum(1)).mean()

    compiled = torch.compile(loss, fullgraph=True, backend="aot_eager")
    eager_value = loss(z, mu, logvar, lw)
    eager_grads = torch.autograd.grad(eager_value, (z, mu, logvar))
    value = compiled(z, mu, logvar, lw)
    grads = torch.autograd.grad(value, (z, mu, logvar))
    torch.testing.assert_close(value, eager_value, rtol=0, atol=0)
    for g, e in zip(grads, eager_grads):
        torch.testing.assert_close(g, e, rtol=0, atol=0)


def test_total_correlation_under_inductor():
    z, mu, logvar, _ = make_inputs(32, 32, 5, torch.float32, seed=6, requires_grad=True)
    fn = lambda z, m, v: tcestim.total_correlation(z, m, v, dataset_size=1000)  # noqa: E731
    compiled = torch.compile(fn, fullgraph=True)
    expected = fn(z, mu, logvar)
    got = compiled(z, mu, logvar)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(torch.autograd.grad(got, z)[0], torch.autograd.grad(expected, z)[0],
                               rtol=1e-5, atol=1e-6)


def test_bitwise_deterministic_across_thread_counts():
    z, mu, logvar, _ = make_inputs(200, 150, 7, torch.float32, seed=7, requires_grad=True)
    previous = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 1):
            torch.set_num_threads(threads)
            log_qz, log_qzd = run_op(z, mu, logvar, None, "structured")
            grads = torch.autograd.grad(log_qz.sum() + log_qzd.sum(), (z, mu, logvar))
            results.append([log_qz, log_qzd, *grads])
    finally:
        torch.set_num_threads(previous)
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.equal(a, b)


@pytest.mark.parametrize("mode", ["structured", "dense"])
def test_fallback_matches_fused(mode):
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


def test_zero_weights_give_minus_inf_not_nan():
    z, mu, logvar, _ = make_inputs(5, 4, 2, torch.float64)
    log_qz, log_qzd = torch.ops.tcestim.mixture_logdensity(z, mu, logvar, -math.inf, -math.inf, -math.inf)
    assert torch.all(log_qz == -math.inf) and torch.all(log_qzd == -math.inf)


def test_far_queries_do_not_underflow():
    """Queries 1e3 standard deviations from every component: finite, exact log-densities."""
    z, mu, logvar, _ = make_inputs(6, 5, 3, torch.float32)
    z = z + 1000.0
    log_qz, log_qzd = torch.ops.tcestim.mixture_logdensity(z, mu, logvar, *WEIGHTS)
    want_qz, want_qzd = reference_outputs(z, mu, logvar, None, "structured")
    assert torch.isfinite(log_qz).all() and torch.isfinite(log_qzd).all()
    np.testing.assert_allclose(log_qz.double().numpy(), want_qz, rtol=1e-5)
    np.testing.assert_allclose(log_qzd.double().numpy(), want_qzd, rtol=1e-5)


def test_cpu_isa_controls():
    assert tcestim.cpu_isa() in ("default", "avx2", "avx512")
    with pytest.raises(RuntimeError, match="name must be one of"):
        tcestim.set_cpu_isa("sse9")
