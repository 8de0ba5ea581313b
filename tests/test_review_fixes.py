"""Regression tests for defects found in review (each would fail on the code before its fix)."""
import math

import numpy as np
import pytest
import torch

import tcestim


def separated_batch(B=8, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = (5 * torch.randn(B, D, generator=g, dtype=torch.float64)).requires_grad_()
    logvar = torch.full((B, D), -4.0, dtype=torch.float64, requires_grad=True)
    z = (mu + torch.randn(B, D, generator=g, dtype=torch.float64) * (0.5 * logvar).exp()).detach().requires_grad_()
    return z, mu, logvar


def test_jackknife_gradients_are_finite_for_well_separated_components():
    z, mu, logvar = separated_batch()
    tc = tcestim.total_correlation(z, mu, logvar, dataset_size=1000, jackknife=True)
    for grad in torch.autograd.grad(tc, (z, mu, logvar)):
        assert torch.isfinite(grad).all()


def test_jackknife_is_exact_when_the_batch_is_the_whole_dataset():
    g = torch.Generator().manual_seed(1)
    mu = torch.randn(64, 4, generator=g, dtype=torch.float64)
    logvar = torch.full((64, 4), -1.0, dtype=torch.float64)
    z = mu + 0.6 * torch.randn(64, 4, generator=g, dtype=torch.float64)
    exact = tcestim.total_correlation(z, mu, logvar)
    assert float(tcestim.total_correlation(z, mu, logvar, jackknife=True)) == pytest.approx(float(exact), rel=1e-12)


def test_second_order_gradients_raise_instead_of_returning_zeros():
    z, mu, logvar = separated_batch(B=6, D=3)
    with pytest.raises(RuntimeError, match="first-order gradients only"):
        torch.autograd.grad(tcestim.total_correlation(z, mu, logvar), z, create_graph=True)


def test_bank_needs_a_dataset_size_that_leaves_room_for_it():
    z, mu, logvar = (t.detach() for t in separated_batch(B=4, D=2))
    bank = tcestim.MemoryBank(10, 2)
    bank.update(torch.randn(8, 2, dtype=torch.float64), torch.zeros(8, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="dataset_size must be given with a non-empty bank"):
        tcestim.total_correlation(z, mu, logvar, bank=bank)
    with pytest.raises(ValueError, match=r"dataset_size must be >= batch size \+ len\(bank\) = 12"):
        tcestim.total_correlation(z, mu, logvar, dataset_size=11, bank=bank)
    empty = tcestim.MemoryBank(10, 2)  # an empty bank changes nothing, even without dataset_size
    torch.testing.assert_close(tcestim.total_correlation(z, mu, logvar, bank=empty),
                               tcestim.total_correlation(z, mu, logvar))


def test_bank_keeps_fifo_order_when_its_dtype_changes():
    bank = tcestim.MemoryBank(3, 1)
    for value in (1.0, 2.0, 3.0, 4.0):
        bank.update(torch.tensor([[value]]), torch.tensor([[0.0]]))
    bank.update(torch.tensor([[5.0]], dtype=torch.float64), torch.tensor([[0.0]], dtype=torch.float64))
    assert sorted(bank.mu[:, 0].tolist()) == [3.0, 4.0, 5.0]
    assert bank.mu.dtype == torch.float64


def test_submodules_are_attributes():
    assert callable(tcestim.distributed.total_correlation)
    assert callable(tcestim.baselines.density_ratio.permute_dims)


def test_numpy_scalars_and_invalid_log_weights():
    z = torch.randn(5, 2, dtype=torch.float64)
    mu, logvar = torch.randn(4, 2, dtype=torch.float64), torch.zeros(4, 2, dtype=torch.float64)
    a = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=np.float32(-1.0))
    b = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=-1.0)
    torch.testing.assert_close(a, b)
    for bad in (math.nan, math.inf, tcestim.StructuredLogWeights(0.0, math.nan, -1.0)):
        with pytest.raises(ValueError, match="log_weights must be finite or -inf"):
            tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=bad)
    d = tcestim.decompose_exact(z, z, torch.zeros_like(z), mu, logvar, chunk_size=np.int64(2))
    assert d.tc.shape == (5,)
