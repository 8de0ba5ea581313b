"""The compiled operators: autograd and fake-tensor (torch.compile) registrations, and the one
internal entry point every estimator calls (fused kernel where registered, else the fallback)."""
from __future__ import annotations

import functools

import torch

from tcestim import _fallback
from tcestim._extension import CUDA_MAX_DIM, extension_available, has_fused_kernel


def _empty_outputs(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return z.new_empty(z.shape[:1]), z.new_empty(z.shape)


def _zeros_if_none(grad, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if grad is None else grad


def _first_order_only(backward):
    """The backward operators have no derivative of their own: refuse to be differentiated.

    A second differentiation (create_graph=True: gradient penalties, Hessian-vector products)
    would otherwise silently get zeros.
    """
    @functools.wraps(backward)
    def wrapper(ctx, *grads):
        if torch.is_grad_enabled() and any(t.requires_grad for t in ctx.saved_tensors):
            raise RuntimeError(
                "tcestim: the fused kernels give first-order gradients only; differentiating their "
                "gradients (create_graph=True) is not supported")
        return backward(ctx, *grads)
    return wrapper


def _register() -> None:
    @torch.library.register_fake("tcestim::mixture_logdensity")
    def _(z, mu, logvar, log_self, log_next, log_other):
        return _empty_outputs(z)

    @torch.library.register_fake("tcestim::mixture_logdensity_dense")
    def _(z, mu, logvar, log_weights):
        return _empty_outputs(z)

    @torch.library.register_fake("tcestim::mixture_logdensity_backward")
    def _(grad_log_qz, grad_log_qzd, z, mu, logvar, log_qz, log_qzd, log_self, log_next, log_other):
        return torch.empty_like(z), torch.empty_like(mu), torch.empty_like(logvar)

    @torch.library.register_fake("tcestim::mixture_logdensity_dense_backward")
    def _(grad_log_qz, grad_log_qzd, z, mu, logvar, log_weights, log_qz, log_qzd):
        return (torch.empty_like(z), torch.empty_like(mu), torch.empty_like(logvar),
                torch.empty_like(log_weights))

    def setup_structured(ctx, inputs, output):
        z, mu, logvar, log_self, log_next, log_other = inputs
        ctx.save_for_backward(z, mu, logvar, *output)
        ctx.log_weights = (log_self, log_next, log_other)

    @_first_order_only
    def backward_structured(ctx, grad_log_qz, grad_log_qzd):
        z, mu, logvar, log_qz, log_qzd = ctx.saved_tensors
        grad_z, grad_mu, grad_logvar = torch.ops.tcestim.mixture_logdensity_backward(
            _zeros_if_none(grad_log_qz, log_qz), _zeros_if_none(grad_log_qzd, log_qzd),
            z, mu, logvar, log_qz, log_qzd, *ctx.log_weights)
        return grad_z, grad_mu, grad_logvar, None, None, None

    def setup_dense(ctx, inputs, output):
        ctx.save_for_backward(*inputs, *output)

    @_first_order_only
    def backward_dense(ctx, grad_log_qz, grad_log_qzd):
        z, mu, logvar, log_weights, log_qz, log_qzd = ctx.saved_tensors
        return torch.ops.tcestim.mixture_logdensity_dense_backward(
            _zeros_if_none(grad_log_qz, log_qz), _zeros_if_none(grad_log_qzd, log_qzd),
            z, mu, logvar, log_weights, log_qz, log_qzd)

    torch.library.register_autograd(
        "tcestim::mixture_logdensity", backward_structured, setup_context=setup_structured)
    torch.library.register_autograd(
        "tcestim::mixture_logdensity_dense", backward_dense, setup_context=setup_dense)


if extension_available():
    _register()


def mixture_logdensity(z, mu, logvar, log_weights):
    """(log_qz (M,), log_qzd (M, D)) with no input checks: callers have validated the inputs and cast
    them to one of float32/float64. ``log_weights``: StructuredLogWeights or an (M, K) tensor."""
    if has_fused_kernel(z.device) and not (z.device.type == "cuda" and z.shape[1] > CUDA_MAX_DIM):
        if isinstance(log_weights, torch.Tensor):
            return torch.ops.tcestim.mixture_logdensity_dense(z, mu, logvar, log_weights)
        return torch.ops.tcestim.mixture_logdensity(z, mu, logvar, *log_weights)
    return _fallback.mixture_logdensity(z, mu, logvar, log_weights)
