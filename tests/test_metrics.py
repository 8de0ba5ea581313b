"""tcestim.metrics: MIG (chen / discrete) sanity on synthetic codes, the MI matrix, Hoyer, TC of means vs samples."""
import math

import numpy as np
import pytest
import torch

import tcestim
from tcestim.metrics import (
    MIG,
    MIGDetails,
    discrete_entropy,
    discrete_mutual_information,
    hoyer_sparsity,
    mig,
    mutual_information_matrix,
    tc_of_means_vs_samples,
)

METHODS = ("chen", "discrete")
SIZES = (5, 6, 8)
SIGMA = 0.02   # noise of the means and posterior standard deviation of the factorised code


def _grid(sizes, repeats):
    axes = [torch.arange(s) for s in sizes]
    grid = torch.stack([m.reshape(-1) for m in torch.meshgrid(*axes, indexing="ij")], 1)
    return grid.repeat(repeats, 1)


@pytest.fixture(scope="module")
def code():
    """A factorised code of a 5 x 6 x 8 factor grid (2400 points): latent k is a noisy monotone
    (tanh-shaped) function of factor k with a narrow posterior."""
    g = torch.Generator().manual_seed(0)
    f = _grid(SIZES, 10)
    lin = torch.stack([2 * f[:, k] / (SIZES[k] - 1) - 1 for k in range(3)], 1).float()
    mu = torch.tanh(0.8 * lin) / math.tanh(0.8) + SIGMA * torch.randn(f.shape[0], 3, generator=g)
    logvar = torch.full_like(mu, 2 * math.log(SIGMA))
    return mu, logvar, f


def _haar_rotation(d, seed):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(seed), dtype=torch.float64))
    return (q * torch.sign(torch.diagonal(r))).float()


@pytest.mark.parametrize("method", METHODS)
def test_factorised_code_scores_high_and_mi_matrix_is_diagonal(code, method):
    mu, logvar, f = code
    result = mig(mu, logvar, f, method=method, factor_sizes=SIZES)
    score, details = result
    assert isinstance(result, MIG) and result.score is score and result.details is details
    assert isinstance(score, torch.Tensor) and score.shape == () and score.dtype == torch.float64
    assert isinstance(details, MIGDetails) and details.method == method
    assert details.mi.shape == (3, 3) and details.gaps.shape == (3,)
    assert score >= 0.9
    H = details.factor_entropy
    assert torch.allclose(H, torch.log(torch.tensor(SIZES, dtype=torch.float64)))   # uniform factors
    diag = details.mi.diagonal()
    off = details.mi - torch.diag(diag)
    assert bool((diag >= 0.9 * H).all()) and bool((diag <= H + 0.05).all())
    assert float(off.abs().max()) <= 0.05 * float(H.min())
    assert details.best_latent.tolist() == [0, 1, 2]
    assert score == pytest.approx(float(details.gaps.mean()))


@pytest.mark.parametrize("method", METHODS)
def test_rotated_code_scores_low(code, method):
    mu, logvar, f = code
    # Every latent mixes every factor with weight +-1/2 (a 4-D Hadamard rotation with one quiet dim).
    H4 = torch.tensor([[1, 1, 1, 1], [1, -1, 1, -1], [1, 1, -1, -1], [1, -1, -1, 1]], dtype=torch.float32) / 2
    mu4 = torch.cat([mu, torch.zeros(mu.shape[0], 1)], 1) @ H4.T
    assert mig(mu4, torch.full_like(mu4, 2 * math.log(SIGMA)), f, method=method)[0] <= 0.1
    # Haar-random rotations: MIG drops from ~0.99 to ~0.25 on average. A single random rotation can
    # land near an axis for one factor (over 40 seeds: median 0.2-0.25, 90th percentile 0.41,
    # max 0.55), so the bound is on the mean over 8 fixed seeds, with a loose bound on each.
    scores = [mig(mu @ _haar_rotation(3, seed).T, logvar, f, method=method)[0] for seed in range(8)]
    assert float(np.mean(scores)) <= 0.3
    assert max(scores) <= 0.6


@pytest.mark.parametrize("method", METHODS)
def test_constant_code_scores_zero(code, method):
    _, logvar, f = code
    mu = torch.full_like(logvar, 0.3)
    score, details = mig(mu, logvar, f, method=method)
    assert score == pytest.approx(0.0, abs=1e-6)
    assert float(details.mi.abs().max()) <= 1e-5


