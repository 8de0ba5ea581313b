"""tcestim.bank (MemoryBank) and the stratified estimator with a bank: FIFO order, detached copies,
weights against the reference, exactness when the bank holds the rest of the dataset, gradients,
arguments."""
import math

import numpy as np
import pytest
import torch

import tcestim

import reference
from helpers import encodings, sample, separated_batch


def test_memory_bank_is_a_fifo():
    bank = tcestim.MemoryBank(5, 2)
    assert len(bank) == 0 and bank.mu.shape == (0, 2)
    rows = torch.arange(16, dtype=torch.float64).reshape(8, 2)
    bank.update(rows[:3], rows[:3])
    assert len(bank) == 3 and torch.equal(bank.mu, rows[:3])
    bank.update(rows[3:7], rows[3:7])  # 7 pushed, 5 kept: rows 2..6
    assert len(bank) == 5
    assert sorted(bank.mu[:, 0].tolist()) == rows[2:7, 0].tolist()
    bank.update(rows, -rows)  # a batch larger than the bank keeps its last 5
    assert sorted(bank.mu[:, 0].tolist()) == rows[3:, 0].tolist()
    assert sorted(bank.logvar[:, 0].tolist()) == sorted((-rows[3:, 0]).tolist())
    bank.reset()
    assert len(bank) == 0


def test_memory_bank_stores_detached_copies():
    mu = torch.randn(4, 3, requires_grad=True)
    bank = tcestim.MemoryBank(10, 3)
    bank.update(mu * 2, mu * 0)
    assert not bank.mu.requires_grad
    with torch.no_grad():
        mu.add_(1.0)
    assert not torch.allclose(bank.mu, (mu * 2).detach())


def test_memory_bank_validation():
    with pytest.raises(ValueError, match="size must be >= 1"):
        tcestim.MemoryBank(0, 3)
    with pytest.raises(ValueError, match="dim must be >= 1"):
        tcestim.MemoryBank(4, 0)
    with pytest.raises(TypeError, match="size must be an int"):
        tcestim.MemoryBank(4.0, 3)
    bank = tcestim.MemoryBank(4, 3)
    with pytest.raises(ValueError, match=r"shape \(B, 3\)"):
        bank.update(torch.zeros(2, 2), torch.zeros(2, 2))
    mu, logvar = encodings(6, 2)
    with pytest.raises(ValueError, match="bank holds encodings of width 3"):
        tcestim.total_correlation(sample(mu, logvar), mu, logvar, dataset_size=100, bank=bank)
    with pytest.raises(ValueError, match="need estimator='stratified'"):
        tcestim.total_correlation(sample(mu, logvar), mu, logvar, dataset_size=100,
                                  bank=tcestim.MemoryBank(4, 2), estimator="mss")


def test_bank_weights_match_reference():
    N, B, K = 500, 6, 9
    mu_all, logvar_all = encodings(B + K, 3, seed=9)
    mu, logvar = mu_all[:B], logvar_all[:B]
    z = sample(mu, logvar)
    bank = tcestim.MemoryBank(K, 3)
    bank.update(mu_all[B:], logvar_all[B:])
    d = tcestim.decompose(z, mu, logvar, dataset_size=N, bank=bank)
    w = np.full((B, B + K), (N - 1) / (N * (B - 1 + K)))
    np.fill_diagonal(w[:, :B], 1.0 / N)
    want_qz, want_qzd = reference.mixture_logdensity(z.numpy(), mu_all.numpy(), logvar_all.numpy(), np.log(w))
    np.testing.assert_allclose(d.log_qz.numpy(), want_qz, rtol=1e-12)
    np.testing.assert_allclose(d.log_qzd.numpy(), want_qzd, rtol=1e-12)


def test_bank_holding_the_rest_of_the_dataset_is_exact():
    N, B = 40, 8
    mu_all, logvar_all = encodings(N, 4, seed=10)
    z = sample(mu_all[:B], logvar_all[:B])
    bank = tcestim.MemoryBank(N - B, 4)
    bank.update(mu_all[B:], logvar_all[B:])
    with_bank = tcestim.decompose(z, mu_all[:B], logvar_all[:B], dataset_size=N, bank=bank)
    exact = tcestim.decompose_exact(z, mu_all[:B], logvar_all[:B], mu_all, logvar_all)
    for a, b in zip(with_bank, exact):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_gradients_do_not_flow_into_the_bank():
    mu_all, logvar_all = encodings(20, 3, seed=11)
    bank_mu = mu_all[8:].clone().requires_grad_()
    bank = tcestim.MemoryBank(12, 3)
    bank.update(bank_mu, logvar_all[8:])
    mu, logvar = mu_all[:8].clone().requires_grad_(), logvar_all[:8].clone().requires_grad_()
    z = sample(mu.detach(), logvar.detach())
    for jackknife in (False, True):
        tc = tcestim.total_correlation(z, mu, logvar, dataset_size=100, bank=bank, jackknife=jackknife)
        tc.backward()
        assert bank_mu.grad is None
        assert mu.grad is not None and torch.isfinite(mu.grad).all()
        mu.grad = None


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


