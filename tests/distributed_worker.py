"""Worker run in each spawned process by test_distributed.py (gloo, CPU)."""

import torch
import torch.distributed as dist

import tcestim
import tcestim.distributed

CASES = [  # (estimator, bank size, jackknife, dataset size)
    ("stratified", 0, False, 1000),
    ("stratified", 0, False, None),
    ("mss", 0, False, 1000),
    ("mws", 0, False, 1000),
    ("mss-legacy", 0, False, 1000),
    ("stratified", 7, False, 1000),
    ("stratified", 7, True, 1000),
    ("stratified", 0, True, 500),
]


def global_inputs(total, dim):
    g = torch.Generator().manual_seed(1234)
    mu = torch.randn(total, dim, generator=g, dtype=torch.float64)
    logvar = 0.3 * torch.randn(total, dim, generator=g, dtype=torch.float64) - 0.5
    z = mu + torch.exp(0.5 * logvar) * torch.randn(total, dim, generator=g, dtype=torch.float64)
    bank_mu = torch.randn(7, dim, generator=g, dtype=torch.float64)
    bank_logvar = 0.3 * torch.randn(7, dim, generator=g, dtype=torch.float64)
    return z, mu, logvar, bank_mu, bank_logvar


def close(a, b, what):
    if not torch.allclose(a, b, rtol=1e-9, atol=1e-9):
        raise AssertionError(f"{what}: max difference {float((a - b).abs().max())}")