@pytest.mark.parametrize("method", METHODS)
def test_extra_noise_dimensions(code, method):
    mu, logvar, f = code
    g = torch.Generator().manual_seed(1)
    N = mu.shape[0]
    collapsed = 0.01 * torch.randn(N, 2, generator=g)            # an unused VAE dimension: q(z|n) ~ prior
    noisy = torch.randn(N, 2, generator=g)                       # informative about n, not about v
    mu7 = torch.cat([mu, collapsed, noisy], 1)
    logvar7 = torch.cat([logvar, torch.zeros(N, 2), torch.full((N, 2), 2 * math.log(0.1))], 1)
    score, details = mig(mu7, logvar7, f, method=method)
    assert details.mi.shape == (7, 3)
    assert score >= 0.9
    assert float(details.mi[3:].abs().max()) <= 0.05
    assert details.best_latent.tolist() == [0, 1, 2]


def test_chen_matches_numerical_mutual_information():
    """v uniform on {0, 1}, z | v ~ N(+-1, 1) exactly: I(z; v) = H(z) - H(z | v) by quadrature."""
    n = 4000
    v = torch.arange(n) % 2
    mu = (2.0 * v - 1.0).double().unsqueeze(1)
    logvar = torch.zeros_like(mu)
    x = np.linspace(-12, 12, 200001)
    mix = 0.5 * (np.exp(-0.5 * (x - 1) ** 2) + np.exp(-0.5 * (x + 1) ** 2)) / math.sqrt(2 * math.pi)
    h_z = -np.trapezoid(mix * np.log(mix), x)
    truth = h_z - 0.5 * math.log(2 * math.pi * math.e)
    mi = mutual_information_matrix(mu, logvar, v, samples_per_point=2)
    assert float(mi[0, 0]) == pytest.approx(truth, abs=0.02)
    # The single-latent MIG is I / H(v) (no second latent to subtract).
    score, details = mig(mu, logvar, v, samples_per_point=2)
    assert score == pytest.approx(float(mi[0, 0]) / math.log(2), rel=1e-9)


def test_chen_subsampling_and_determinism(code):
    mu, logvar, f = code
    full = mig(mu, logvar, f)
    again = mig(mu, logvar, f)
    assert full[0] == again[0] and torch.equal(full[1].mi, again[1].mi)      # default seed is fixed
    sub = mig(mu, logvar, f, num_samples=150, max_components=1200, samples_per_point=1,
              generator=torch.Generator().manual_seed(5))
    assert sub[0] >= 0.85
    assert abs(sub[0] - full[0]) <= 0.1
    other = mig(mu, logvar, f, generator=torch.Generator().manual_seed(6))
    assert abs(other[0] - full[0]) <= 0.02


def test_chen_float64_and_numpy_factors(code):
    mu, logvar, f = code
    s32 = mig(mu, logvar, f)[0]
    s64 = mig(mu.double(), logvar.double(), f.numpy())[0]
    assert float(s64) == pytest.approx(float(s32), abs=0.02)


def test_discrete_binning_and_plug_in_mi():
    a = np.array([0, 0, 1, 1, 2, 2, 2, 2])
    p = np.array([2, 2, 4]) / 8
    assert discrete_entropy(a) == pytest.approx(float(-(p * np.log(p)).sum()))
    assert discrete_mutual_information(a, a) == pytest.approx(discrete_entropy(a))
    b = np.array([0, 1, 0, 1, 0, 1, 0, 1])                       # independent of a
    assert discrete_mutual_information(a, b) == pytest.approx(0.0, abs=1e-12)
    # A hand-computed joint: p(a, b) = [[3, 1], [1, 3]] / 8.
    x, y = np.array([0, 0, 0, 0, 1, 1, 1, 1]), np.array([0, 0, 0, 1, 0, 1, 1, 1])
    expected = 2 * (3 / 8) * math.log((3 / 8) / 0.25) + 2 * (1 / 8) * math.log((1 / 8) / 0.25)
    assert discrete_mutual_information(x, y) == pytest.approx(expected)
    # Binned mu: 20 equal-width bins over the range; a linear code of a 20-valued factor is exact.
    f = torch.arange(2000) % 20
    mu = (f.float() * 0.37 - 2.0).unsqueeze(1)
    mi = mutual_information_matrix(mu, None, f, method="discrete")
    assert float(mi[0, 0]) == pytest.approx(math.log(20))
    # Too few bins lose information: 2 bins of a uniform 20-valued factor keep log 2.
    mi2 = mutual_information_matrix(mu, None, f, method="discrete", num_bins=2)
    assert float(mi2[0, 0]) == pytest.approx(math.log(2))


def test_constant_factor_is_left_out(code):
    mu, logvar, f = code
    f_const = torch.cat([f, torch.zeros(f.shape[0], 1, dtype=f.dtype)], 1)
    for method in METHODS:
        score, details = mig(mu, logvar, f_const, method=method)
        assert math.isnan(float(details.gaps[3])) and details.factor_entropy[3] == 0
        assert score == pytest.approx(float(details.gaps[:3].mean()))