def test_bank_state_dict_round_trips_through_a_weights_only_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    bank = tcestim.MemoryBank(8, 2)
    bank.update(torch.randn(10, 2, generator=g), torch.randn(10, 2, generator=g))  # wraps around
    bank.update(torch.randn(3, 2, generator=g), torch.randn(3, 2, generator=g))
    torch.save(bank.state_dict(), tmp_path / "bank.pt")
    restored = tcestim.MemoryBank(8, 2)
    restored.load_state_dict(torch.load(tmp_path / "bank.pt", weights_only=True))
    assert len(restored) == len(bank) == 8
    assert torch.equal(restored.mu, bank.mu) and torch.equal(restored.logvar, bank.logvar)
    z = torch.randn(5, 2, generator=g)
    assert torch.equal(tcestim.total_correlation(z, z, torch.zeros(5, 2), dataset_size=100, bank=restored),
                       tcestim.total_correlation(z, z, torch.zeros(5, 2), dataset_size=100, bank=bank))
    newest = torch.full((2, 2), 7.0)
    bank.update(newest, newest)
    restored.update(newest, newest)
    assert torch.equal(restored.mu, bank.mu)                       # same eviction order
    partial = tcestim.MemoryBank(8, 2)
    partial.update(torch.ones(5, 2), torch.zeros(5, 2))
    again = tcestim.MemoryBank(8, 2)
    again.load_state_dict(partial.state_dict())
    assert len(again) == 5 and torch.equal(again.mu, partial.mu)


def test_bank_load_state_dict_refuses_a_mismatch():
    state = tcestim.MemoryBank(8, 2).state_dict()
    with pytest.raises(ValueError, match="size=8, dim=2; this bank has size=8, dim=3"):
        tcestim.MemoryBank(8, 3).load_state_dict(state)
    with pytest.raises(ValueError, match="keys size, dim, mu, logvar, next"):
        tcestim.MemoryBank(8, 2).load_state_dict({"size": 8})
    state = dict(state, mu=torch.zeros(3, 2), logvar=torch.zeros(3, 2), next=1)
    with pytest.raises(ValueError, match="ring position next=1 does not fit 3"):
        tcestim.MemoryBank(8, 2).load_state_dict(state)


def test_bank_updates_in_and_out_of_inference_mode():
    bank = tcestim.MemoryBank(8, 2)
    with torch.inference_mode():
        bank.update(torch.ones(3, 2), torch.zeros(3, 2))
    bank.update(torch.full((2, 2), 2.0), torch.zeros(2, 2))
    with torch.inference_mode():
        bank.update(torch.full((1, 2), 3.0), torch.zeros(1, 2))
    bank.update(torch.full((1, 2), 4.0), torch.zeros(1, 2))
    assert bank.mu[:, 0].tolist() == [1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 4.0]
    z = torch.randn(4, 2, requires_grad=True)
    tcestim.total_correlation(z, z * 1.0, torch.zeros(4, 2), dataset_size=100, bank=bank).backward()
    assert z.grad is not None and torch.isfinite(z.grad).all()


# ----------------------------------------------------------------------------------------------
# DatasetBank: one slot per data point


