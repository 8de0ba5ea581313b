"""The estimator-bias study: every TC estimator against two ground truths on synthetic posteriors.

Protocol: mu_n ~ N(0, Sigma), Sigma equicorrelated (rho), z | n ~ N(mu_n, s^2 I), N encodings.
Truths, both reported and labelled:
  * exact   - the finite-N aggregate posterior's TC (decompose_exact over all N encodings, Monte
              Carlo over z until its standard error is below 1% of the value or an absolute floor);
  * gaussian - the closed-form TC of N(0, Sigma + s^2 I), the N -> infinity limit.
Each estimator runs on ``repeats`` minibatches of size M per configuration. Its bias is measured
paired: every minibatch estimate minus the exact finite-N decomposition evaluated at the same z
(decompose_exact against all N encodings). That difference has the same expectation as
"estimate - exact TC" but none of the Monte Carlo noise of the minibatch's z, so the reported
standard error is the estimator's own. Besides TC, the joint part E[log q(z)] and the marginal
part E[sum_d log q(z_d)] are recorded where an estimator has them, so the sign of each bias can be
traced to its source.

Run it as ``python -m tcestim bias [--quick] [--out DIR]``.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import time
from collections import defaultdict
from typing import Iterable

import numpy as np
import torch

from tcestim.bank import MemoryBank, bank_components
from tcestim.baselines.knn import knn_total_correlation
from tcestim.bracket import tc_bracket
from tcestim.estimators import minibatch_log_densities
from tcestim.exact import decompose_exact
from tcestim.experiments import runs
from tcestim.experiments.plotting import figure, save
from tcestim.experiments.synthetic import gaussian_limit_tc, make_posterior
from tcestim.gaussian import gaussian_tc_of_means
from tcestim.jackknife import jackknife_log_densities_by_order

MIXTURE_ESTIMATORS = ("mws", "mss", "stratified", "mss-legacy", "bank", "bank+jackknife", "bank+jackknife1")
OTHER_ESTIMATORS = ("bracket-lower", "bracket-upper", "tc-of-means", "knn")
ALL_ESTIMATORS = MIXTURE_ESTIMATORS + OTHER_ESTIMATORS


@dataclasses.dataclass
class StudyConfig:
    rhos: tuple = (0.0, 0.5)
    noise_stds: tuple = (0.1, 0.5, 1.0)
    dims: tuple = (1, 2, 4, 8, 16, 32)
    dataset_size: int = 10_000
    batch_sizes: tuple = (64, 256, 1024)
    repeats: int = 10
    bank_size: int = 4096
    exact_relative_se: float = 0.01
    exact_absolute_se: float = 0.002
    exact_max_samples: int = 131_072
    knn_k: int = 3
    seed: int = 0

    @classmethod
    def quick(cls) -> "StudyConfig":
        return cls(rhos=(0.5,), noise_stds=(0.1, 0.5), dims=(1, 2, 4, 8), dataset_size=2000,
                   batch_sizes=(64, 256), repeats=5, bank_size=1024, exact_max_samples=16_384)


@dataclasses.dataclass
class Truth:
    exact: float
    exact_se: float
    exact_joint: float      # E[log q(z)]
    exact_marginal: float   # E[sum_d log q(z_d)]
    samples: int
    gaussian: float


def exact_truth(posterior, config: StudyConfig, generator: torch.Generator) -> Truth:
    """Monte Carlo TC of the finite mixture, doubling the sample size until its error is small."""
    N = posterior.mu.shape[0]
    samples = min(4096, config.exact_max_samples)
    tcs, joints, marginals = [], [], []
    while True:
        index = torch.randint(N, (samples - sum(len(t) for t in tcs),), generator=generator)
        z = posterior.sample(index, generator)
        d = decompose_exact(z, posterior.mu[index], posterior.logvar[index], posterior.mu,
                            posterior.logvar, progress=False)
        tcs.append(d.tc.double())
        joints.append(d.log_qz.double())
        marginals.append(d.log_qzd.double().sum(1))
        tc = torch.cat(tcs)
        se = float(tc.std() / math.sqrt(len(tc)))
        target = max(config.exact_relative_se * abs(float(tc.mean())), config.exact_absolute_se)
        if se <= target or samples >= config.exact_max_samples:
            break
        samples = min(2 * samples, config.exact_max_samples)
    return Truth(exact=float(tc.mean()), exact_se=se, exact_joint=float(torch.cat(joints).mean()),
                 exact_marginal=float(torch.cat(marginals).mean()), samples=len(tc),
                 gaussian=gaussian_limit_tc(posterior))


def _parts(log_qz: torch.Tensor, log_qzd: torch.Tensor) -> dict:
    joint, marginal = float(log_qz.double().mean()), float(log_qzd.double().sum(1).mean())
    return dict(tc=joint - marginal, joint=joint, marginal=marginal)


def _mixture_parts(z, mu, logvar, N, estimator, bank=None) -> dict:
    _, _, _, log_qz, log_qzd = minibatch_log_densities(z, mu, logvar, dataset_size=N, estimator=estimator, bank=bank)
    return _parts(log_qz, log_qzd)


def run_estimators(posterior, batch_size: int, config: StudyConfig, generator: torch.Generator) -> Iterable[dict]:
    """One minibatch (and its bank): every estimator's TC, joint and marginal parts, each with the
    exact decomposition at the same z (keys batch_exact, batch_exact_joint, batch_exact_marginal)."""
    N, D = posterior.mu.shape
    order = torch.randperm(N, generator=generator)
    index = order[:batch_size]
    z = posterior.sample(index, generator)
    mu, logvar = posterior.mu[index], posterior.logvar[index]
    exact = decompose_exact(z, mu, logvar, posterior.mu, posterior.logvar, progress=False)
    at_z = _parts(exact.log_qz, exact.log_qzd)
    paired = dict(batch_exact=at_z["tc"], batch_exact_joint=at_z["joint"], batch_exact_marginal=at_z["marginal"])
    no_parts = dict(joint=math.nan, marginal=math.nan)

    def row(name, **values):
        return dict(estimator=name, **values, **paired)

    for name in ("mws", "mss", "stratified", "mss-legacy"):
        yield row(name, **_mixture_parts(z, mu, logvar, N, name))
    bank = MemoryBank(config.bank_size, D)
    bank_index = order[batch_size: batch_size + config.bank_size]
    bank.update(posterior.mu[bank_index], posterior.logvar[bank_index])
    yield row("bank", **_mixture_parts(z, mu, logvar, N, "stratified", bank=bank))
    jackknifed = jackknife_log_densities_by_order(z, *bank_components(bank, mu, logvar)[:2], N)
    yield row("bank+jackknife", **_parts(*jackknifed[2]))
    yield row("bank+jackknife1", **_parts(*jackknifed[1]))
    lower, upper = tc_bracket(z, mu, logvar, dataset_size=N)
    yield row("bracket-lower", tc=float(lower), **no_parts)
    yield row("bracket-upper", tc=float(upper), **no_parts)
    if batch_size > D:
        yield row("tc-of-means", tc=float(gaussian_tc_of_means(mu)), **no_parts)
    yield row("knn", tc=knn_total_correlation(z, k=config.knn_k), **no_parts)


def run_study(config: StudyConfig, progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Returns (rows: one per estimator and minibatch, truths: one per posterior)."""
    generator = torch.Generator().manual_seed(config.seed)
    posteriors = [(rho, s, D) for rho in config.rhos for s in config.noise_stds for D in config.dims]
    steps = len(posteriors) * len(config.batch_sizes)
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=steps, desc="bias study", unit="config")
    rows, truths = [], []
    for rho, s, D in posteriors:
        posterior = make_posterior(config.dataset_size, D, rho=rho, noise_std=s, generator=generator)
        truth = exact_truth(posterior, config, generator)
        truths.append(dict(rho=rho, noise_std=s, D=D, **dataclasses.asdict(truth)))
        for M in config.batch_sizes:
            for repeat in range(config.repeats):
                for result in run_estimators(posterior, M, config, generator):
                    rows.append(dict(rho=rho, noise_std=s, D=D, M=M, repeat=repeat, **result))
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    return rows, truths


