"""What the jackknife costs next to the fused bank estimate, on this machine.

    python benchmarks/jackknife_cost.py [--out benchmarks/results/jackknife-cpu-DATE.md]

For a batch of B = 256 encodings with a memory bank of K = 4096 (D in 8, 32; float32), times
total_correlation(..., bank=bank) with jackknife off and on (second order, the default), forward and
forward + backward, the jackknife both fused (the sums inside the CPU kernel, issue 18) and through
the PyTorch implementation that materialises the cube (what ran before; still the path on CUDA and
under torch.func transforms), and the first order through jackknife_log_densities(order=1). Medians
of 5 calls after one warm-up, one process, the configurations interleaved call by call so that
their ratios hold on a loaded machine.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time
from unittest import mock

import torch

import tcestim
import tcestim._ops
from tcestim.jackknife import jackknife_log_densities

COLUMNS = ("bank (fused)", "+ jackknife, fused", "+ jackknife, PyTorch (before)", "+ jackknife order 1, fused")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="markdown file for the table (default: print only)")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    B, K, N = 256, 4096, 10_000
    g = torch.Generator().manual_seed(0)
    lines = ["# Jackknife cost (CPU)", "",
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
             f"{torch.__version__}, CPU ISA {tcestim.cpu_isa()}, {time.strftime('%Y-%m-%d %H:%M')}; 1-min load "
             f"average before the run {os.getloadavg()[0]:.2f}. B = {B}, K = {K}, N = {N}, float32; median of "
             f"{args.repeats} calls after a warm-up, interleaved, milliseconds; x: ratio to the bank estimate.", "",
             "| D | pass | " + " | ".join(COLUMNS) + " |", "|---:|---|" + "---:|" * len(COLUMNS)]
    for D in (8, 32):
        mu = torch.randn(B, D, generator=g)
        logvar = torch.full((B, D), 2 * math.log(0.3))
        z = mu + 0.3 * torch.randn(B, D, generator=g)
        bank = tcestim.MemoryBank(K, D)
        bank.update(torch.randn(K, D, generator=g), torch.full((K, D), 2 * math.log(0.3)))

        def estimate(column, z_, mu_, logvar_, bank=bank):
            if column == 3:
                log_qz, log_qzd = jackknife_log_densities(z_, torch.cat([mu_, bank.mu]),
                                                          torch.cat([logvar_, bank.logvar]), N, order=1)
                return (log_qz - log_qzd.sum(1)).mean()
            if column == 2:
                with mock.patch.object(tcestim._ops, "has_fused_jackknife", lambda *t: False):
                    return tcestim.total_correlation(z_, mu_, logvar_, dataset_size=N, bank=bank, jackknife=True)
            return tcestim.total_correlation(z_, mu_, logvar_, dataset_size=N, bank=bank, jackknife=column == 1)

        for backward in (False, True):
            calls = []
            for column in range(len(COLUMNS)):
                z_, mu_, logvar_ = (t.clone().requires_grad_(backward) for t in (z, mu, logvar))

                def call(column=column, backward=backward, inputs=(z_, mu_, logvar_)):
                    value = estimate(column, *inputs)
                    if backward:
                        value.backward()

                call()
                calls.append(call)
            times: list = [[] for _ in calls]
            for _ in range(args.repeats):
                for k, call in enumerate(calls):
                    start = time.perf_counter()
                    call()
                    times[k].append(time.perf_counter() - start)
            medians = [statistics.median(t) for t in times]
            cells = [f"{1000 * medians[0]:.0f}"] + [f"{1000 * m:.0f} ({m / medians[0]:.1f}x)" for m in medians[1:]]
            lines.append(f"| {D} | {'forward + backward' if backward else 'forward'} | " + " | ".join(cells) + " |")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
