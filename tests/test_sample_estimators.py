"""Sample-only TC estimators: KSG kNN and the FactorVAE-style density-ratio discriminator."""
import math

import pytest
import torch

import tcestim
from tcestim.baselines import knn_total_correlation
from tcestim.baselines.density_ratio import DensityRatioTC, fit_density_ratio_tc, permute_dims


def gaussian_samples(n, rho, seed=0, dim=2):
    cov = (1 - rho) * torch.eye(dim, dtype=torch.float64) + rho * torch.ones(dim, dim, dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T, cov


@pytest.mark.parametrize("rho,dim", [(0.0, 2), (0.8, 2), (0.5, 4)])
def test_knn_tc_close_to_gaussian_closed_form(rho, dim):
    x, cov = gaussian_samples(4000, rho, dim=dim)
    truth = float(tcestim.gaussian_total_correlation(cov))
    assert knn_total_correlation(x, k=4) == pytest.approx(truth, abs=0.06)


def test_knn_tc_of_one_dimension_is_near_zero():
    """psi(k) - mean psi(n + 1) with n = k - 1 in exact arithmetic; rounding of z +- eps can
    move the k-th neighbour across the boundary, so only approximately zero."""
    x, _ = gaussian_samples(500, 0.0, dim=1)
    assert knn_total_correlation(x) == pytest.approx(0.0, abs=0.05)


def test_knn_validation():
    x, _ = gaussian_samples(10, 0.0)
    for bad in (0, 10, 2.5, True):
        with pytest.raises(ValueError, match=r"k must be an int in \[1, N\)"):
            knn_total_correlation(x, k=bad)
    with pytest.raises(ValueError, match="z must be 2-D"):
        knn_total_correlation(x[:, 0])


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
