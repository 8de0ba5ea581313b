"""tcestim.baselines.knn: the KSG k-nearest-neighbour TC estimate against the Gaussian closed form."""
import pytest

import tcestim
from tcestim.baselines import knn_total_correlation

from helpers import gaussian_samples


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
    for bad, low in ((0, "k must be >= 1"), (10, "k must be <= 9")):
        with pytest.raises(ValueError, match=low):
            knn_total_correlation(x, k=bad)
    for bad in (2.5, True):
        with pytest.raises(TypeError, match="k must be an int"):
            knn_total_correlation(x, k=bad)
    with pytest.raises(ValueError, match="z must be 2-D"):
        knn_total_correlation(x[:, 0])
