"""The CPU kernels on several threads: they really run in parallel, and every thread count gives
bitwise the same forward and backward."""
import numpy as np
import pytest
import torch

from helpers import make_inputs, reference_outputs, run_op

pytestmark = pytest.mark.usefixtures("requires_extension")

THREAD_COUNTS = (1, 2, 3)
# Odd sizes: every lane width (2..16) leaves a partial last block; (3, 40, 3) has one query block.
SHAPES = [(53, 71, 5), (130, 97, 17), (3, 40, 3)]
INT_VIEW = {torch.float32: torch.int32, torch.float64: torch.int64}


@pytest.fixture
def restore_threads():
    previous = torch.get_num_threads()
    yield
    torch.set_num_threads(previous)


def last_region_threads() -> int:
    return torch.ops.tcestim.cpu_last_region_threads()


def forward_backward(shape, mode, dtype):
    """Outputs of the op and gradients of all its inputs for fixed random upstream gradients."""
    z, mu, logvar, lw = make_inputs(*shape, dtype, seed=5, requires_grad=True)
    log_qz, log_qzd = run_op(z, mu, logvar, lw, mode)
    g = torch.Generator().manual_seed(6)
    upstream = [torch.randn(t.shape, generator=g, dtype=torch.float64).to(dtype) for t in (log_qz, log_qzd)]
    inputs = (z, mu, logvar, lw) if mode == "dense" else (z, mu, logvar)
    grads = torch.autograd.grad((log_qz, log_qzd), inputs, upstream)
    return [t.detach() for t in (log_qz, log_qzd, *grads)]


def assert_bitwise_equal(got, want, what):
    assert got.dtype == want.dtype and got.shape == want.shape, what
    int_dtype = INT_VIEW[got.dtype]
    assert torch.equal(got.view(int_dtype), want.view(int_dtype)), \
        f"{what}: {int((got != want).sum())} elements differ, max |diff| {float((got - want).abs().max())}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", ["structured", "dense"])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "M{}-K{}-D{}".format(*s))
def test_bitwise_identical_for_every_thread_count(cpu_isa, restore_threads, shape, mode, dtype):
    results = {}
    for threads in THREAD_COUNTS:
        torch.set_num_threads(threads)
        results[threads] = forward_backward(shape, mode, dtype)

    names = ["log_qz", "log_qzd", "grad_z", "grad_mu", "grad_logvar", "grad_log_weights"]
    for threads in THREAD_COUNTS[1:]:
        for name, got, want in zip(names, results[threads], results[1]):
            assert_bitwise_equal(got, want, f"{name} with {threads} threads vs 1")

    # Equal results could also be equally wrong: the forward must match the float64 reference.
    z, mu, logvar, lw = make_inputs(*shape, torch.float64, seed=5)
    want_qz, want_qzd = reference_outputs(z, mu, logvar, lw, mode)
    tol = dict(rtol=1e-10, atol=1e-10) if dtype == torch.float64 else dict(rtol=1e-5, atol=2e-5)
    np.testing.assert_allclose(results[THREAD_COUNTS[-1]][0].double().numpy(), want_qz, **tol)
    np.testing.assert_allclose(results[THREAD_COUNTS[-1]][1].double().numpy(), want_qzd, **tol)
    for grad in results[THREAD_COUNTS[-1]][2:]:
        assert torch.isfinite(grad).all() and grad.abs().max() > 0


@pytest.mark.parametrize("threads", [2, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_kernels_run_on_several_threads(restore_threads, threads, dtype):
    """Fails when at::parallel_for runs serially, e.g. an extension built without -fopenmp."""
    size = 32 * threads  # at least 2 * threads blocks of queries and of components at 16 lanes
    z, mu, logvar, lw = make_inputs(size, size + 1, 4, dtype, seed=7, requires_grad=True)

    torch.set_num_threads(1)
    run_op(z, mu, logvar, lw, "dense")
    assert last_region_threads() == 1

    torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    log_qz, log_qzd = run_op(z, mu, logvar, lw, "dense")
    assert 1 < last_region_threads() <= threads, "forward ran on one thread"

    torch.set_num_threads(1)
    (log_qz.sum() + log_qzd.sum()).backward(retain_graph=True)
    assert last_region_threads() == 1

    torch.set_num_threads(threads)
    (log_qz.sum() + log_qzd.sum()).backward()
    assert 1 < last_region_threads() <= threads, "backward ran on one thread"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_fused_jackknife_bitwise_identical_for_every_thread_count(cpu_isa, restore_threads, dtype):
    """The fused jackknife (jackknife_sums, jackknife_estimate and their backward kernels), values and
    gradients, and a check that the estimate's kernels ran on several threads."""
    from tcestim.jackknife import jackknife_log_densities

    z, mu, logvar, _ = make_inputs(53, 300, 5, dtype, seed=8)
    g = torch.Generator().manual_seed(9)
    upstream = [torch.randn(*shape, generator=g, dtype=torch.float64).to(dtype) for shape in ((53,), (53, 5))]
    results = {}
    for threads in THREAD_COUNTS:
        torch.set_num_threads(threads)
        leaves = [t.clone().requires_grad_() for t in (z, mu, logvar)]
        log_qz, log_qzd = jackknife_log_densities(*leaves, 1000)
        grads = torch.autograd.grad((log_qz, log_qzd), leaves, upstream)
        results[threads] = [t.detach() for t in (log_qz, log_qzd, *grads)]
    for threads in THREAD_COUNTS[1:]:
        for name, got, want in zip(("log_qz", "log_qzd", "grad_z", "grad_mu", "grad_logvar"), results[threads],
                                   results[1]):
            assert_bitwise_equal(got, want, f"jackknife {name} with {threads} threads vs 1")
    for t in results[1]:
        assert torch.isfinite(t).all() and t.abs().max() > 0


def test_jackknife_estimate_runs_on_several_threads(restore_threads):
    rows, n = 4096, 50
    g = torch.Generator().manual_seed(10)
    args = (torch.randn(rows, generator=g, dtype=torch.float64), torch.zeros(rows, dtype=torch.float64),
            torch.rand(rows, 8, generator=g, dtype=torch.float64), torch.zeros(0, dtype=torch.float64),
            torch.zeros(rows + 1, dtype=torch.int64), n, [-10.0], [5.0])
    torch.set_num_threads(2)
    estimate = torch.ops.tcestim.jackknife_estimate(*args)
    assert last_region_threads() == 2, "forward ran on one thread"
    torch.ops.tcestim.jackknife_estimate_backward(torch.ones_like(estimate), *args)
    assert last_region_threads() == 2, "backward ran on one thread"