def summarise(rows: list[dict], truths: list[dict]) -> list[dict]:
    """Mean, standard deviation and bias per configuration and estimator.

    bias (against the exact finite-N TC) and its standard error come from the paired differences
    estimate - exact-at-the-same-z; bias_gaussian is mean - the closed-form limit.
    """
    truth_of = {(t["rho"], t["noise_std"], t["D"]): t for t in truths}
    groups = defaultdict(list)
    for r in rows:
        groups[(r["rho"], r["noise_std"], r["D"], r["M"], r["estimator"])].append(r)
    out = []
    order = sorted(groups.items(), key=lambda kv: (kv[0][:4], ALL_ESTIMATORS.index(kv[0][4])))
    for (rho, s, D, M, name), group in order:
        truth = truth_of[(rho, s, D)]

        def column(key, group=group):
            return np.array([g[key] for g in group])
        tc = column("tc")
        paired = tc - column("batch_exact")
        mean, bias = float(tc.mean()), float(paired.mean())
        out.append(dict(
            rho=rho, noise_std=s, D=D, M=M, estimator=name, repeats=len(tc), mean=mean,
            std=float(tc.std(ddof=1)) if len(tc) > 1 else math.nan,
            exact=truth["exact"], exact_se=truth["exact_se"], gaussian=truth["gaussian"],
            bias_exact=bias,
            bias_se=float(paired.std(ddof=1) / math.sqrt(len(paired))) if len(paired) > 1 else math.nan,
            bias_gaussian=mean - truth["gaussian"],
            relative_bias_exact=bias / truth["exact"] if abs(truth["exact"]) > 1e-9 else math.nan,
            bias_joint=float((column("joint") - column("batch_exact_joint")).mean()),
            bias_marginal=float((column("marginal") - column("batch_exact_marginal")).mean()),
        ))
    return out


