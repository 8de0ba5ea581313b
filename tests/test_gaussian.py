"""tcestim.gaussian: the closed-form total correlation of a Gaussian and of a batch of means, values and
argument checks."""
import math

import numpy as np
import pytest
import torch

import tcestim

from helpers import close, posterior


def test_gaussian_total_correlation_closed_forms():
    rho = 0.6
    cov2 = torch.tensor([[1.0, rho], [rho, 1.0]], dtype=torch.float64)
    assert float(tcestim.gaussian_total_correlation(cov2)) == pytest.approx(-0.5 * math.log(1 - rho ** 2), rel=1e-12)
    diag = torch.diag(torch.tensor([0.5, 2.0, 7.0], dtype=torch.float64))
    assert float(tcestim.gaussian_total_correlation(diag)) == pytest.approx(0.0, abs=1e-14)
    g = torch.Generator().manual_seed(9)
    A = torch.randn(5, 5, generator=g, dtype=torch.float64)
    cov = A @ A.T + 0.5 * torch.eye(5, dtype=torch.float64)
    want = 0.5 * (np.log(np.diag(cov.numpy())).sum() - np.linalg.slogdet(cov.numpy())[1])
    assert float(tcestim.gaussian_total_correlation(cov)) == pytest.approx(want, rel=1e-12)
    batched = tcestim.gaussian_total_correlation(torch.stack([cov, diag.new_tensor(np.eye(5))]))
    assert batched.shape == (2,) and float(batched[1]) == pytest.approx(0.0, abs=1e-14)


def test_gaussian_tc_of_means_matches_numpy():
    g = torch.Generator().manual_seed(10)
    mu = torch.randn(200, 4, generator=g, dtype=torch.float64) @ torch.randn(4, 4, generator=g, dtype=torch.float64)
    cov = np.cov(mu.numpy(), rowvar=False)
    want = 0.5 * (np.log(np.diag(cov)).sum() - np.linalg.slogdet(cov)[1])
    assert float(tcestim.gaussian_tc_of_means(mu)) == pytest.approx(want, rel=1e-10)


def test_gaussian_total_correlation_validation():
    with pytest.raises(TypeError, match=r"^cov must be a torch\.Tensor"):
        tcestim.gaussian_total_correlation([[1.0, 0.0], [0.0, 1.0]])
    with pytest.raises(TypeError, match=r"^cov must have a floating dtype"):
        tcestim.gaussian_total_correlation(torch.eye(2, dtype=torch.int64))
    with pytest.raises(TypeError, match=r"^cov must have a floating dtype"):
        tcestim.gaussian_total_correlation(torch.eye(2, dtype=torch.complex64))
    for shape in [(3,), (2, 3), (4, 3, 2), (0, 0), ()]:
        with pytest.raises(ValueError, match=r"^cov must have shape \(\.\.\., D, D\)"):
            tcestim.gaussian_total_correlation(torch.ones(shape, dtype=torch.float64))


@pytest.mark.parametrize("cov", [
    [[1.0, 2.0], [2.0, 1.0]],           # indefinite
    [[1.0, 1.0], [1.0, 1.0]],           # singular
    [[0.0, 0.0], [0.0, 0.0]],           # zero
    [[-1.0, 0.0], [0.0, 1.0]],          # negative variance
], ids=["indefinite", "singular", "zero", "negative"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_gaussian_total_correlation_rejects_non_pd(cov, dtype):
    with pytest.raises(ValueError, match=r"^cov must be symmetric positive definite"):
        tcestim.gaussian_total_correlation(torch.tensor(cov, dtype=dtype))
    batch = torch.stack([torch.eye(2, dtype=dtype), torch.tensor(cov, dtype=dtype)])
    with pytest.raises(ValueError, match=r"^cov must be symmetric positive definite"):
        tcestim.gaussian_total_correlation(batch)


def test_gaussian_total_correlation_rejects_non_symmetric():
    with pytest.raises(ValueError, match=r"^cov must be symmetric"):
        tcestim.gaussian_total_correlation(torch.tensor([[1.0, 5.0], [0.0, 1.0]], dtype=torch.float64))


def test_gaussian_total_correlation_values():
    rho = 0.6
    cov = torch.tensor([[2.0, rho * math.sqrt(2.0 * 3.0)], [rho * math.sqrt(2.0 * 3.0), 3.0]],
                       dtype=torch.float64)
    close(tcestim.gaussian_total_correlation(cov), torch.tensor(-0.5 * math.log(1 - rho ** 2),
                                                                   dtype=torch.float64))
    diag = torch.diag_embed(torch.tensor([[1.0, 2.0, 3.0], [0.1, 5.0, 7.0]], dtype=torch.float64))
    close(tcestim.gaussian_total_correlation(diag), torch.zeros(2, dtype=torch.float64))
    batch = torch.stack([cov, cov, torch.eye(2, dtype=torch.float64)])
    assert tcestim.gaussian_total_correlation(batch).shape == (3,)


def test_gaussian_tc_of_means_validation():
    with pytest.raises(TypeError, match=r"^mu must be a torch\.Tensor"):
        tcestim.gaussian_tc_of_means(np.zeros((10, 2)))
    with pytest.raises(TypeError, match=r"^mu must have a floating dtype"):
        tcestim.gaussian_tc_of_means(torch.zeros(10, 2, dtype=torch.int64))
    for shape in [(10,), (10, 2, 1)]:
        with pytest.raises(ValueError, match=r"^mu must be 2-D"):
            tcestim.gaussian_tc_of_means(torch.randn(shape, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"^mu must be non-empty"):
        tcestim.gaussian_tc_of_means(torch.zeros(0, 2, dtype=torch.float64))
    for B, D in [(3, 3), (2, 5), (1, 1)]:
        with pytest.raises(ValueError, match=r"^mu needs more rows than columns \(B > D\)"):
            tcestim.gaussian_tc_of_means(torch.randn(B, D, dtype=torch.float64))


def test_gaussian_tc_of_means_values():
    mu = posterior(B=50, D=4)[1]
    close(tcestim.gaussian_tc_of_means(mu), tcestim.gaussian_total_correlation(torch.cov(mu.T)))
    assert abs(tcestim.gaussian_tc_of_means(mu[:, :1]).item()) <= 1e-12  # D = 1
    # constant columns (dead units) are independent of the rest and left out: no ValueError, no NaN
    # (since e93d63d; before, they made the covariance singular and raised)
    assert float(tcestim.gaussian_tc_of_means(torch.ones(10, 2, dtype=torch.float64))) == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gaussian_half_inputs_compute_in_float32(dtype):
    cov = torch.tensor([[2.0, 0.5], [0.5, 1.0]], dtype=dtype)
    got = tcestim.gaussian_total_correlation(cov)
    expected = tcestim.gaussian_total_correlation(cov.float())
    assert got.dtype == torch.float32
    close(got, expected, rtol=1e-6, atol=1e-6)
    mu = posterior(B=40, D=3)[1].to(dtype)
    got = tcestim.gaussian_tc_of_means(mu)
    assert got.dtype == torch.float32
    close(got, tcestim.gaussian_tc_of_means(mu.float()), rtol=1e-5, atol=1e-6)
