"""What the jackknife costs next to the fused bank estimate, on this machine.

    python benchmarks/jackknife_cost.py [--out benchmarks/results/jackknife-cpu-DATE.md]

For a batch of B = 256 encodings with a memory bank of K = 4096 (D in 8, 32; float32), times
total_correlation(..., bank=bank) with jackknife off, first order and second order (the default),
forward and forward + backward. Medians of 3 calls after one warm-up, one process, 2026 CPU torch.
"""
from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import torch

import tcestim
from tcestim.jackknife import jackknife_log_densities


def timed(fn, repeats=3):
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=None, help="markdown file for the table (default: print only)")
    args = parser.parse_args()
    B, K, N = 256, 4096, 10_000
    g = torch.Generator().manual_seed(0)
    lines = ["# Jackknife cost (CPU)", "",
             f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch "
             f"{torch.__version__}, CPU ISA {tcestim.cpu_isa()}, {time.strftime('%Y-%m-%d')}. B = {B}, K = {K}, "
             f"N = {N}, float32; median of 3 calls after a warm-up, milliseconds.", "",
             "| D | pass | bank (fused) | + jackknife, first order | + jackknife, second order (default) |",
             "|---:|---|---:|---:|---:|"]
    for D in (8, 32):
        mu = torch.randn(B, D, generator=g)
        logvar = torch.full((B, D), 2 * math.log(0.3))
        z = mu + 0.3 * torch.randn(B, D, generator=g)
        bank = tcestim.MemoryBank(K, D)
        bank.update(torch.randn(K, D, generator=g), torch.full((K, D), 2 * math.log(0.3)))
        components_mu, components_logvar = torch.cat([mu, bank.mu]), torch.cat([logvar, bank.logvar])

        def estimate(order, z_, mu_, logvar_, bank=bank):
            if order == 0:
                return tcestim.total_correlation(z_, mu_, logvar_, dataset_size=N, bank=bank)
            log_qz, log_qzd = jackknife_log_densities(z_, torch.cat([mu_, bank.mu]),
                                                      torch.cat([logvar_, bank.logvar]), N, order=order)
            return (log_qz - log_qzd.sum(1)).mean()

        for backward in (False, True):
            cells = []
            for order in (0, 1, 2):
                z_, mu_, logvar_ = (t.clone().requires_grad_(backward) for t in (z, mu, logvar))

                def call(order=order, backward=backward, inputs=(z_, mu_, logvar_)):
                    value = estimate(order, *inputs)
                    if backward:
                        value.backward()

                cells.append(f"{1000 * timed(call):.0f}")
            lines.append(f"| {D} | {'forward + backward' if backward else 'forward'} | " + " | ".join(cells) + " |")
        del components_mu, components_logvar
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
