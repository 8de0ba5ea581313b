"""The compiled operators: autograd and fake-tensor (torch.compile) registrations, and the one
internal entry point every estimator calls (fused kernel where registered, else the fallback).

Every operator takes ``grad_components`` (-1: all K): the components from that row on are constants
of the mixture (a bank's detached encodings), with gradient 0 that the backward does not compute;
only grad z still sums over them. (At N = 737 280 bank slots and B = 256 that is most of the
backward's work.)

The fused kernels give first-order gradients. Everything beyond is computed by the pure-PyTorch
path (the fallback), which autograd and torch.func differentiate like any PyTorch code:

- a differentiated gradient (``create_graph=True``: gradient penalties, Hessian-vector products):
  the backward recomputes the same gradients through the fallback, differentiably;
- forward-mode AD (``torch.func.jvp``, ``jacfwd``, ``torch.autograd.forward_ad``) and every
  torch.func transform (``grad``, ``jacrev``, ``hessian``, ``vmap``): the call runs on the fallback.
"""
from __future__ import annotations

import torch
import torch.autograd.forward_ad as forward_ad

from tcestim import _fallback
from tcestim._extension import CUDA_MAX_DIM, JACKKNIFE_MAX_BIG, JACKKNIFE_SERIES, extension_available, has_fused_kernel
from tcestim.weights import StructuredLogWeights


