"""Reference VAEs with a diagonal-Gaussian encoder, and the likelihoods they are trained with.

- :class:`ConvVAE`: the dSprites architecture of Mathieu et al. (2019), table 1a: encoder
  conv 32x4x4/2, conv 32x4x4/2, conv 64x4x4/2, conv 64x4x4/2, fc 128, fc 2 x latent (ReLU between),
  decoder fc 128, fc 64x4x4, upconv 64x4x4/2, upconv 64x4x4/2, upconv 32x4x4/2, upconv
  channels x4x4/2. For other image sizes (a power of two >= 16) the number of stride-2 layers is
  log2(image_size / 4): 32 x 32 images drop the second 32-channel conv and its mirror.
- :class:`MLPVAE`: fully connected encoder/decoder (the pinwheel model of table 1b is
  ``MLPVAE(2, 2, hidden=(100,))``).

Both return ``VAEOutput(z, mu, logvar, recon)`` from ``forward`` with a reparameterised sample z;
``recon`` is what ``decode`` returns: Bernoulli logits (``bernoulli_log_likelihood``) or a Gaussian
mean (``gaussian_log_likelihood``), the model does not fix which.
"""
from __future__ import annotations

import math
import operator
from typing import NamedTuple, Optional, Sequence, Union

import torch
from torch import nn
from torch.nn import functional as F

__all__ = ["VAEOutput", "ConvVAE", "MLPVAE", "reparameterize", "bernoulli_log_likelihood",
           "gaussian_log_likelihood"]

_LOG_2PI = math.log(2 * math.pi)


class VAEOutput(NamedTuple):
    z: torch.Tensor       # (B, D) reparameterised sample of q(z|x)
    mu: torch.Tensor      # (B, D) encoder mean
    logvar: torch.Tensor  # (B, D) encoder log-variance
    recon: torch.Tensor   # decoder output at z: logits or mean, shaped like x