def bracket_coverage(summary: list[dict]) -> tuple[int, int]:
    """(configurations where E[lower] <= exact TC <= E[upper], all configurations), judged by the
    paired biases: mean(lower - exact at z) <= 0 <= mean(upper - exact at z)."""
    by_config = defaultdict(dict)
    for s in summary:
        by_config[(s["rho"], s["noise_std"], s["D"], s["M"])][s["estimator"]] = s
    hits = sum(1 for c in by_config.values()
               if c["bracket-lower"]["bias_exact"] <= 0.0 <= c["bracket-upper"]["bias_exact"])
    return hits, len(by_config)


def markdown_table(summary: list[dict], config: StudyConfig) -> str:
    hits, total = bracket_coverage(summary)
    lines = [
        "# TC estimator bias study",
        "",
        f"mu ~ N(0, equicorrelated rho), z|mu ~ N(mu, s^2 I), N = {config.dataset_size}, bank K = "
        f"{config.bank_size}, {config.repeats} minibatches per row. TC in nats. 'exact' is the finite-N "
        f"truth (Monte Carlo, ± standard error), 'gaussian' the N -> inf closed form. bias: mean of "
        f"(estimate - exact decomposition at the same z) ± its standard error; rel. bias = bias / exact. "
        f"bank+jackknife is the second-order jackknife (the default), bank+jackknife1 the first-order one. "
        f"Joint/marginal: bias of E[log q(z)] and of E[sum_d log q(z_d)] (TC bias = joint - marginal). "
        f"mws is offset by (D-1) log N by construction.",
        "",
        f"Bracket coverage: bias(lower) <= 0 <= bias(upper) in {hits} of {total} configurations "
        f"({100.0 * hits / max(total, 1):.0f}%).",
        "",
        "| rho | s | D | M | exact | gaussian | estimator | mean ± std | bias ± se | rel. bias | joint bias "
        "| marginal bias |",
        "|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for s in summary:
        rel = "" if math.isnan(s["relative_bias_exact"]) else f"{100 * s['relative_bias_exact']:+.1f}%"
        part = lambda v: "" if math.isnan(v) else f"{v:+.3f}"  # noqa: E731
        lines.append(
            f"| {s['rho']} | {s['noise_std']} | {s['D']} | {s['M']} | {s['exact']:.3f} ± {s['exact_se']:.3f} "
            f"| {s['gaussian']:.3f} | {s['estimator']} | {s['mean']:.3f} ± {s['std']:.3f} "
            f"| {s['bias_exact']:+.3f} ± {s['bias_se']:.3f} "
            f"| {rel} | {part(s['bias_joint'])} | {part(s['bias_marginal'])} |")
    return "\n".join(lines) + "\n"


def headline_table(summary: list[dict], rho: float, noise_std: float, batch_size: int,
                   names: Iterable[str] | None = None, min_relative: float = 0.05) -> str:
    """Markdown: one row per D, one column per estimator (bias ± se in nats, and in per cent of the
    exact TC where that is at least ``min_relative`` nats), as in the README."""
    sel = [x for x in summary if x["rho"] == rho and x["noise_std"] == noise_std and x["M"] == batch_size]
    if names is None:
        names = [e for e in ALL_ESTIMATORS if e != "mws"]
    names = [e for e in names if any(x["estimator"] == e for x in sel)]
    number = lambda v: f"{round(v, 3) + 0.0:.3f}"  # noqa: E731  (no "-0.000")
    lines = [f"**rho = {rho}, s = {noise_std}, M = {batch_size}** (bias ± standard error in nats; in "
             f"brackets, per cent of the exact TC where that is at least {min_relative} nats)", "",
             "| D | exact | gaussian | " + " | ".join(names) + " |",
             "|---:|---:|---:|" + "---:|" * len(names)]
    for D in sorted({x["D"] for x in sel}):
        by_name = {x["estimator"]: x for x in sel if x["D"] == D}
        first = next(iter(by_name.values()))
        cells = []
        for name in names:
            x = by_name.get(name)
            if x is None:
                cells.append("")
                continue
            rel = (f" ({100 * x['bias_exact'] / x['exact']:+.1f}%)" if abs(x["exact"]) >= min_relative else "")
            cells.append(f"{round(x['bias_exact'], 3) + 0.0:+.3f} ± {x['bias_se']:.3f}{rel}")
        lines.append(f"| {D} | {number(first['exact'])} | {number(first['gaussian'])} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _bias_vs_dim_axes(ax, ylabel: str) -> None:
    ax.axhline(0.0, color="black", linewidth=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("D")
    ax.set_ylabel(ylabel)


def _middle_batch_size(config: StudyConfig) -> int:
    return config.batch_sizes[len(config.batch_sizes) // 2]


def plot(summary: list[dict], config: StudyConfig, out_dir: str) -> list[str]:
    """PNG per (rho, s, M): TC bias vs D with error bars; and the joint / marginal bias parts."""

    files = []
    shown = [e for e in ALL_ESTIMATORS if e != "mws"]
    for rho in config.rhos:
        for s in config.noise_stds:
            fig, axes = figure(len(config.batch_sizes), 3, figsize=(16, 4 * len(config.batch_sizes)),
                                     squeeze=False)
            for row, M in enumerate(config.batch_sizes):
                sel = [x for x in summary if x["rho"] == rho and x["noise_std"] == s and x["M"] == M]
                for col, (key, title) in enumerate((("bias_exact", "TC bias (vs exact)"),
                                                   ("bias_joint", "joint part: E log q(z) bias"),
                                                   ("bias_marginal", "marginal part: E sum_d log q(z_d) bias"))):
                    ax = axes[row][col]
                    for name in shown:
                        pts = [x for x in sel if x["estimator"] == name and not math.isnan(x[key])]
                        if not pts:
                            continue
                        dims = [p["D"] for p in pts]
                        err = [p["bias_se"] if key == "bias_exact" else 0 for p in pts]
                        ax.errorbar(dims, [p[key] for p in pts], yerr=err, marker="o", capsize=3, label=name)
                    _bias_vs_dim_axes(ax, "nats")
                    ax.set_title(f"{title}, M = {M}")
                axes[row][0].legend(fontsize=8)
            fig.suptitle(f"rho = {rho}, s = {s}, N = {config.dataset_size} (mws omitted: offset (D-1) log N)")
            files.append(save(fig, os.path.join(out_dir, f"bias_rho{rho}_s{s}.png")))
    return files


def plot_bank(summary: list[dict], config: StudyConfig, out_dir: str) -> list[str]:
    """PNG per s: bias of bank, bank + first- and second-order jackknife vs D at the middle M, in
    nats and in per cent of the exact TC, with standard-error bars and the ±3% target band."""
    middle = _middle_batch_size(config)
    files = []
    for s in config.noise_stds:
        fig, (absolute, relative) = figure(1, 2, figsize=(12, 4.5))
        for name, colour in (("bank", "tab:red"), ("bank+jackknife1", "tab:brown"), ("bank+jackknife", "tab:purple")):
            for rho, style in zip(config.rhos, ("-", "--", ":")):
                pts = [x for x in summary if x["estimator"] == name and x["noise_std"] == s and x["rho"] == rho
                       and x["M"] == middle]
                label = f"{name}, rho = {rho}"
                absolute.errorbar([p["D"] for p in pts], [p["bias_exact"] for p in pts],
                                  yerr=[p["bias_se"] for p in pts], color=colour, linestyle=style, marker="o",
                                  capsize=3, label=label)
                pts = [p for p in pts if not math.isnan(p["relative_bias_exact"])]
                relative.errorbar([p["D"] for p in pts], [100 * p["relative_bias_exact"] for p in pts],
                                  yerr=[100 * p["bias_se"] / abs(p["exact"]) for p in pts], color=colour,
                                  linestyle=style, marker="o", capsize=3, label=label)
        relative.axhspan(-3, 3, color="green", alpha=0.1, label="±3%")
        _bias_vs_dim_axes(absolute, "bias (nats)")
        _bias_vs_dim_axes(relative, "bias (% of exact TC)")
        relative.set_ylim(-25, 25)
        relative.legend(fontsize=7)
        fig.suptitle(f"memory bank (K = {config.bank_size}) and jackknife: s = {s}, M = {middle}, "
                     f"N = {config.dataset_size}")
        files.append(save(fig, os.path.join(out_dir, f"bank_bias_s{s}.png")))
    return files


def write_outputs(rows, truths, summary, config: StudyConfig, out_dir: str, seconds: float) -> list[str]:
    """Every file is written atomically (a kill leaves no half-written table)."""
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    for name, records in (("rows.csv", rows), ("summary.csv", summary), ("truths.csv", truths)):
        path = os.path.join(out_dir, name)
        table = io.StringIO()
        writer = csv.DictWriter(table, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
        runs.atomic_write_text(path, table.getvalue())
        paths.append(path)
    path = os.path.join(out_dir, "summary.md")
    runs.atomic_write_text(path, markdown_table(summary, config)
                           + f"\nRun: {time.strftime('%Y-%m-%d')}, {seconds:.0f} s, torch {torch.__version__}, "
                           f"config {json.dumps(dataclasses.asdict(config))}\n")
    paths.append(path)
    path = os.path.join(out_dir, "headline.md")
    middle = _middle_batch_size(config)
    runs.atomic_write_text(path, "\n".join(headline_table(summary, rho, s, middle)
                                            for rho in config.rhos for s in config.noise_stds))
    paths.append(path)
    paths += plot(summary, config, out_dir)
    paths += plot_bank(summary, config, out_dir)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--quick", action="store_true",
                        help="small grid, under 2 minutes on 2 cores (options given explicitly still win)")
    parser.add_argument("--out", default="bias_study", help="output folder (CSV, markdown, PNG)")
    parser.add_argument("--overwrite", action="store_true", help="replace what --out holds")
    parser.add_argument("--repeats", type=runs.int_at_least(2), help="minibatches per configuration")
    parser.add_argument("--dims", type=runs.positive_int, nargs="+", help="latent sizes D")
    parser.add_argument("--batch-sizes", type=runs.int_at_least(3), nargs="+", help="minibatch sizes M")
    parser.add_argument("--noise-stds", type=runs.positive_float, nargs="+", help="encoder standard deviations s")
    parser.add_argument("--rhos", type=runs.float_in(0.0, 1.0), nargs="+", help="correlations of the means, in [0, 1)")
    parser.add_argument("--dataset-size", type=runs.int_at_least(4), help="N")
    parser.add_argument("--bank-size", type=runs.positive_int, help="memory bank K")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true")


def config_from_args(args: argparse.Namespace) -> StudyConfig:
    config = StudyConfig.quick() if args.quick else StudyConfig()
    overrides = {"repeats": args.repeats, "dims": args.dims, "batch_sizes": args.batch_sizes,
                 "noise_stds": args.noise_stds, "rhos": args.rhos, "dataset_size": args.dataset_size,
                 "bank_size": args.bank_size, "seed": args.seed}
    for key, value in overrides.items():
        if value is not None:
            setattr(config, key, tuple(value) if isinstance(value, list) else value)
    if any(rho >= 1.0 for rho in config.rhos):
        raise SystemExit(f"error: --rhos must be in [0, 1), got {list(config.rhos)}")
    largest = max(config.batch_sizes)
    if largest + config.bank_size > config.dataset_size:
        raise SystemExit(f"error: the largest batch ({largest}) plus the bank ({config.bank_size}) must fit in "
                         f"--dataset-size {config.dataset_size}")
    return config


OWNED_FILES = ("rows.csv", "summary.csv", "truths.csv", "summary.md", "headline.md", "bias_rho*_s*.png",
               "bank_bias_s*.png")
"""What the study writes into --out (patterns; all --overwrite may delete)."""


def main(args: argparse.Namespace) -> list[dict]:
    config = config_from_args(args)
    runs.check_output(args.out, overwrite=args.overwrite, owned=OWNED_FILES)
    start = time.perf_counter()
    rows, truths = run_study(config, progress=not args.no_progress)
    summary = summarise(rows, truths)
    seconds = time.perf_counter() - start
    runs.prepare_output(args.out, overwrite=args.overwrite, owned=OWNED_FILES)  # only now, with results in hand
    paths = write_outputs(rows, truths, summary, config, args.out, seconds)
    hits, total = bracket_coverage(summary)
    print(f"bias study: {len(rows)} estimates over {total} configurations in {seconds:.0f} s; "
          f"bracket contains the exact TC in {hits}/{total}")
    print("wrote " + ", ".join(paths))
    return summary
