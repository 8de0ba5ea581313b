"""What a full DatasetBank costs per training step, next to the plain stratified estimate.

    python benchmarks/dataset_bank_cost.py [--n 737280] [--d 10] [--b 256] [--out FILE.md]

A batch of B encodings (z, mu, logvar) and a DatasetBank holding all N data points (dSprites size by
default). Times tcestim.total_correlation forward and forward + backward (gradients for z, mu,
logvar of the batch), the bank's update, and the stratified estimate without a bank, with the peak
extra memory of one call. Timing and memory helpers are those of measure.py (medians after a warm-up).

--compare-full-backward adds the backward as it was before issue 16 (the fused backward's sweep
over components run over all B + N of them, not only the batch's B), timed in alternating rounds
with the current one in the same process, so that their ratio holds on a loaded machine too.
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from unittest import mock

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from measure import make_inputs, median_seconds, peak_extra_mib  # noqa: E402

import tcestim  # noqa: E402
import tcestim.estimators  # noqa: E402


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=737_280, help="dataset size N (slots)")
    parser.add_argument("--d", type=int, default=10, help="latent size D")
    parser.add_argument("--b", type=int, default=256, help="batch size B")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", default=None, help="markdown file for the table")
    parser.add_argument("--compare-full-backward", action="store_true",
                        help="also time the backward over every component (before issue 16), interleaved")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds of --compare-full-backward")
    args = parser.parse_args(argv)
    N, D, B, device = args.n, args.d, args.b, torch.device(args.device)
    mu_all, logvar_all = (t.to(device) for t in make_inputs(N, D, seed=1)[1:])
    bank = tcestim.DatasetBank(N, D)
    bank.update(torch.arange(N), mu_all, logvar_all)
    index = torch.randperm(N, generator=torch.Generator().manual_seed(2))[:B]
    z, mu, logvar = (t[index].clone() for t in (mu_all + 0.1, mu_all, logvar_all))
    leaves = [t.clone().requires_grad_() for t in (z, mu, logvar)]

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    def with_bank():
        value = tcestim.total_correlation(z, mu, logvar, dataset_size=N, bank=bank.for_batch(index))
        sync()
        return value

    def with_bank_backward():
        for leaf in leaves:
            leaf.grad = None
        tcestim.total_correlation(*leaves, dataset_size=N, bank=bank.for_batch(index)).backward()
        sync()

    def update():
        bank.update(index, mu, logvar)
        sync()

    def plain_backward():
        for leaf in leaves:
            leaf.grad = None
        tcestim.total_correlation(*leaves, dataset_size=N).backward()
        sync()

    full_backward = None
    if args.compare_full_backward:
        full_backward = compare_full_backward(with_bank_backward, args.rounds)
    rows = []
    for name, call in (("DatasetBank, forward", with_bank), ("DatasetBank, forward + backward", with_bank_backward),
                       ("DatasetBank.update", update), ("no bank (stratified), forward + backward", plain_backward)):
        call()
        seconds = median_seconds(call)
        memory = peak_extra_mib(call) if device.type == "cpu" else None
        rows.append((name, seconds, memory))
    header = (f"# DatasetBank cost, N = {N}, D = {D}, B = {B}, float32\n\n"
              f"Device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else cpu_name()}, "
              f"{torch.get_num_threads()} threads, torch {torch.__version__}, "
              f"CPU ISA {tcestim.cpu_isa() if tcestim.extension_available() else 'n/a'}, "
              f"{time.strftime('%Y-%m-%d')}; 1-min load average before the run "
              f"{os.getloadavg()[0]:.2f}. Medians of 3-7 calls after a warm-up (benchmarks/measure.py).\n\n"
              "| call | time | peak extra memory |\n|---|---:|---:|\n")
    table = header + "".join(f"| {name} | {1000 * s:.1f} ms | "
                             f"{'n/a' if m is None else f'{m:.0f} MiB'} |\n" for name, s, m in rows)
    if full_backward is not None:
        table += full_backward
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)
    return table


def compare_full_backward(with_bank_backward, rounds: int) -> str:
    """Forward + backward with the component sweep over the batch only (now) and over every component
    (before issue 16: the estimators passed no grad_components), one call of each per round in
    alternating order."""
    original = tcestim.estimators.stratified_log_densities

    def all_components(*args, grad_components=None, **kwargs):
        return original(*args, **kwargs)

    def full():
        with mock.patch.object(tcestim.estimators, "stratified_log_densities", all_components):
            with_bank_backward()

    times: dict = {"batch only": [], "all components": []}
    full()
    with_bank_backward()
    for r in range(rounds):
        order = (("batch only", with_bank_backward), ("all components", full))
        for name, call in order if r % 2 == 0 else order[::-1]:
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    now, before = (statistics.median(times[k]) for k in ("batch only", "all components"))
    per_round = [b / a for a, b in zip(times["batch only"], times["all components"])]
    return (f"\nForward + backward, {rounds} alternating rounds in this process (median; ratio per round "
            f"{min(per_round):.2f}-{max(per_round):.2f}):\n\n| backward's sweep over components | time |\n"
            f"|---|---:|\n| every component (before issue 16) | {1000 * before:.1f} ms |\n"
            f"| the batch's only (grad_components = B) | {1000 * now:.1f} ms |\n"
            f"| ratio before / now | {before / now:.2f}x |\n")


if __name__ == "__main__":
    main()
