"""tcestim.baselines.density_ratio: the FactorVAE-style discriminator (permuted dimensions, the TC
estimate against the Gaussian closed form, shapes and gradients)."""
import math

import pytest
import torch

import tcestim
from tcestim.baselines.density_ratio import DensityRatioTC, fit_density_ratio_tc, permute_dims

from helpers import gaussian_samples


def test_permute_dims_keeps_marginals_and_breaks_dependence():
    x, _ = gaussian_samples(2000, 0.9, seed=1)
    shuffled = permute_dims(x, torch.Generator().manual_seed(2))
    for d in range(2):
        assert torch.equal(torch.sort(shuffled[:, d]).values, torch.sort(x[:, d]).values)
    assert abs(float(torch.corrcoef(shuffled.T)[0, 1])) < 0.1 < 0.85 < float(torch.corrcoef(x.T)[0, 1])


def test_discriminator_estimates_gaussian_tc():
    x, cov = gaussian_samples(4000, 0.8, seed=3)
    model = fit_density_ratio_tc(x.float(), steps=300)
    truth = float(tcestim.gaussian_total_correlation(cov))
    with torch.no_grad():
        estimate = float(model.estimate(x.float()))
    assert estimate == pytest.approx(truth, abs=0.15)


def test_discriminator_shapes_and_gradient():
    model = DensityRatioTC(3, hidden=16, layers=2)
    z = torch.randn(8, 3, requires_grad=True)
    assert model(z).shape == (8, 2)
    model.estimate(z).backward()
    assert z.grad is not None and z.grad.shape == (8, 3)
    assert model.loss(z).item() > 0 and math.isfinite(model.loss(z).item())