def _empty_outputs(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return z.new_empty(z.shape[:1]), z.new_empty(z.shape)


def _contiguous_like(t: torch.Tensor) -> torch.Tensor:
    """The kernels return contiguous gradients whatever the input's strides; the fake kernels must say so."""
    return t.new_empty(t.shape)


def _zeros_if_none(grad, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _constant_from(t: torch.Tensor, grad_components: int) -> torch.Tensor:
    """t with rows grad_components.. detached (-1: none), as the fused backward treats them."""
    if grad_components < 0 or grad_components >= t.shape[0]:
        return t
    return torch.cat([t[:grad_components], t[grad_components:].detach()])


def _first_order_only(grads, inputs):
    """The gradients of a jackknife operator as they are, or (``create_graph=True``) tied to ``inputs``
    by an exact zero, so that a second differentiation reaches tcestim.jackknife's refusal (the
    jackknife gives first-order gradients only) rather than a tensor without a graph."""
    if not torch.is_grad_enabled():
        return grads
    anchor = sum(t.reshape(-1)[:0].sum() for t in inputs)
    return tuple(g + anchor for g in grads)


def _differentiable_vjp(inputs, needs_grad, log_weights, grad_log_qz, grad_log_qzd, grad_components=-1):
    """The vector-Jacobian product of the mixture log-densities, recomputed through the fallback so
    that it can be differentiated again (called from a backward run with create_graph=True)."""
    z, mu, logvar = inputs[0], _constant_from(inputs[1], grad_components), _constant_from(inputs[2], grad_components)
    log_qz, log_qzd = _fallback.mixture_logdensity(z, mu, logvar, log_weights if log_weights is not None
                                                   else inputs[3])
    wanted = [t for t, needed in zip(inputs, needs_grad) if needed]
    grads = iter(torch.autograd.grad((log_qz, log_qzd), wanted, (grad_log_qz, grad_log_qzd), create_graph=True,
                                     allow_unused=True))
    out = []
    for t, needed in zip(inputs, needs_grad):
        g = next(grads) if needed else None
        out.append(torch.zeros_like(t) if needed and g is None else g)
    return out


def _register() -> None:
    @torch.library.register_fake("tcestim::mixture_logdensity")
    def _(z, mu, logvar, log_self, log_next, log_other, grad_components=-1):
        return _empty_outputs(z)

    @torch.library.register_fake("tcestim::mixture_logdensity_dense")
    def _(z, mu, logvar, log_weights, grad_components=-1):
        return _empty_outputs(z)

    @torch.library.register_fake("tcestim::mixture_logdensity_tensor_weights")
    def _(z, mu, logvar, log_weights, grad_components=-1):
        return _empty_outputs(z)

    @torch.library.register_fake("tcestim::mixture_logdensity_tensor_weights_backward")
    def _(grad_log_qz, grad_log_qzd, z, mu, logvar, log_qz, log_qzd, log_weights, grad_components=-1):
        return _contiguous_like(z), _contiguous_like(mu), _contiguous_like(logvar)

    @torch.library.register_fake("tcestim::mixture_logdensity_backward")
    def _(grad_log_qz, grad_log_qzd, z, mu, logvar, log_qz, log_qzd, log_self, log_next, log_other,
          grad_components=-1):
        return _contiguous_like(z), _contiguous_like(mu), _contiguous_like(logvar)

    @torch.library.register_fake("tcestim::mixture_logdensity_dense_backward")
    def _(grad_log_qz, grad_log_qzd, z, mu, logvar, log_weights, log_qz, log_qzd, grad_components=-1):
        return (_contiguous_like(z), _contiguous_like(mu), _contiguous_like(logvar),
                _contiguous_like(log_weights))

    def setup_structured(ctx, inputs, output):
        z, mu, logvar, log_self, log_next, log_other, *rest = inputs
        ctx.save_for_backward(z, mu, logvar, *output)
        ctx.log_weights = (log_self, log_next, log_other)
        ctx.grad_components = rest[0] if rest else -1

    def backward_structured(ctx, grad_log_qz, grad_log_qzd):
        z, mu, logvar, log_qz, log_qzd = ctx.saved_tensors
        grad_log_qz, grad_log_qzd = _zeros_if_none(grad_log_qz, log_qz), _zeros_if_none(grad_log_qzd, log_qzd)
        if torch.is_grad_enabled():
            grads = _differentiable_vjp((z, mu, logvar), ctx.needs_input_grad[:3],
                                        StructuredLogWeights(*ctx.log_weights), grad_log_qz, grad_log_qzd,
                                        ctx.grad_components)
            return (*grads, None, None, None, None)
        grad_z, grad_mu, grad_logvar = torch.ops.tcestim.mixture_logdensity_backward(
            grad_log_qz, grad_log_qzd, z, mu, logvar, log_qz, log_qzd, *ctx.log_weights, ctx.grad_components)
        return grad_z, grad_mu, grad_logvar, None, None, None, None

    def setup_tensor_weights(ctx, inputs, output):
        z, mu, logvar, log_weights, *rest = inputs
        ctx.save_for_backward(z, mu, logvar, log_weights, *output)
        ctx.grad_components = rest[0] if rest else -1

    def backward_tensor_weights(ctx, grad_log_qz, grad_log_qzd):
        z, mu, logvar, log_weights, log_qz, log_qzd = ctx.saved_tensors
        grad_log_qz, grad_log_qzd = _zeros_if_none(grad_log_qz, log_qz), _zeros_if_none(grad_log_qzd, log_qzd)
        if torch.is_grad_enabled():
            grads = _differentiable_vjp((z, mu, logvar), ctx.needs_input_grad[:3],
                                        StructuredLogWeights(*log_weights.tolist()), grad_log_qz, grad_log_qzd,
                                        ctx.grad_components)
            return (*grads, None, None)
        grad_z, grad_mu, grad_logvar = torch.ops.tcestim.mixture_logdensity_tensor_weights_backward(
            grad_log_qz, grad_log_qzd, z, mu, logvar, log_qz, log_qzd, log_weights, ctx.grad_components)
        return grad_z, grad_mu, grad_logvar, None, None

    def setup_dense(ctx, inputs, output):
        z, mu, logvar, log_weights, *rest = inputs
        ctx.save_for_backward(z, mu, logvar, log_weights, *output)
        ctx.grad_components = rest[0] if rest else -1

    def backward_dense(ctx, grad_log_qz, grad_log_qzd):
        z, mu, logvar, log_weights, log_qz, log_qzd = ctx.saved_tensors
        grad_log_qz, grad_log_qzd = _zeros_if_none(grad_log_qz, log_qz), _zeros_if_none(grad_log_qzd, log_qzd)
        if torch.is_grad_enabled():
            grads = _differentiable_vjp((z, mu, logvar, log_weights), ctx.needs_input_grad[:4], None,
                                        grad_log_qz, grad_log_qzd, ctx.grad_components)
            return (*grads, None)
        return (*torch.ops.tcestim.mixture_logdensity_dense_backward(
            grad_log_qz, grad_log_qzd, z, mu, logvar, log_weights, log_qz, log_qzd, ctx.grad_components), None)

    @torch.library.register_fake("tcestim::jackknife_sums")
    def _(z, mu, logvar, grad_components=-1):
        rows = (z.shape[0], z.shape[1] + 1)
        return (z.new_empty(rows), z.new_empty(rows), z.new_empty((*rows, JACKKNIFE_MAX_BIG), dtype=torch.int64),
                z.new_empty(rows, dtype=torch.int64), z.new_empty((*rows, JACKKNIFE_SERIES)))

    @torch.library.register_fake("tcestim::jackknife_sums_backward")
    def _(grad_power_sums, z, mu, logvar, shift, log2_threshold, grad_components=-1):
        return _contiguous_like(z), _contiguous_like(mu), _contiguous_like(logvar)

    def setup_jackknife(ctx, inputs, output):
        z, mu, logvar, *rest = inputs
        shift, log2_threshold, big_index, big_count, _ = output
        ctx.mark_non_differentiable(shift, log2_threshold, big_index, big_count)
        ctx.save_for_backward(z, mu, logvar, shift, log2_threshold)
        ctx.grad_components = rest[0] if rest else -1

    def backward_jackknife(ctx, _shift, _threshold, _big, _count, grad_power_sums):
        z, mu, logvar, shift, log2_threshold = ctx.saved_tensors
        if grad_power_sums is None:
            grad_power_sums = z.new_zeros((*shift.shape, JACKKNIFE_SERIES))
        grads = torch.ops.tcestim.jackknife_sums_backward(grad_power_sums, z, mu, logvar, shift, log2_threshold,
                                                          ctx.grad_components)
        return (*_first_order_only(grads, (z, mu, logvar)), None)

    @torch.library.register_fake("tcestim::jackknife_estimate")
    def _(log_a, log_shift, power_sums, log_big, big_offsets, n, loo_weights, pair_weights):
        return log_a.new_empty((len(loo_weights), log_a.shape[0]))

    @torch.library.register_fake("tcestim::jackknife_estimate_backward")
    def _(grad, log_a, log_shift, power_sums, log_big, big_offsets, n, loo_weights, pair_weights):
        return _contiguous_like(log_a), _contiguous_like(power_sums), _contiguous_like(log_big)

    def setup_jackknife_estimate(ctx, inputs, output):
        ctx.save_for_backward(*inputs[:5])
        ctx.constants = inputs[5:]

    def backward_jackknife_estimate(ctx, grad):
        log_a, log_shift, power_sums, log_big, big_offsets = ctx.saved_tensors
        grads = torch.ops.tcestim.jackknife_estimate_backward(grad, log_a, log_shift, power_sums, log_big, big_offsets,
                                                              *ctx.constants)
        grad_log_a, grad_power_sums, grad_log_big = _first_order_only(grads, (log_a, power_sums, log_big))
        return grad_log_a, None, grad_power_sums, grad_log_big, None, None, None, None

    torch.library.register_autograd("tcestim::jackknife_sums", backward_jackknife, setup_context=setup_jackknife)
    torch.library.register_autograd("tcestim::jackknife_estimate", backward_jackknife_estimate,
                                    setup_context=setup_jackknife_estimate)
    torch.library.register_autograd(
        "tcestim::mixture_logdensity", backward_structured, setup_context=setup_structured)
    torch.library.register_autograd(
        "tcestim::mixture_logdensity_dense", backward_dense, setup_context=setup_dense)
    torch.library.register_autograd(
        "tcestim::mixture_logdensity_tensor_weights", backward_tensor_weights, setup_context=setup_tensor_weights)


if extension_available():
    _register()


def _under_transform(tensors) -> bool:
    """True inside a torch.func transform, or when an input carries a forward-mode tangent."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._functorch.maybe_current_level() is not None:
        return True
    return any(isinstance(t, torch.Tensor) and forward_ad.unpack_dual(t).tangent is not None for t in tensors)


def has_fused_jackknife(*tensors) -> bool:
    """True when tcestim.jackknife can use the fused jackknife sums: CPU kernels, no torch.func
    transform or forward-mode tangent on the inputs, and not while torch.compile traces (the estimate
    is formed from a data-dependent number of big terms)."""
    return (has_fused_kernel(tensors[0].device) and tensors[0].device.type == "cpu"
            and not torch.compiler.is_compiling() and not _under_transform(tensors))


def mixture_logdensity(z, mu, logvar, log_weights, grad_components: int | None = None):
    """(log_qz (M,), log_qzd (M, D)) with no input checks: callers have validated the inputs and cast
    them to one of float32/float64. ``log_weights``: StructuredLogWeights or an (M, K) tensor.

    ``grad_components``: only the components before this row carry gradient (the batch before a
    bank of detached encodings); the fused backward skips the rest. None: all of them. The fallback
    needs no hint: autograd already stops at the detached rows."""
    if (has_fused_kernel(z.device) and not (z.device.type == "cuda" and z.shape[1] > CUDA_MAX_DIM)
            and not _under_transform((z, mu, logvar, log_weights))):
        count = -1 if grad_components is None else grad_components
        if isinstance(log_weights, torch.Tensor):
            return torch.ops.tcestim.mixture_logdensity_dense(z, mu, logvar, log_weights, count)
        if any(isinstance(w, torch.Tensor) for w in log_weights):  # computed under torch.compile
            stacked = torch.stack([torch.as_tensor(w, dtype=torch.float64) for w in log_weights])
            return torch.ops.tcestim.mixture_logdensity_tensor_weights(z, mu, logvar, stacked, count)
        return torch.ops.tcestim.mixture_logdensity(z, mu, logvar, *log_weights, count)
    return _fallback.mixture_logdensity(z, mu, logvar, log_weights)
