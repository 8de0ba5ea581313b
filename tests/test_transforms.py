"""What training and analysis code does to the estimators beyond loss.backward(): forward-mode AD,
torch.func transforms, differentiated gradients, torch.compile of the backward on strided inputs.

References are finite differences (gradcheck / gradgradcheck in float64) and reverse-mode gradients
that the op tests check against the float64 reference; every case runs on every backend.
"""
import pytest
import torch
import torch.autograd.forward_ad as forward_ad
from torch.autograd import gradcheck, gradgradcheck

import tcestim
import tcestim.testing as T

BACKENDS = T.backends()
IDS = [b.name for b in BACKENDS]


def posterior(B=6, D=3, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(B, D, generator=g, dtype=torch.float64)
    mu = z + 0.5 * torch.randn(B, D, generator=g, dtype=torch.float64)
    logvar = 0.3 * torch.randn(B, D, generator=g, dtype=torch.float64)
    return [t.to(device) for t in (z, mu, logvar)]


def bank_of(K, D, seed=1, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    bank = tcestim.MemoryBank(K, D)
    bank.update(torch.randn(K, D, generator=g, dtype=torch.float64).to(device),
                torch.zeros(K, D, dtype=torch.float64, device=device))
    return bank


def reverse_mode_jvp(f, inputs, tangents):
    inputs = [t.detach().requires_grad_(True) for t in inputs]
    grads = torch.autograd.grad(f(*inputs), inputs)
    return sum((g * t).sum() for g, t in zip(grads, tangents))


CASES = {
    "tc": lambda z, mu, lv: tcestim.total_correlation(z, mu, lv, dataset_size=100),
    "mi": lambda z, mu, lv: tcestim.decompose(z, mu, lv, dataset_size=100).mi.mean(),
    "mss": lambda z, mu, lv: tcestim.total_correlation(z, mu, lv, dataset_size=100, estimator="mss"),
    "mss-legacy": lambda z, mu, lv: tcestim.total_correlation(z, mu, lv, dataset_size=100, estimator="mss-legacy"),
}


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
@pytest.mark.parametrize("case", list(CASES))
def test_forward_mode_matches_reverse_mode(backend, case):
    f = CASES[case]
    with T.use_backend(backend):
        inputs = posterior(device=backend.device)
        tangents = [torch.randn_like(t) for t in inputs]
        _, jvp = torch.func.jvp(f, tuple(inputs), tuple(tangents))
        expected = reverse_mode_jvp(f, inputs, tangents)
        torch.testing.assert_close(jvp, expected, rtol=1e-9, atol=1e-10)
        assert float(jvp.abs()) > 1e-6  # a real tangent, not the zero of a missing rule
        with forward_ad.dual_level():
            duals = [forward_ad.make_dual(t, dt) for t, dt in zip(inputs, tangents)]
            tangent = forward_ad.unpack_dual(f(*duals)).tangent
        torch.testing.assert_close(tangent, expected, rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_jacfwd_equals_jacrev_and_gradcheck(backend):
    with T.use_backend(backend):
        z, mu, logvar = posterior(device=backend.device)

        def f(z):
            return tcestim.decompose(z, mu, logvar, dataset_size=50).tc

        jf, jr = torch.func.jacfwd(f)(z), torch.func.jacrev(f)(z)
        assert jf.shape == (6, 6, 3)
        torch.testing.assert_close(jf, jr, rtol=1e-9, atol=1e-10)
        torch.testing.assert_close(torch.func.grad(lambda z: f(z).sum())(z), jr.sum(0), rtol=1e-9, atol=1e-10)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_second_order_gradients_are_right(backend):
    """Gradient penalties and Hessian-vector products: gradgradcheck against finite differences."""
    with T.use_backend(backend):
        inputs = [t.requires_grad_(True) for t in posterior(B=5, D=2, device=backend.device)]
        assert gradgradcheck(CASES["tc"], inputs)
        w = (0.3 * torch.randn(5, 5, dtype=torch.float64) - 1.6).to(backend.device).requires_grad_(True)

        def dense(z, mu, logvar, w):
            return tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=w)

        assert gradgradcheck(dense, [*inputs, w])
        hessian = torch.func.hessian(lambda z: CASES["tc"](z, *inputs[1:]))(inputs[0].detach())
        assert hessian.shape == (5, 2, 5, 2)
        torch.testing.assert_close(hessian, hessian.permute(2, 3, 0, 1), rtol=1e-7, atol=1e-9)  # symmetric


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_vmap_equals_a_loop(backend):
    with T.use_backend(backend):
        z, mu, logvar = posterior(device=backend.device)
        stack = torch.stack([z, z + 0.1, z - 0.2])
        batched = torch.func.vmap(lambda z: CASES["tc"](z, mu, logvar))(stack)
        looped = torch.stack([CASES["tc"](s, mu, logvar) for s in stack])
        torch.testing.assert_close(batched, looped, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS, ids=IDS)
def test_jackknife_first_order_everywhere_second_order_refused(backend):
    with T.use_backend(backend):
        z, mu, logvar = posterior(B=6, D=2, device=backend.device)
        bank = bank_of(7, 2, device=backend.device)

        def f(z, mu, logvar):
            return tcestim.total_correlation(z, mu, logvar, dataset_size=1000, bank=bank, jackknife=True)

        inputs = [t.requires_grad_(True) for t in (z, mu, logvar)]
        assert gradcheck(f, inputs)
        tangents = [torch.randn_like(t) for t in inputs]
        _, jvp = torch.func.jvp(f, tuple(t.detach() for t in inputs), tuple(tangents))
        torch.testing.assert_close(jvp, reverse_mode_jvp(f, inputs, tangents), rtol=1e-9, atol=1e-10)
        grad = torch.func.grad(lambda z: f(z, mu.detach(), logvar.detach()))(z.detach())
        torch.testing.assert_close(grad, torch.autograd.grad(f(*inputs), inputs[0])[0], rtol=1e-12, atol=1e-12)
        (gz,) = torch.autograd.grad(f(*inputs), inputs[0], create_graph=True)
        with pytest.raises(RuntimeError, match="jackknife=True gives first-order gradients only"):
            torch.autograd.grad(gz.sum(), inputs[1])
        with pytest.raises(RuntimeError, match="jackknife=True gives first-order gradients only"):
            torch.func.hessian(lambda z: f(z, mu.detach(), logvar.detach()))(z.detach())


@pytest.mark.skipif(not tcestim.extension_available(), reason="compiled extension not available")
@pytest.mark.parametrize("dense", [False, True], ids=["structured", "dense"])
def test_backward_fake_kernels_give_the_real_strides(dense):
    """The kernels return contiguous gradients for transposed inputs; the fake kernels must agree."""
    g = torch.Generator().manual_seed(3)
    z, mu, logvar = (torch.randn(3, 7, generator=g).T for _ in range(3))
    log_qz, log_qzd = torch.ops.tcestim.mixture_logdensity(z, mu, logvar, -1.0, -2.0, -3.0)
    args = (torch.ones_like(log_qz), torch.ones_like(log_qzd), z, mu, logvar, log_qz, log_qzd, -1.0, -2.0, -3.0)
    op = torch.ops.tcestim.mixture_logdensity_backward
    if dense:
        w = torch.randn(7, 7, generator=g).T
        log_qz, log_qzd = torch.ops.tcestim.mixture_logdensity_dense(z, mu, logvar, w)
        args = (torch.ones_like(log_qz), torch.ones_like(log_qzd), z, mu, logvar, w, log_qz, log_qzd)
        op = torch.ops.tcestim.mixture_logdensity_dense_backward
    torch.library.opcheck(op, args, test_utils=("test_faketensor",))
    for grad in op(*args):
        assert grad.is_contiguous()


@pytest.mark.skipif(not tcestim.extension_available(), reason="compiled extension not available")
def test_compiled_training_step_on_transposed_inputs():
    g = torch.Generator().manual_seed(4)

    def step(z, mu, logvar):
        return tcestim.total_correlation(z, mu, logvar, dataset_size=1000)

    compiled = torch.compile(step, fullgraph=True)
    inputs = [torch.randn(3, 8, generator=g).T.requires_grad_(True) for _ in range(3)]
    value = compiled(*inputs)
    value.backward()
    fresh = [t.detach().clone().requires_grad_(True) for t in inputs]
    expected = step(*fresh)
    expected.backward()
    torch.testing.assert_close(value, expected)
    for got, want in zip(inputs, fresh):
        torch.testing.assert_close(got.grad, want.grad)


@pytest.mark.skipif(not tcestim.extension_available(), reason="compiled extension not available")
def test_a_compiled_training_step_compiles_a_fixed_small_number_of_times():
    """Changing batch sizes and a filling MemoryBank: the log-weights depend on both, and are computed
    as tensors while torch.compile traces, so the step compiles at most twice (static, then dynamic),
    not once per size (it was 6 graphs for 6 batch sizes and 9 while a bank filled)."""
    from torch._dynamo.utils import counters

    from tcestim import losses

    def step(x, bank):  # the loss of a training step; backward() runs outside the compiled region
        mu, logvar = x.tanh(), -torch.ones_like(x)
        z = mu + 0.3 * x
        return losses.beta_tcvae(-x.square().sum(1), z, mu, logvar, dataset_size=50_000, bank=bank).loss

    g = torch.Generator().manual_seed(5)
    for dynamic in (None, True):
        torch._dynamo.reset()
        counters.clear()
        compiled = torch.compile(step, fullgraph=True, dynamic=dynamic, backend="aot_eager")
        bank = tcestim.MemoryBank(512, 3)
        for B in (32, 48, 64, 40, 56, 33, 64, 64, 64, 64):
            x = torch.randn(B, 3, generator=g, requires_grad=True)
            got = compiled(x, bank)
            got.backward()
            y = x.detach().clone().requires_grad_(True)
            want = step(y, bank)
            want.backward()
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(x.grad, y.grad, rtol=1e-5, atol=1e-6)
            bank.update(x.detach().tanh(), -torch.ones_like(x.detach()))
        assert counters["stats"]["unique_graphs"] <= 2, (dynamic, counters["stats"]["unique_graphs"])
    torch._dynamo.reset()


@pytest.mark.skipif(not tcestim.extension_available(), reason="compiled extension not available")
def test_tensor_weights_overload_is_the_float_op():
    """mixture_logdensity_tensor_weights (log-weights as a (3,) float64 CPU tensor, what compiled code calls)
    gives the float op's values and gradients, passes opcheck and gradcheck, and refuses other shapes."""
    g = torch.Generator().manual_seed(6)
    z, mu, logvar = (torch.randn(5, 3, generator=g, dtype=torch.float64) for _ in range(3))
    w = torch.tensor([-1.0, -2.0, -3.0], dtype=torch.float64)
    for got, want in zip(torch.ops.tcestim.mixture_logdensity_tensor_weights(z, mu, logvar, w),
                         torch.ops.tcestim.mixture_logdensity(z, mu, logvar, -1.0, -2.0, -3.0)):
        assert torch.equal(got, want)
    torch.library.opcheck(torch.ops.tcestim.mixture_logdensity_tensor_weights, (z, mu, logvar, w))
    inputs = [t.clone().requires_grad_(True) for t in (z, mu, logvar)]
    assert gradcheck(lambda *t: torch.ops.tcestim.mixture_logdensity_tensor_weights(*t, w), inputs)
    with pytest.raises(RuntimeError, match=r"structured log_weights must be a \(3,\) float64 CPU tensor"):
        torch.ops.tcestim.mixture_logdensity_tensor_weights(z, mu, logvar, w.float())
