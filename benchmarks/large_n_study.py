"""Estimator bias at the dataset sizes people train on: N up to 2·10⁵, four posterior shapes.

    python benchmarks/large_n_study.py [--sizes 10000 50000 200000] [--repeats 8]
                                       [--out benchmarks/results/large-n-DATE.md]

For each N and posterior family of tcestim.experiments.synthetic.posterior_family (equicorrelated,
a dSprites-like grid of means, heteroscedastic, partly collapsed; D = 10, s = 0.1), ``--repeats``
minibatches of B = 256 distinct points; at each minibatch's z the exact decomposition against all N
encodings (decompose_exact, the truth) and every estimator:

- stratified (the batch alone);
- a FIFO bank of K = 4096 / 16 384 other points (a uniform sample, as a shuffled FIFO holds), and
  K = 4096 with the second-order jackknife;
- a full DatasetBank (every point's current encoding; exact by construction: the check that it is).

Bias is paired (estimate − exact at the same z): mean ± standard error over minibatches, in nats and
in per cent of the mean exact TC. Each estimator's time per call (forward, median) is reported too.
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import time

import torch

import tcestim
from tcestim.experiments.synthetic import POSTERIOR_FAMILIES, posterior_family

B, D = 256, 10


def estimators(N: int):
    yield "stratified", None, False
    for K in (4096, 16384):
        if B + K <= N:
            yield f"bank {K}", K, False
    if B + 4096 <= N:
        yield "bank 4096 + jackknife", 4096, True  # (at 16 384 the jackknife costs ~4x more; left out)
    yield "dataset bank (full)", "dataset", False


def one_minibatch(posterior, generator):
    N = posterior.mu.shape[0]
    order = torch.randperm(N, generator=generator)
    index = order[:B]
    z = posterior.sample(index, generator)
    mu, logvar = posterior.mu[index], posterior.logvar[index]
    exact = float(tcestim.decompose_exact(z, mu, logvar, posterior.mu, posterior.logvar, progress=False).tc.mean())
    dataset_bank = tcestim.DatasetBank(N, D)
    dataset_bank.update(torch.arange(N), posterior.mu, posterior.logvar)
    out = {}
    for name, bank_size, jackknife in estimators(N):
        if bank_size == "dataset":
            bank = dataset_bank.for_batch(index)
        elif bank_size:
            bank = tcestim.MemoryBank(bank_size, D)
            others = order[B:B + bank_size]
            bank.update(posterior.mu[others], posterior.logvar[others])
        else:
            bank = None
        start = time.perf_counter()
        value = float(tcestim.total_correlation(z, mu, logvar, dataset_size=N, bank=bank, jackknife=jackknife))
        out[name] = (value - exact, time.perf_counter() - start)
    return exact, out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    parser.add_argument("--families", nargs="+", default=list(POSTERIOR_FAMILIES), choices=POSTERIOR_FAMILIES)
    parser.add_argument("--repeats", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    lines = [
        "# Estimator bias at large N",
        "",
        f"D = {D}, s = 0.1, B = {B}, {args.repeats} minibatches per row; paired bias (estimate − exact TC at "
        "the same z) ± standard error, in nats and in per cent of the mean exact TC; time = median seconds per "
        f"forward call. `python benchmarks/large_n_study.py` ({time.strftime('%Y-%m-%d')}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads).",
        "",
        "| family | N | exact TC | estimator | bias (nats) | bias (%) | time (s) |",
        "|---|---:|---:|---|---:|---:|---:|",
    ]
    for family in args.families:
        for N in args.sizes:
            posterior = posterior_family(family, N, D, noise_std=0.1, generator=generator)
            exacts, results = [], {}
            for _ in range(args.repeats):
                exact, out = one_minibatch(posterior, generator)
                exacts.append(exact)
                for name, value in out.items():
                    results.setdefault(name, []).append(value)
            truth = statistics.mean(exacts)
            for name, values in results.items():
                bias = [v[0] for v in values]
                mean, se = statistics.mean(bias), statistics.stdev(bias) / math.sqrt(len(bias))
                seconds = statistics.median(v[1] for v in values)
                lines.append(f"| {family} | {N} | {truth:.3f} | {name} | {mean:+.4f} ± {se:.4f} "
                             f"| {100 * mean / truth:+.2f} ± {100 * se / truth:.2f} | {seconds:.3f} |")
            print("\n".join(lines[-len(results):]), flush=True)
    lines.append("")
    lines.append(f"Total {time.perf_counter() - start:.0f} s; 1-min load average at the end "
                 f"{os.getloadavg()[0]:.1f} (other work shared the 2 cores: times are upper bounds).")
    table = "\n".join(lines) + "\n"
    print(table)
    if args.out:
        with open(args.out, "w") as f:
            f.write(table)


if __name__ == "__main__":
    main()
