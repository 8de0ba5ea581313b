"""Density-ratio (discriminator) estimate of TC, as in FactorVAE (Kim & Mnih 2018).

A classifier tells samples of q(z) from samples of prod_d q(z_d), obtained by permuting every
dimension independently across the batch. At its optimum, logit_joint - logit_product =
log q(z) - log prod_d q(z_d), whose mean is the TC. Its bias is that of the classifier: included
for comparison with the mixture estimators.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from tcestim._validation import check_matrix


def permute_dims(z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """(B, D) samples of prod_d q(z_d): each column of z shuffled independently.

    Example:
        >>> import torch
        >>> from tcestim.baselines import permute_dims
        >>> z = torch.arange(12.0).reshape(6, 2)
        >>> shuffled = permute_dims(z, torch.Generator().manual_seed(0))
        >>> torch.equal(shuffled.sort(0).values, z)          # each column keeps its values
        True
    """
    z = check_matrix("z", z, "(B, D)")
    B, D = z.shape
    order = torch.argsort(torch.rand(B, D, generator=generator, device="cpu"), dim=0).to(z.device)
    return torch.gather(z, 0, order)


class DensityRatioTC(nn.Module):
    """MLP discriminator (D -> 2 logits: joint, product) whose logit gap estimates log q(z) / prod q(z_d).

    Example:
        >>> import torch
        >>> from tcestim.baselines import DensityRatioTC
        >>> DensityRatioTC(3, hidden=16)(torch.zeros(5, 3)).shape
        torch.Size([5, 2])
    """

    def __init__(self, dim: int, hidden: int = 256, layers: int = 3):
        super().__init__()
        blocks, width = [], dim
        for _ in range(layers):
            blocks += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        self.net = nn.Sequential(*blocks, nn.Linear(width, 2))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        """(B, 2) logits: column 0 'from q(z)', column 1 'from prod_d q(z_d)'."""
        return self.net(z)

    def estimate(self, z: torch.Tensor) -> torch.Tensor:
        """Scalar TC estimate (nats): mean logit gap on samples of q(z). Differentiable in z."""
        logits = self(z)
        return (logits[:, 0] - logits[:, 1]).mean()

    def loss(self, z: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Cross-entropy of telling z (label 0) from permute_dims(z) (label 1); z is detached."""
        z = z.detach()
        logits = torch.cat([self(z), self(permute_dims(z, generator))])
        labels = torch.cat([torch.zeros(len(z)), torch.ones(len(z))]).long().to(z.device)
        return F.cross_entropy(logits, labels)


def fit_density_ratio_tc(samples: torch.Tensor, *, steps: int = 500, batch_size: int = 256,
                         lr: float = 1e-3, hidden: int = 128, seed: int = 0) -> DensityRatioTC:
    """Train a :class:`DensityRatioTC` on (N, D) samples of q(z); returns it in eval mode.

    Example:
        >>> import torch
        >>> from tcestim.baselines import fit_density_ratio_tc
        >>> model = fit_density_ratio_tc(torch.randn(256, 2), steps=5, hidden=8)
        >>> model.training, model.estimate(torch.randn(8, 2)).shape
        (False, torch.Size([]))
    """
    samples = check_matrix("samples", samples, "(N, D)").detach()
    generator = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = DensityRatioTC(samples.shape[1], hidden=hidden).to(samples.device, samples.dtype)
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(steps):
        index = torch.randint(len(samples), (min(batch_size, len(samples)),), generator=generator)
        optimiser.zero_grad()
        model.loss(samples[index], generator).backward()
        optimiser.step()
    return model.eval()
