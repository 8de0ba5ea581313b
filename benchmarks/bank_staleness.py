"""How stale is a DatasetBank in a real training run, and does refreshing a slice of it help?

    python benchmarks/bank_staleness.py [--sizes 5000 20000] [--lrs 1e-3 3e-4] [--epochs 6]
                                        [--out benchmarks/results/bank-staleness-DATE.md]

Trains the reference MLP VAE (tcestim.experiments) with β-TCVAE (``--tc-weight``) on procedural 32 × 32
sprites, batches of 256 distinct points from shuffled epochs, with two DatasetBanks side by side:

- ``bank``: each step writes the batch's encodings into their slots (as ``train --bank dataset``);
- ``refresh``: the same, plus ``--refresh`` more slots re-encoded each step (no gradient), in a
  rotating order, so every slot is at most N / (B + refresh) steps old instead of N / B.

From the second epoch on (both banks full), every ``--measure-every`` steps, at the batch's own z:
the TC of each bank's estimate, and the exact TC of the aggregate posterior of *fresh* encodings of
all N points (tcestim.decompose_exact, weight 1/N). The staleness bias is bank − exact, paired over
measurements; the table reports its mean ± standard error in nats and in per cent of the exact TC.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time

import torch

import tcestim
from tcestim import losses
from tcestim.experiments import data as datasets
from tcestim.experiments import models


@torch.no_grad()
def encode(model, data, indices, chunk=2048):
    parts = [model.encode(data.images(indices[i:i + chunk])) for i in range(0, len(indices), chunk)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def run(N: int, lr: float, epochs: int, refresh: int, measure_every: int, tc_weight: float, seed: int = 0,
        batch: int = 256) -> dict:
    torch.manual_seed(seed)
    data = datasets.SpritesDataset(image_size=32, subsample=N, seed=seed, cache=True)
    model = models.MLPVAE(32 * 32, 10, hidden=(512, 256), output_shape=(1, 32, 32))
    optimiser = torch.optim.Adam(model.parameters(), lr=lr)
    plain, refreshed = tcestim.DatasetBank(N, 10), tcestim.DatasetBank(N, 10)
    written = torch.full((N,), -1, dtype=torch.int64)  # the step at which each slot of `plain` was written
    generator = torch.Generator().manual_seed(seed)
    noise = torch.Generator().manual_seed(seed + 1)
    cursor, steps_per_epoch = 0, N // batch
    rows = []
    for epoch in range(epochs):
        order = torch.randperm(N, generator=generator)
        for k in range(steps_per_epoch):
            index = order[k * batch:(k + 1) * batch]
            x = data.images(index)
            out = model(x, noise)
            step = epoch * steps_per_epoch + k
            if epoch >= 1 and step % measure_every == 0:
                with torch.no_grad():
                    mu_all, logvar_all = encode(model, data, torch.arange(N))
                    z, mu, logvar = out.z.detach(), out.mu.detach(), out.logvar.detach()
                    exact = float(tcestim.decompose_exact(z, mu, logvar, mu_all, logvar_all).tc.mean())
                    stale = float(tcestim.total_correlation(z, mu, logvar, dataset_size=N,
                                                            bank=plain.for_batch(index)))
                    fresher = float(tcestim.total_correlation(z, mu, logvar, dataset_size=N,
                                                              bank=refreshed.for_batch(index)))
                    split = age_split(plain, written, step, index, z, mu, logvar, N)
                rows.append({"step": step, "epoch": epoch, "exact": exact, "bank": stale, "refresh": fresher,
                             **split})
            objective = losses.beta_tcvae(models.bernoulli_log_likelihood(out.recon, x), out.z, out.mu, out.logvar,
                                          dataset_size=N, tc_weight=tc_weight, bank=plain.for_batch(index))
            optimiser.zero_grad()
            objective.loss.backward()
            optimiser.step()
            plain.update(index, out.mu, out.logvar)
            written[index] = step
            refreshed.update(index, out.mu, out.logvar)
            if refresh:
                slice_ = (cursor + torch.arange(refresh)) % N
                cursor = (cursor + refresh) % N
                slice_ = slice_[~torch.isin(slice_, index)]
                refreshed.update(slice_, *encode(model, data, slice_))
    return {"N": N, "lr": lr, "epochs": epochs, "refresh": refresh, "steps_per_epoch": steps_per_epoch,
            "rows": rows}


def _sub_bank(bank, keep: torch.Tensor):
    """The bank with only the slots in ``keep`` (N,) bool filled (weights renormalised by the bank)."""
    state = bank.state_dict()
    state["filled"] = state["filled"] & keep
    sub = tcestim.DatasetBank(bank.dataset_size, bank.dim)
    sub.load_state_dict(state)
    return sub


def age_split(bank, written, step, index, z, mu, logvar, N) -> dict:
    """TC from the younger and the older half of the slots, and their linear extrapolation to age 0."""
    age = (step - written).double()
    filled = written >= 0
    median = age[filled].median()
    young, old = filled & (age <= median), filled & (age > median)
    tcs = [float(tcestim.total_correlation(z, mu, logvar, dataset_size=N, bank=_sub_bank(bank, m).for_batch(index)))
           for m in (young, old)]
    a_young, a_old = float(age[young].mean()), float(age[old].mean())
    slope = (tcs[1] - tcs[0]) / (a_old - a_young)
    return {"young": tcs[0], "old": tcs[1], "age_young": a_young, "age_old": a_old,
            "extrapolated": tcs[0] - a_young * slope}


def summary(result: dict) -> dict:
    rows = result["rows"]
    out = {"N": result["N"], "lr": result["lr"], "refresh": result["refresh"], "measurements": len(rows),
           "exact_tc": statistics.mean(r["exact"] for r in rows)}
    for key in ("bank", "refresh", "young", "old", "extrapolated"):
        diffs = [r[key] - r["exact"] for r in rows]
        out[key] = (statistics.mean(diffs), statistics.stdev(diffs) / math.sqrt(len(diffs)))
        out[key + "_pct"] = tuple(100.0 * v / out["exact_tc"] for v in out[key])  # of the mean exact TC
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 20000])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-3, 3e-4])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--refresh", type=int, default=256, help="extra slots re-encoded per step")
    parser.add_argument("--tc-weight", type=float, default=1.0,
                        help="β-TCVAE's TC weight (1: the ELBO, whose TC stays large enough to judge in per cent)")
    parser.add_argument("--measurements-per-epoch", type=int, default=8)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    start, results = time.perf_counter(), []
    for N in args.sizes:
        for lr in args.lrs:
            every = max(1, (N // 256) // args.measurements_per_epoch)
            result = run(N, lr, args.epochs, args.refresh, every, args.tc_weight)
            results.append(result)
            s = summary(result)
            print(json.dumps({k: v for k, v in s.items()}), flush=True)
    lines = [
        "# DatasetBank staleness in a real training run",
        "",
        f"Reference MLP VAE (1024-512-256-10), β-TCVAE (tc_weight {args.tc_weight:g}, bank in the loss), "
        "procedural 32 × 32 "
        f"sprites, batch 256 from shuffled epochs, {args.epochs} epochs, measured {args.measurements_per_epoch} "
        f"times per epoch from epoch 2 on; `refresh` re-encodes {args.refresh} more slots per step. "
        f"{time.strftime('%Y-%m-%d')}, torch {torch.__version__}, {time.perf_counter() - start:.0f} s "
        "(`python benchmarks/bank_staleness.py`). Bias = bank estimate − exact TC of fresh encodings at the same "
        "z, mean ± standard error over measurements; per cent of the mean exact TC.",
        "",
        "| N | steps/epoch | lr | exact TC (nats) | bank bias (nats) | bank bias (%) | refresh bias (nats) "
        "| refresh bias (%) |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for result in results:
        s = summary(result)
        lines.append(f"| {s['N']} | {result['steps_per_epoch']} | {s['lr']:g} | {s['exact_tc']:.3f} "
                     f"| {s['bank'][0]:+.4f} ± {s['bank'][1]:.4f} | {s['bank_pct'][0]:+.2f} ± {s['bank_pct'][1]:.2f} "
                     f"| {s['refresh'][0]:+.4f} ± {s['refresh'][1]:.4f} "
                     f"| {s['refresh_pct'][0]:+.2f} ± {s['refresh_pct'][1]:.2f} |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table)
        with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
            json.dump(results, f)
    return results


if __name__ == "__main__":
    main()