def dataset(N=40, D=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(N, D, generator=g, dtype=torch.float64)
    logvar = 0.4 * torch.randn(N, D, generator=g, dtype=torch.float64) - 1.0
    return mu, logvar, g


def test_a_full_fresh_dataset_bank_is_the_exact_decomposition():
    mu_all, logvar_all, g = dataset()
    N = mu_all.shape[0]
    bank = tcestim.DatasetBank(N, 3)
    bank.update(torch.arange(N), mu_all, logvar_all)
    index = torch.randperm(N, generator=g)[:8]
    mu, logvar = mu_all[index], logvar_all[index]
    z = mu + (0.5 * logvar).exp() * torch.randn(8, 3, generator=g, dtype=torch.float64)
    got = tcestim.decompose(z, mu, logvar, dataset_size=N, bank=bank.for_batch(index))
    exact = tcestim.decompose_exact(z, mu, logvar, mu_all, logvar_all)
    for name in ("mi", "tc", "dimkl", "log_qz", "log_qzd"):
        torch.testing.assert_close(getattr(got, name), getattr(exact, name), rtol=1e-12, atol=1e-12)

    def tc(z, mu, logvar):
        return tcestim.total_correlation(z, mu, logvar, dataset_size=N, bank=bank.for_batch(index))

    assert torch.autograd.gradcheck(tc, [t.clone().requires_grad_(True) for t in (z, mu, logvar)])


def test_dataset_bank_weights_against_the_reference():
    """Partly filled, with stale copies of the batch in its own slots: own 1/N, each filled slot
    outside the batch and each batch mate (N - 1) / (N (B - 1 + F))."""
    mu_all, logvar_all, g = dataset(N=30)
    N, B = 30, 5
    bank = tcestim.DatasetBank(N, 3)
    filled = torch.tensor([0, 2, 3, 5, 8, 13, 21, 22, 29])
    bank.update(filled, mu_all[filled], logvar_all[filled])
    index = torch.tensor([3, 4, 13, 17, 25])            # 3 and 13 are filled: stale own slots
    mu = mu_all[index] + 0.05                          # the batch's fresh encodings differ from the bank's
    logvar = logvar_all[index]
    z = mu + 0.3 * torch.randn(B, 3, generator=g, dtype=torch.float64)
    log_qz, log_qzd = tcestim.decompose(z, mu, logvar, dataset_size=N, bank=bank.for_batch(index))[4:6]
    others = [i for i in filled.tolist() if i not in index.tolist()]      # F = 7
    comp_mu = torch.cat([mu, mu_all[others]]).numpy()
    comp_logvar = torch.cat([logvar, logvar_all[others]]).numpy()
    w = np.full((B, B + len(others)), (N - 1) / (N * (B - 1 + len(others))))
    np.fill_diagonal(w[:, :B], 1.0 / N)
    want_qz, want_qzd = reference.mixture_logdensity(z.numpy(), comp_mu, comp_logvar, np.log(w))
    np.testing.assert_allclose(log_qz.numpy(), want_qz, rtol=1e-12)
    np.testing.assert_allclose(log_qzd.numpy(), want_qzd, rtol=1e-12)
    empty = tcestim.DatasetBank(N, 3)                  # nothing written yet: the plain stratified estimate
    torch.testing.assert_close(
        tcestim.total_correlation(z, mu, logvar, dataset_size=N, bank=empty.for_batch(index)),
        tcestim.total_correlation(z, mu, logvar, dataset_size=N), rtol=1e-12, atol=1e-12)


def test_dataset_bank_updates_in_place_and_follows_device_and_dtype(tmp_path):
    bank = tcestim.DatasetBank(6, 2)
    assert len(bank) == 0 and torch.isinf(bank.logvar).all()
    with torch.inference_mode():
        bank.update(torch.tensor([1, 4]), torch.ones(2, 2), torch.zeros(2, 2))
    x = torch.full((1, 2), 2.0, requires_grad=True)
    bank.update([4], x * 1.0, torch.zeros(1, 2))
    assert len(bank) == 2 and bank.filled.tolist() == [False, True, False, False, True, False]
    assert bank.mu[4].tolist() == [2.0, 2.0] and not bank.mu.requires_grad
    bank.update(torch.tensor([0]), torch.zeros(1, 2, dtype=torch.float64), torch.zeros(1, 2, dtype=torch.float64))
    assert bank.mu.dtype == torch.float64 and bank.mu[1].tolist() == [1.0, 1.0]      # old slots kept
    torch.save(bank.state_dict(), tmp_path / "bank.pt")
    again = tcestim.DatasetBank(6, 2)
    again.load_state_dict(torch.load(tmp_path / "bank.pt", weights_only=True))
    assert len(again) == 3 and torch.equal(again.mu, bank.mu) and torch.equal(again.logvar, bank.logvar)
    bank.reset()
    assert len(bank) == 0 and torch.isinf(bank.logvar).all()


def test_dataset_bank_arguments():
    bank = tcestim.DatasetBank(10, 2)
    z = torch.randn(3, 2)
    with pytest.raises(TypeError, match=r"needs the batch's dataset indices: pass bank=bank.for_batch\(indices\)"):
        tcestim.total_correlation(z, z, z, dataset_size=10, bank=bank)
    with pytest.raises(ValueError, match="dataset_size must be the DatasetBank's dataset_size 10, got 20"):
        tcestim.total_correlation(z, z, z, dataset_size=20, bank=bank.for_batch([0, 1, 2]))
    with pytest.raises(ValueError, match="the bank's batch has 2 indices, but z has B = 3 rows"):
        tcestim.total_correlation(z, z, z, dataset_size=10, bank=bank.for_batch([0, 1]))
    with pytest.raises(ValueError, match="DatasetBank holds every data point, so it needs no jackknife"):
        tcestim.total_correlation(z, z, z, dataset_size=10, bank=bank.for_batch([0, 1, 2]), jackknife=True)
    with pytest.raises(ValueError, match="indices must be distinct"):
        bank.for_batch([1, 1, 2])
    with pytest.raises(ValueError, match=r"indices must be in \[0, 10\), got values in \[0, 10\]"):
        bank.update(torch.tensor([0, 10, 2]), z, z)
    with pytest.raises(TypeError, match="indices must be a 1-D integer tensor"):
        bank.for_batch(torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"indices must have one entry per batch member \(3\), got 2"):
        bank.update(torch.tensor([0, 1]), z, z)
    with pytest.raises(ValueError, match="dataset_size must be >= 2"):
        tcestim.DatasetBank(1, 2)
    with pytest.raises(ValueError, match="dataset_size=10, dim=2; this bank has dataset_size=10, dim=3"):
        tcestim.DatasetBank(10, 3).load_state_dict(bank.state_dict())


def test_objectives_take_a_dataset_bank():
    from tcestim import losses
    mu_all, logvar_all, g = dataset(N=20)
    bank = tcestim.DatasetBank(20, 3)
    bank.update(torch.arange(20), mu_all, logvar_all)
    index = torch.arange(5)
    z = mu_all[:5] + 0.1
    objective = losses.beta_tcvae(-torch.ones(5, dtype=torch.float64), z, mu_all[:5], logvar_all[:5],
                                  dataset_size=20, bank=bank.for_batch(index))
    exact = tcestim.decompose_exact(z, mu_all[:5], logvar_all[:5], mu_all, logvar_all)
    torch.testing.assert_close(objective.terms["tc"], exact.tc.mean(), rtol=1e-12, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# Gradients with a bank: only the batch's components are differentiated (issue 16)


def naive_bank_log_densities(z, mu, logvar, bank_mu, bank_logvar, N):
    """float64 PyTorch over the materialised cube: own component 1/N, every other (N - 1) / (N (K - 1))."""
    comp_mu, comp_logvar = torch.cat([mu, bank_mu]), torch.cat([logvar, bank_logvar])
    B, K = z.shape[0], comp_mu.shape[0]
    cube = -0.5 * (math.log(2 * math.pi) + comp_logvar + (z[:, None, :] - comp_mu) ** 2 * torch.exp(-comp_logvar))
    log_w = torch.full((B, K), math.log((N - 1) / (N * (K - 1))), dtype=torch.float64)
    log_w[torch.arange(B), torch.arange(B)] = -math.log(N)
    return (torch.logsumexp(log_w + cube.sum(-1), 1), torch.logsumexp(log_w[:, :, None] + cube, 1))


def test_dataset_bank_values_and_gradients_match_a_naive_reference(backend):
    """A full DatasetBank of 600 slots behind a batch of 6 (594 components without gradient, the
    batch's own slots left out): log q(z), log q(z_d) and the gradients wrt the batch's z, mu,
    logvar equal a float64 autograd reference over the whole cube (the backward that skips the
    bank's components loses nothing), and the bank's tensors get no gradient."""
    N, B, D = 600, 6, 3
    mu_all, logvar_all, g = dataset(N=N, D=D, seed=5)
    index = torch.randperm(N, generator=g)[:B]
    mu, logvar = mu_all[index] + 0.05, logvar_all[index] - 0.1      # fresh encodings differ from the bank's
    z = mu + (0.5 * logvar).exp() * torch.randn(B, D, generator=g, dtype=torch.float64)
    a, b = torch.randn(B, generator=g, dtype=torch.float64), torch.randn(B, D, generator=g, dtype=torch.float64)
    device = backend.device
    bank = tcestim.DatasetBank(N, D)
    bank.update(torch.arange(N), mu_all.to(device), logvar_all.to(device))
    leaves = [t.clone().to(device).requires_grad_() for t in (z, mu, logvar)]
    d = tcestim.decompose(*leaves, dataset_size=N, bank=bank.for_batch(index))
    grads = torch.autograd.grad((a.to(device) * d.log_qz).sum() + (b.to(device) * d.log_qzd).sum(), leaves)
    assert not bank.mu.requires_grad and not bank.logvar.requires_grad

    others = torch.tensor([i for i in range(N) if i not in set(index.tolist())])
    ref_leaves = [t.clone().requires_grad_() for t in (z, mu, logvar)]
    want_qz, want_qzd = naive_bank_log_densities(*ref_leaves, mu_all[others], logvar_all[others], N)
    want_grads = torch.autograd.grad((a * want_qz).sum() + (b * want_qzd).sum(), ref_leaves)
    tol = tcestim.testing.tolerances(torch.float64)
    torch.testing.assert_close(d.log_qz.cpu(), want_qz.detach(), **tol)
    torch.testing.assert_close(d.log_qzd.cpu(), want_qzd.detach(), **tol)
    for name, got, want in zip(("z", "mu", "logvar"), grads, want_grads):
        torch.testing.assert_close(got.cpu(), want, **tol, msg=lambda m, name=name: f"grad {name}: {m}")
