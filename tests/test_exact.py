"""tcestim.exact (decompose_exact): the full-dataset decomposition against the float64 reference, exact
identities (product grids, block products, separated components), gradients, chunking, arguments,
and the streamed computation on every backend."""
import itertools
import math

import numpy as np
import pytest
import torch

import tcestim

import reference
from helpers import encodings, make_inputs, sample


@pytest.mark.parametrize("chunk_size", [None, 1, 7, 1000])
def test_decompose_exact_matches_float64_reference(chunk_size):
    mu_all, logvar_all = encodings(23, 3)
    index = torch.tensor([0, 5, 5, 22, 9])
    mu, logvar = mu_all[index], logvar_all[index]
    z = sample(mu, logvar)
    d = tcestim.decompose_exact(z, mu, logvar, mu_all, logvar_all, chunk_size=chunk_size)
    want_qz, want_qzd = reference.mixture_logdensity(z.numpy(), mu_all.numpy(), logvar_all.numpy(),
                                                     np.full((5, 23), -math.log(23)))
    np.testing.assert_allclose(d.log_qz.numpy(), want_qz, rtol=1e-12)
    np.testing.assert_allclose(d.log_qzd.numpy(), want_qzd, rtol=1e-12)
    np.testing.assert_allclose((d.mi + d.tc + d.dimkl).numpy(), (d.log_qzx - d.log_pz).numpy(), rtol=1e-12)


def test_decompose_exact_gradients():
    mu_all, logvar_all = (t.requires_grad_() for t in encodings(9, 2, seed=2))
    z = sample(mu_all[:4].detach(), logvar_all[:4].detach()).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda z, m, v: tcestim.decompose_exact(z, m[:4], v[:4], m, v, chunk_size=4).tc.sum(),
        (z, mu_all, logvar_all))


def test_decompose_exact_standard_errors():
    mu_all, logvar_all = encodings(50, 2, seed=3)
    z = sample(mu_all, logvar_all)
    d = tcestim.decompose_exact(z, mu_all, logvar_all, mu_all, logvar_all)
    se = d.standard_errors()
    assert se["tc"] == pytest.approx(float(d.tc.std()) / math.sqrt(50), rel=1e-12)


def test_product_grid_means_have_zero_tc():
    """Equal-variance components on a full product grid: q(z) factorises exactly, TC == 0."""
    axes = [torch.tensor([-1.0, 0.5, 2.0], dtype=torch.float64), torch.tensor([0.0, 3.0], dtype=torch.float64),
            torch.tensor([-2.0, -1.5, 1.0, 4.0], dtype=torch.float64)]
    mu_all = torch.tensor(list(itertools.product(*[a.tolist() for a in axes])), dtype=torch.float64)
    logvar_all = torch.full_like(mu_all, math.log(0.6))
    z = sample(mu_all[:40], logvar_all[:40], seed=4) * 1.5
    d = tcestim.decompose_exact(z, mu_all[:40], logvar_all[:40], mu_all, logvar_all, chunk_size=5)
    assert d.tc.abs().max() < 1e-12


def test_block_product_components_are_additive():
    """Components = every pair (a, b) of block-A and block-B encodings: TC(q) = TC(q_A) + TC(q_B)."""
    mu_a, lv_a = encodings(5, 2, seed=5)
    mu_b, lv_b = encodings(4, 3, seed=6)
    pairs = list(itertools.product(range(5), range(4)))
    mu_all = torch.stack([torch.cat([mu_a[i], mu_b[j]]) for i, j in pairs])
    lv_all = torch.stack([torch.cat([lv_a[i], lv_b[j]]) for i, j in pairs])
    z = sample(mu_all, lv_all, seed=7)
    full = tcestim.decompose_exact(z, mu_all, lv_all, mu_all, lv_all)
    part_a = tcestim.decompose_exact(z[:, :2], mu_all[:, :2], lv_all[:, :2], mu_a, lv_a)
    part_b = tcestim.decompose_exact(z[:, 2:], mu_all[:, 2:], lv_all[:, 2:], mu_b, lv_b)
    torch.testing.assert_close(full.tc, part_a.tc + part_b.tc, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("D", [2, 5])
def test_separated_diagonal_means_give_d_minus_one_log_k(D):
    """K narrow components at (c_k, ..., c_k), far apart: TC = (D - 1) log K."""
    K = 16
    centres = 10.0 * torch.arange(K, dtype=torch.float64)
    mu_all = centres[:, None].expand(K, D).clone()
    logvar_all = torch.full((K, D), math.log(0.01), dtype=torch.float64)
    z = sample(mu_all, logvar_all, seed=8)
    d = tcestim.decompose_exact(z, mu_all, logvar_all, mu_all, logvar_all)
    torch.testing.assert_close(d.tc, torch.full((K,), (D - 1) * math.log(K), dtype=torch.float64),
                               rtol=1e-9, atol=1e-9)


def test_decompose_exact_validation():
    mu_all, logvar_all = encodings(10, 3)
    z = sample(mu_all, logvar_all)
    with pytest.raises(ValueError, match="mu_all and logvar_all must both have shape"):
        tcestim.decompose_exact(z, mu_all, logvar_all, mu_all[:, :2], logvar_all[:, :2])
    with pytest.raises(ValueError, match="chunk_size must be >= 1"):
        tcestim.decompose_exact(z, mu_all, logvar_all, mu_all, logvar_all, chunk_size=0)
    with pytest.raises(TypeError, match="chunk_size must be an int"):
        tcestim.decompose_exact(z, mu_all, logvar_all, mu_all, logvar_all, chunk_size=2.0)
    with pytest.raises(TypeError, match="mu_all must have the dtype of z"):
        tcestim.decompose_exact(z, mu_all, logvar_all, mu_all.float(), logvar_all)


@pytest.mark.backends("cuda")
def test_decompose_exact_streams_on_cuda(backend):
    """The streamed full-dataset decomposition (few queries, many components) agrees with CPU."""
    z, mu, logvar, _ = make_inputs(32, 32, 4, torch.float64, seed=11)
    g = torch.Generator().manual_seed(12)
    mu_all = torch.randn(3000, 4, generator=g, dtype=torch.float64)
    lv_all = 0.3 * torch.randn(3000, 4, generator=g, dtype=torch.float64) - 0.5
    want = tcestim.decompose_exact(z, mu, logvar, mu_all, lv_all, chunk_size=1000)
    got = tcestim.decompose_exact(*(t.to(backend.device) for t in (z, mu, logvar, mu_all, lv_all)), chunk_size=1000)
    for name in ("mi", "tc", "dimkl", "log_qz", "log_qzd"):
        torch.testing.assert_close(getattr(got, name).cpu(), getattr(want, name), rtol=1e-10, atol=1e-10)
