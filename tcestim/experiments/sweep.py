"""`python -m tcestim sweep`: objectives × β × seeds of the training command, as the β-TCVAE paper's Figure 1.

Every cell (objective, β, seed) is a `train` run in ``--out/<objective>-beta<β>-seed<seed>``. The sweep is
resumable: a finished cell (its checkpoint at the last step) is read back, not rerun; a cell cut short is
continued with ``--resume``. When every cell is done it writes into ``--out``:

    sweep.md / sweep.json   per (objective, β): mean ± standard error over seeds of MIG (the paper's
                            protocol: Chen et al.'s estimator without shape; the same on every varying
                            factor; the discretised one), the exact TC, MI, dimension-wise KL and the ELBO;
                            per β, the MIG difference of the first two objectives in standard errors
    mig_vs_beta.png         MIG (paper protocol) against β per objective, every seed a point, means joined
    tc_vs_mig.png           mean TC against mean MIG per β, with the correlation for each objective

``--jobs J`` trains J cells at a time, each in its own process with cores / J threads (unless
``--train-args`` sets ``--threads``); the results do not depend on J.

The paper's own set-up (`--model paper-mlp`, 64 x 64 images, batch 2048, 50 epochs) and reduced ones are
chosen through ``--train-args``, passed to every cell as they would be to `train`.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import json
import math
import multiprocessing
import os
import shlex
import statistics
import time

from tcestim.experiments import runs, train
from tcestim.experiments.plotting import figure, save

SUMMARY_KEYS = ("mig_paper", "mig_chen", "mig_discrete", "tc", "mi", "dimkl", "elbo", "minutes")
HEADLINE = "mig_paper"
"""The MIG of the plots and of the comparisons: Chen et al.'s protocol (shape left out)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--objectives", nargs="+", choices=train.OBJECTIVES, default=["beta-vae", "beta-tcvae"])
    parser.add_argument("--betas", type=runs.non_negative_float, nargs="+", default=[1.0, 4.0, 8.0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--out", default="runs/sweep", help="one folder per cell, and the sweep's tables and plots")
    parser.add_argument("--train-args", default="", help="options for every cell's `train`, e.g. "
                        "\"--data sprites --image-size 32 --model mlp --steps 3000\"")
    parser.add_argument("--jobs", type=runs.positive_int, default=1,
                        help="cells trained at a time, each in its own process (threads split between them)")
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--no-plots", action="store_true")


def cell_dir(out: str, objective: str, beta: float, seed: int) -> str:
    return os.path.join(out, f"{objective}-beta{beta:g}-seed{seed}")


def _cell_args(args, objective: str, beta: float, seed: int, resume: bool) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="train")
    train.add_train_arguments(parser)
    argv = shlex.split(args.train_args) + ["--objective", objective, "--beta", repr(beta), "--seed", str(seed),
                                           "--out", cell_dir(args.out, objective, beta, seed), "--no-progress",
                                           "--no-plots"]
    argv += ["--resume"] if resume else []
    if args.jobs > 1 and "--threads" not in argv:
        argv += ["--threads", str(max(1, (os.cpu_count() or 1) // args.jobs))]
    cell = parser.parse_args(argv)
    cell.explicit = runs.explicit_options(parser, argv)
    return cell


def run_cell(args, objective: str, beta: float, seed: int) -> dict:
    """The final evaluation of one cell: read back if finished, continued if cut short, else trained."""
    folder = cell_dir(args.out, objective, beta, seed)
    checkpoint = os.path.join(folder, "checkpoint.pt")
    fresh = _cell_args(args, objective, beta, seed, resume=False)
    if os.path.exists(checkpoint):
        state = runs.load_checkpoint(checkpoint)
        records = runs.read_json_lines(os.path.join(folder, "metrics.jsonl"))
        if state["step"] >= fresh.steps and records and records[-1]["step"] == state["step"]:
            return _with_minutes(records[-1])
        return _with_minutes(train.train(_cell_args(args, objective, beta, seed, resume=True)))
    return _with_minutes(train.train(fresh))


def _with_minutes(record: dict) -> dict:
    return {**record, "minutes": record.get("seconds", math.nan) / 60}


def summarise(results: dict) -> list[dict]:
    """One row per (objective, β): mean and standard error over seeds of SUMMARY_KEYS."""
    rows = []
    for objective, beta in sorted({(o, b) for o, b, _ in results}):
        finals = [r for (o, b, _), r in sorted(results.items()) if (o, b) == (objective, beta)]
        row = {"objective": objective, "beta": beta, "seeds": len(finals)}
        for key in SUMMARY_KEYS:
            values = [f[key] for f in finals if key in f]
            row[key] = statistics.mean(values) if values else math.nan
            row[key + "_se"] = statistics.stdev(values) / math.sqrt(len(values)) if len(values) > 1 else math.nan
        rows.append(row)
    return rows


def correlation(xs, ys) -> float:
    if len(xs) < 2:
        return math.nan
    mx, my = statistics.mean(xs), statistics.mean(ys)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, ys))
    sxx, syy = sum((x - mx) ** 2 for x in xs), sum((y - my) ** 2 for y in ys)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else math.nan


def table(rows: list[dict], args) -> str:
    lines = [f"# Sweep: {' / '.join(args.objectives)} × β {args.betas} × seeds {args.seeds}", "",
             f"Each cell: `python -m tcestim train {args.train_args}` (mean ± standard error over seeds; MIG "
             "unitless, TC, MI, dim-KL and ELBO in nats per data point from the exact decomposition of the "
             "evaluation set; minutes of training and evaluation per cell).", "",
             "| objective | β | seeds | MIG (paper: no shape) | MIG (all factors) | MIG (discrete) | TC | MI "
             "| dim-KL | ELBO | minutes |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cells = [f"{r[k]:.3f} ± {r[k + '_se']:.3f}" for k in SUMMARY_KEYS]
        lines.append(f"| {r['objective']} | {r['beta']:g} | {r['seeds']} | " + " | ".join(cells) + " |")
    lines.append("")
    for objective in args.objectives:
        mine = [r for r in rows if r["objective"] == objective]
        lines.append(f"- {objective}: correlation of mean TC and mean MIG (paper) across β = "
                     f"{correlation([r['tc'] for r in mine], [r[HEADLINE] for r in mine]):+.2f}; best mean MIG "
                     f"{max((r[HEADLINE] for r in mine), default=math.nan):.3f}")
    lines += [f"- {line}" for line in comparisons(rows, args.objectives)]
    return "\n".join(lines) + "\n"


def comparisons(rows: list[dict], objectives) -> list[str]:
    """Per β: mean MIG (paper) of the second objective minus the first's, in combined standard errors."""
    if len(objectives) < 2:
        return []
    first, second = objectives[0], objectives[1]
    lines = []
    for beta in sorted({r["beta"] for r in rows}):
        a = next((r for r in rows if (r["objective"], r["beta"]) == (first, beta)), None)
        b = next((r for r in rows if (r["objective"], r["beta"]) == (second, beta)), None)
        if a is None or b is None:
            continue
        diff = b[HEADLINE] - a[HEADLINE]
        se = math.hypot(a[HEADLINE + "_se"], b[HEADLINE + "_se"])
        ratio = f"{diff / se:+.1f} standard errors" if se > 0 else "standard error undefined"
        lines.append(f"β = {beta:g}: MIG (paper) of {second} − {first} = {diff:+.3f} ({ratio})")
    return lines


def plot(results: dict, rows: list[dict], args) -> list[str]:
    fig, ax = figure(figsize=(6, 4))
    for objective in args.objectives:
        points = [(b, r[HEADLINE]) for (o, b, _), r in results.items() if o == objective]
        ax.scatter([b for b, _ in points], [m for _, m in points], s=12, alpha=0.6)
        mine = [r for r in rows if r["objective"] == objective]
        ax.plot([r["beta"] for r in mine], [r[HEADLINE] for r in mine], marker="o", label=objective)
    ax.set_xlabel("β")
    ax.set_ylabel("MIG (Chen et al.'s protocol, shape left out)")
    ax.legend()
    paths = [save(fig, os.path.join(args.out, "mig_vs_beta.png"))]
    fig, ax = figure(figsize=(6, 4))
    for objective in args.objectives:
        mine = [r for r in rows if r["objective"] == objective]
        rho = correlation([r["tc"] for r in mine], [r[HEADLINE] for r in mine])
        ax.plot([r["tc"] for r in mine], [r[HEADLINE] for r in mine], marker="o", linestyle="",
                label=f"{objective} (corr. {rho:+.2f})")
        for r in mine:
            ax.annotate(f"β={r['beta']:g}", (r["tc"], r[HEADLINE]), fontsize=7)
    ax.set_xlabel("mean TC (nats)")
    ax.set_ylabel("mean MIG (paper protocol)")
    ax.legend()
    paths.append(save(fig, os.path.join(args.out, "tc_vs_mig.png")))
    return paths


def main(args: argparse.Namespace) -> list[dict]:
    os.makedirs(args.out, exist_ok=True)
    if not args.no_plots:
        train.check_plotting(args)
    cells = [(o, b, s) for o in args.objectives for b in args.betas for s in args.seeds]
    bar = None
    if not args.no_progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=len(cells), desc="sweep", unit="run")
    start, results = time.perf_counter(), {}
    if args.jobs == 1:
        for cell in cells:
            results[cell] = run_cell(args, *cell)
            if bar is not None:
                bar.update(1)
    else:
        # spawn: a fresh interpreter per worker, no forked OpenMP or autograd state
        with concurrent.futures.ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn")) \
                as pool:
            futures = {pool.submit(run_cell, args, *cell): cell for cell in cells}
            for future in concurrent.futures.as_completed(futures):
                results[futures[future]] = future.result()
                if bar is not None:
                    bar.update(1)
        results = {cell: results[cell] for cell in cells}
    if bar is not None:
        bar.close()
    rows = summarise(results)
    text = table(rows, args) + f"\n{len(cells)} runs, {time.perf_counter() - start:.0f} s this invocation.\n"
    runs.atomic_write_text(os.path.join(args.out, "sweep.md"), text)
    runs.atomic_write_text(os.path.join(args.out, "sweep.json"), json.dumps(
        {"rows": rows, "cells": [{"objective": o, "beta": b, "seed": s,
                                  **{k: r.get(k) for k in SUMMARY_KEYS}} for (o, b, s), r in results.items()]}))
    if not args.no_plots:
        plot(results, rows, args)
    print(text)
    return rows