def test_mig_bad_input(code):
    mu, logvar, f = code
    with pytest.raises(ValueError, match="method"):
        mig(mu, logvar, f, method="kraskov")
    with pytest.raises(ValueError, match="factors"):
        mig(mu, logvar, f[:10])
    with pytest.raises(TypeError, match="integer"):
        mig(mu, logvar, f.float() + 0.5)
    with pytest.raises(ValueError, match="factor_sizes"):
        mig(mu, logvar, f, factor_sizes=(5, 6))
    with pytest.raises(ValueError, match=r"\[0, 7\)"):
        mig(mu, logvar, f, factor_sizes=(5, 6, 7))
    with pytest.raises(ValueError, match="logvar"):
        mig(mu, None, f)
    with pytest.raises(ValueError, match="logvar"):
        mig(mu, logvar[:, :2], f)
    with pytest.raises(ValueError, match="constant"):
        mig(mu, logvar, torch.zeros(mu.shape[0], 2, dtype=torch.long))


def test_hoyer_one_hot_and_dense():
    g = torch.Generator().manual_seed(0)
    N, D = 1000, 10
    one_hot = torch.zeros(N, D)
    one_hot[torch.arange(N), torch.arange(N) % D] = 1 + torch.rand(N, generator=g)   # any magnitude
    assert hoyer_sparsity(one_hot) == pytest.approx(1.0, abs=1e-9)
    assert hoyer_sparsity(one_hot, normalise=False) == pytest.approx(1.0, abs=1e-9)
    dense = 3.0 * (2.0 * torch.randint(0, 2, (N, D), generator=g).float() - 1.0)      # +-3 everywhere
    assert hoyer_sparsity(dense) == pytest.approx(0.0, abs=0.01)
    assert hoyer_sparsity(dense, normalise=False) == pytest.approx(0.0, abs=1e-6)
    # One value by hand: a = (1, 1, 0, 0) -> (2 - 2 / sqrt 2) / (2 - 1) = 2 - sqrt 2.
    assert hoyer_sparsity(torch.tensor([[1.0, 1.0, 0.0, 0.0]]), normalise=False) == pytest.approx(2 - math.sqrt(2))


def test_hoyer_normalisation_ignores_per_dimension_scale():
    g = torch.Generator().manual_seed(1)
    z = torch.randn(500, 6, generator=g)
    scaled = z * torch.tensor([1e-3, 1.0, 1.0, 1.0, 1.0, 50.0])     # a collapsed and a huge dimension
    assert float(hoyer_sparsity(scaled)) == pytest.approx(float(hoyer_sparsity(z)), abs=1e-9)
    assert hoyer_sparsity(scaled, normalise=False) > hoyer_sparsity(z) + 0.3
    with pytest.raises(ValueError, match="D >= 2"):
        hoyer_sparsity(torch.randn(10, 1))


def test_tc_of_means_vs_samples():
    g = torch.Generator().manual_seed(0)
    B, D = 512, 4
    cov = torch.full((D, D), 0.6, dtype=torch.float64) + 0.4 * torch.eye(D, dtype=torch.float64)
    mu = torch.randn(B, D, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(cov).T
    logvar = torch.full_like(mu, math.log(0.25))
    z = mu + 0.5 * torch.randn(B, D, generator=g, dtype=torch.float64)
    out = tc_of_means_vs_samples(z, mu, logvar, dataset_size=10_000)
    assert out._fields == ("tc_of_means", "tc_of_samples", "difference")
    assert all(isinstance(v, torch.Tensor) and v.shape == () for v in out)
    assert float(out.tc_of_means) == pytest.approx(float(tcestim.gaussian_tc_of_means(mu)))
    assert float(out.tc_of_samples) == pytest.approx(
        float(tcestim.total_correlation(z, mu, logvar, dataset_size=10_000)))
    assert float(out.difference) == pytest.approx(float(out.tc_of_samples - out.tc_of_means))
    assert float(out.tc_of_means) == pytest.approx(float(tcestim.gaussian_total_correlation(cov)), abs=0.1)
    assert float(out.tc_of_samples) > 0
    # the 0.1 calling convention (positional dataset_size, dict access) still works, with a warning
    with pytest.warns(DeprecationWarning, match="pass dataset_size= as a keyword"):
        legacy = tc_of_means_vs_samples(z, mu, logvar, 10_000)
    with pytest.warns(DeprecationWarning, match="use .tc_of_samples"):
        assert float(legacy["tc_of_samples"]) == float(out.tc_of_samples)
    with pytest.warns(DeprecationWarning, match="is a named tuple"):
        assert "difference" in legacy and "nothing" not in legacy
    with pytest.warns(DeprecationWarning, match="is a named tuple"):
        assert dict(legacy.items()) == out._asdict() and list(legacy.keys()) == list(out._fields)
    with pytest.raises(TypeError, match="keyword only"):
        tc_of_means_vs_samples(z, mu, logvar, 10_000, dataset_size=10_000)