def reparameterize(mu: torch.Tensor, logvar: torch.Tensor,
                   generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """z = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (drawn with ``generator`` when given)."""
    eps = torch.randn(mu.shape, generator=generator, dtype=mu.dtype, device=mu.device)
    return mu + torch.exp(0.5 * logvar) * eps


def _sum_per_sample(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(t.shape[0], -1).sum(1)


def bernoulli_log_likelihood(logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log Bernoulli(x; sigmoid(logits)) summed over all but the batch dimension: (B,), in nats.

    ``x`` may be fractional in [0, 1] (the negative binary cross-entropy, as used for dSprites).
    """
    if logits.shape != x.shape:
        raise ValueError(f"logits and x must have one shape, got {tuple(logits.shape)} and {tuple(x.shape)}")
    return -_sum_per_sample(F.binary_cross_entropy_with_logits(logits, x.to(logits.dtype), reduction="none"))


def gaussian_log_likelihood(mean: torch.Tensor, x: torch.Tensor,
                            log_scale: Union[float, torch.Tensor] = 0.0) -> torch.Tensor:
    """log N(x; mean, exp(log_scale)^2) summed over all but the batch dimension: (B,), in nats.

    ``log_scale`` is the log standard deviation: a float or a tensor broadcastable to ``x``
    (a learned per-pixel or global scale).
    """
    if mean.shape != x.shape:
        raise ValueError(f"mean and x must have one shape, got {tuple(mean.shape)} and {tuple(x.shape)}")
    log_scale = torch.as_tensor(log_scale, dtype=mean.dtype, device=mean.device)
    log_prob = -0.5 * _LOG_2PI - log_scale - 0.5 * ((x.to(mean.dtype) - mean) * torch.exp(-log_scale)).square()
    return _sum_per_sample(log_prob.expand_as(mean))


class _GaussianVAE(nn.Module):
    """encode -> (mu, logvar); decode(z); forward samples z by reparameterisation."""

    latent_dim: int

    def encode(self, x: torch.Tensor):
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor, generator: Optional[torch.Generator] = None) -> VAEOutput:
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, generator)
        return VAEOutput(z, mu, logvar, self.decode(z))


class ConvVAE(_GaussianVAE):
    """Convolutional VAE of Mathieu et al. (2019), table 1a (see the module docstring).

    Args:
        latent_dim: D, the size of z.
        image_size: side of the square input (a power of two >= 16; 64 for dSprites, 32 for quick runs).
        channels: input/output channels.

    ``encode(x)``: x (B, channels, S, S) -> (mu, logvar), (B, D) each. ``decode(z)``: (B, D) ->
    (B, channels, S, S) logits (or means, for a Gaussian likelihood).
    """

    def __init__(self, latent_dim: int = 10, image_size: int = 64, channels: int = 1):
        super().__init__()
        self.latent_dim = operator.index(latent_dim)
        self.image_size = operator.index(image_size)
        self.channels = operator.index(channels)
        if self.latent_dim < 1 or self.channels < 1:
            raise ValueError(f"latent_dim and channels must be >= 1, got {latent_dim}, {channels}")
        S = self.image_size
        if S < 16 or S & (S - 1):
            raise ValueError(f"image_size must be a power of two >= 16, got {image_size}")
        n = int(math.log2(S // 4))            # stride-2 layers: 4 for 64 x 64, 3 for 32 x 32
        enc = [32] * (n - 2) + [64, 64]        # 64: 32, 32, 64, 64
        layers, c_in = [], self.channels
        for c in enc:
            layers += [nn.Conv2d(c_in, c, 4, stride=2, padding=1), nn.ReLU()]
            c_in = c
        self.encoder = nn.Sequential(*layers, nn.Flatten(), nn.Linear(64 * 4 * 4, 128), nn.ReLU(),
                                     nn.Linear(128, 2 * self.latent_dim))
        dec = [64] * (n - 2) + [32]            # 64: 64, 64, 32, then channels
        layers, c_in = [], 64
        for c in dec:
            layers += [nn.ConvTranspose2d(c_in, c, 4, stride=2, padding=1), nn.ReLU()]
            c_in = c
        layers.append(nn.ConvTranspose2d(c_in, self.channels, 4, stride=2, padding=1))
        self.decoder = nn.Sequential(nn.Linear(self.latent_dim, 128), nn.ReLU(), nn.Linear(128, 64 * 4 * 4),
                                     nn.ReLU(), nn.Unflatten(1, (64, 4, 4)), *layers)

    def encode(self, x: torch.Tensor):
        expected = (self.channels, self.image_size, self.image_size)
        if x.dim() != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"x must have shape (B, {expected[0]}, {expected[1]}, {expected[2]}), "
                             f"got {tuple(x.shape)}")
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)


class MLPVAE(_GaussianVAE):
    """Fully connected VAE: input_dim -> hidden (ReLU) -> 2 x latent_dim, decoder mirrored.

    Args:
        input_dim: size of a flattened input (inputs of shape (B, ...) are flattened).
        latent_dim: D.
        hidden: widths of the encoder's hidden layers (ReLU).
        output_shape: shape of one decoded item (default ``(input_dim,)``), e.g. ``(1, 28, 28)``.
        decoder_hidden: widths of the decoder's hidden layers (default: ``hidden`` reversed).
        decoder_activation: ``"relu"`` (default) or ``"tanh"`` between the decoder's layers.
    """

    def __init__(self, input_dim: int, latent_dim: int, hidden: Sequence[int] = (256, 256),
                 output_shape: Optional[Sequence[int]] = None, decoder_hidden: Optional[Sequence[int]] = None,
                 decoder_activation: str = "relu"):
        super().__init__()
        self.input_dim = operator.index(input_dim)
        self.latent_dim = operator.index(latent_dim)
        hidden = tuple(operator.index(h) for h in hidden)
        if self.input_dim < 1 or self.latent_dim < 1 or any(h < 1 for h in hidden):
            raise ValueError(f"sizes must be >= 1, got input_dim={input_dim}, latent_dim={latent_dim}, "
                             f"hidden={hidden}")
        self.output_shape = tuple(output_shape) if output_shape is not None else (self.input_dim,)
        if math.prod(self.output_shape) != self.input_dim:
            raise ValueError(f"output_shape {self.output_shape} must hold input_dim = {self.input_dim} values")
        decoder_hidden = tuple(reversed(hidden)) if decoder_hidden is None else tuple(
            operator.index(h) for h in decoder_hidden)
        if decoder_activation not in ("relu", "tanh"):
            raise ValueError(f"decoder_activation must be 'relu' or 'tanh', got {decoder_activation!r}")
        self.encoder = self._mlp((self.input_dim, *hidden, 2 * self.latent_dim), nn.ReLU)
        self.decoder = self._mlp((self.latent_dim, *decoder_hidden, self.input_dim),
                                 nn.Tanh if decoder_activation == "tanh" else nn.ReLU)

    @staticmethod
    def _mlp(widths, activation):
        layers = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
            layers.append(nn.Linear(a, b))
            if i < len(widths) - 2:
                layers.append(activation())
        return nn.Sequential(*layers)

    def encode(self, x: torch.Tensor):
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.input_dim:
            raise ValueError(f"x must hold input_dim = {self.input_dim} values per item, got {x.shape[1]}")
        mu, logvar = self.encoder(x).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z).reshape(z.shape[0], *self.output_shape)