def run(rank, world, sizes, init_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        dim = 3
        z_all, mu_all, lv_all, bank_mu, bank_lv = global_inputs(sum(sizes), dim)
        local = slice(sum(sizes[:rank]), sum(sizes[: rank + 1]))
        for estimator, bank_size, jackknife, N in CASES:
            bank = None
            if bank_size:
                bank = tcestim.MemoryBank(bank_size, dim)
                bank.update(bank_mu, bank_lv)
            name = f"rank {rank}/{world} {estimator} bank={bank_size} jackknife={jackknife} N={N}"
            z, mu, lv = (t[local].clone().requires_grad_() for t in (z_all, mu_all, lv_all))
            tc = tcestim.distributed.total_correlation(z, mu, lv, dataset_size=N, estimator=estimator,
                                                       bank=bank, jackknife=jackknife)
            tc.backward()
            zr, mur, lvr = (t.clone().requires_grad_() for t in (z_all, mu_all, lv_all))
            ref = tcestim.total_correlation(zr, mur, lvr, dataset_size=N, estimator=estimator, bank=bank,
                                            jackknife=jackknife)
            ref.backward()
            close(tc.detach(), ref.detach(), name + " value")
            for got, want, what in ((z.grad, zr.grad[local], "grad z"), (mu.grad, mur.grad[local], "grad mu"),
                                    (lv.grad, lvr.grad[local], "grad logvar")):
                close(got, want, f"{name} {what}")
            rows = tcestim.distributed.decompose(z.detach(), mu.detach(), lv.detach(), dataset_size=N,
                                                 estimator=estimator, bank=bank, jackknife=jackknife)
            full = tcestim.decompose(z_all, mu_all, lv_all, dataset_size=N, estimator=estimator, bank=bank,
                                     jackknife=jackknife)
            for field in ("mi", "tc", "dimkl", "log_qzd"):
                close(getattr(rows, field), getattr(full, field)[local], f"{name} decompose.{field}")
        # A DatasetBank: each rank passes its own indices; the global batch's slots are all left out.
        N = 40
        g = torch.Generator().manual_seed(99)
        index_all = torch.randperm(N, generator=g)[: sum(sizes)]
        dbank = tcestim.DatasetBank(N, dim)
        written = torch.arange(0, N, 3)
        dbank.update(written, torch.randn(len(written), dim, generator=g, dtype=torch.float64),
                     torch.zeros(len(written), dim, dtype=torch.float64))
        z, mu, lv = (t[local].clone().requires_grad_() for t in (z_all, mu_all, lv_all))
        tc = tcestim.distributed.total_correlation(z, mu, lv, dataset_size=N, bank=dbank.for_batch(index_all[local]))
        tc.backward()
        zr, mur, lvr = (t.clone().requires_grad_() for t in (z_all, mu_all, lv_all))
        ref = tcestim.total_correlation(zr, mur, lvr, dataset_size=N, bank=dbank.for_batch(index_all))
        ref.backward()
        name = f"rank {rank}/{world} DatasetBank"
        close(tc.detach(), ref.detach(), name + " value")
        for got, want, what in ((z.grad, zr.grad[local], "grad z"), (mu.grad, mur.grad[local], "grad mu")):
            close(got, want, f"{name} {what}")
        tcestim.distributed.update_bank(dbank, mu_all[local], lv_all[local], indices=index_all[local])
        close(dbank.mu[index_all], mu_all, f"{name} update_bank")
        # update_bank gives every rank the same bank: the whole global batch
        bank = tcestim.MemoryBank(100, dim)
        tcestim.distributed.update_bank(bank, mu_all[local], lv_all[local])
        close(bank.mu, mu_all, f"rank {rank} update_bank")
        dist.barrier()
    finally:
        dist.destroy_process_group()


def _record(rank, world, init_file, result_dir, call):
    """Run ``call()`` on this rank of a gloo group; write "ok ..." (what it returned) or
    "ValueError ..." to result_dir/<rank>.txt, for the test to compare across ranks."""
    import os
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        outcome = f"ok{call()}"
    except ValueError as error:
        outcome = f"ValueError {error}"
    with open(os.path.join(result_dir, f"{rank}.txt"), "w") as f:
        f.write(outcome)
    dist.destroy_process_group()


def agreement(rank, world, case, init_file, result_dir):
    """Each rank calls tcestim.distributed with its own (possibly wrong) inputs; every rank must
    raise the same error (or all succeed), never hang."""
    g = torch.Generator().manual_seed(rank)
    B, D, dtype, N = 4, 3, torch.float64, 100
    if case == "dim" and rank == 1:
        D = 4
    if case == "dtype" and rank == 1:
        dtype = torch.float32
    if case == "dataset_size" and rank == 0:
        N = 200
    if case == "empty" and rank == 0:
        B = 0
    z = torch.randn(B, D, generator=g).to(dtype).requires_grad_()
    mu, logvar = z + 0.1, torch.zeros(B, D, dtype=dtype)
    if case == "grad" and rank == 1:
        mu = mu.detach()
    if case == "invalid" and rank == 1:
        logvar = torch.zeros(B, D + 1, dtype=dtype)

    def call():
        tc = tcestim.distributed.total_correlation(z, mu, logvar, dataset_size=N)
        tc.backward()
        return f" {float(tc.detach()):.12f} grad {tuple(z.grad.shape)}"

    _record(rank, world, init_file, result_dir, call)


def bank_agreement(rank, world, case, init_file, result_dir):
    """Bank mistakes on one rank (or across ranks) must raise the same error on every rank, never hang."""
    z = torch.randn(3, 2, dtype=torch.float64, requires_grad=True)
    mu, logvar = z + 0.1, torch.zeros(3, 2, dtype=torch.float64)
    bank = tcestim.DatasetBank(20, 2)
    own = torch.arange(3) + 3 * rank

    def call():
        if case == "bank_kind":
            view = None if rank == 0 else bank.for_batch(own)
            tcestim.distributed.total_correlation(z, mu, logvar, dataset_size=20, bank=view)
        elif case == "duplicates":
            overlapping = torch.arange(3) + 2 * rank  # rank 0: 0 1 2, rank 1: 2 3 4
            tcestim.distributed.total_correlation(z, mu, logvar, dataset_size=20, bank=bank.for_batch(overlapping))
        else:
            indices = own if rank == 0 else torch.tensor([5, 5, 6])
            tcestim.distributed.update_bank(bank, mu, logvar, indices=indices)
        return ""

    _record(rank, world, init_file, result_dir, call)
