"""The peers' own code, timed beside tcestim: pythae's and disent's TC computations, as installed.

    python benchmarks/run_peers.py               # B in 256, 1024, 4096, 8192; D = 10 (~10-15 min on 2 cores)
    python benchmarks/run_peers.py --quick       # B in 256, 1024 (~2 min)
    python benchmarks/run_peers.py --note "..."  # a line for the header (e.g. what else ran)
    python benchmarks/run_peers.py --threads 1   # torch threads in each measuring process
    python benchmarks/run_peers.py --render results/peers-cpu-DATE.json   # only rewrite the .md

For each peer package that imports (pythae, disent; neither is a tcestim dependency: see
examples/pythae_dropin.py and examples/disent_dropin.py for installing them), three
implementations of that peer's term run on identical inputs (``measure.make_inputs``: float32, seeded):

* pythae 0.1.2, ``BetaTCVAE.loss_function`` with ``use_mss=True`` (its default), alpha = gamma = 1,
  beta = 6: the whole β-TCVAE regulariser (MI + 6 TC + dimension-wise KL; its reconstruction term
  on a one-pixel input; with beta = 1 the sum would not depend on the estimator); beside it ``tcestim.decompose`` with
  ``estimator="mss-legacy"`` (the same number) and with the default stratified estimator (the
  correct one), each summed the same way.
* disent 0.8.0, ``BetaTcVae._betatc_compute_total_correlation`` (what its framework's loss calls):
  the TC alone; beside it ``tcestim.log_aggregate_posterior(..., log_weights=0.0)`` (the same
  number) and ``tcestim.total_correlation(..., dataset_size=N)`` (the correct one).

Each (implementation, B) runs in a fresh process (``--one``), measured as ``measure.py`` measures
(median wall time of forward, and of forward + backward to z, mu and logvar; peak RSS rise of one
call). The child also records the values of the three implementations on its inputs, so the table
shows that the "same number" rows are the same number. A configuration whose estimated peak
(``PEAK_CUBES`` (B, B, D) float32 cubes, ``PEAK_CUBES`` taken from the largest smaller B measured
in the same run) exceeds ``--cap-gb`` is not started ("skipped (OOM estimate)"), and a child whose
resident set passes 1.25 x the cap is killed ("OOM: killed").

Writes ``DIR/peers-cpu-<YYYY-MM-DD>.md`` (``-quick`` with --quick) and ``.json`` beside it.
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from typing import Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

SIZES = (256, 1024, 4096, 8192)
QUICK_SIZES = (256, 1024)
D_DEFAULT = 10
N = 60_000
CAP_GB = 8.0
KILL_FACTOR = 1.25
DEFAULT_PEAK_CUBES = 10.0
"""Cubes assumed for a peer before any size of it has been measured in the run."""
CONFIG_TIMEOUT_S = 600
PYTHAE_BETA = 6.0
LOADED_CORES = 0.25
"""Other processes keeping more than this many cores busy on average during the run mark it as loaded
(machine_load.OthersCpu; the load average, which counts the run's own processes, did before)."""

FAMILIES: Dict[str, Tuple[str, ...]] = {
    "pythae": ("pythae", "tcestim mss-legacy", "tcestim stratified"),
    "disent": ("disent", "tcestim unit weights", "tcestim stratified"),
}
"""Per peer package: its own code first, then tcestim's same number, then the correct estimator."""


# --- the implementations (child process) --------------------------------------------------------

def _load_disent():
    """disent's BetaTcVae, imported as examples/disent_dropin.py does (torchvision placeholder)."""
    spec = importlib.util.spec_from_file_location("disent_dropin", os.path.join(ROOT, "examples", "disent_dropin.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.BetaTcVae


def implementation(family: str, name: str, B: int, D: int) -> Callable:
    """``f(z, mu, logvar) -> scalar`` for one row of the table."""
    import torch

    import tcestim

    if family == "pythae":
        def regulariser(estimator):
            def f(z, mu, logvar):
                d = tcestim.decompose(z, mu, logvar, dataset_size=N, estimator=estimator)
                return (d.mi + PYTHAE_BETA * d.tc + d.dimkl).mean()
            return f
        if name == "pythae":
            from pythae.models import BetaTCVAE, BetaTCVAEConfig
            model = BetaTCVAE(BetaTCVAEConfig(input_dim=(1,), latent_dim=D, alpha=1.0, beta=PYTHAE_BETA, gamma=1.0,
                                              use_mss=True, reconstruction_loss="mse"))
            x = torch.zeros(B, 1)

            def f(z, mu, logvar):
                return model.loss_function(x, x, mu, logvar, z, N)[0]
            return f
        return regulariser({"tcestim mss-legacy": "mss-legacy", "tcestim stratified": "stratified"}[name])
    if family == "disent":
        if name == "disent":
            return _load_disent()._betatc_compute_total_correlation
        if name == "tcestim unit weights":
            def unit(z, mu, logvar):
                log_qz, log_qzd = tcestim.log_aggregate_posterior(z, mu, logvar, log_weights=0.0)
                return (log_qz - log_qzd.sum(1)).mean()
            return unit
        if name == "tcestim stratified":
            return lambda z, mu, logvar: tcestim.total_correlation(z, mu, logvar, dataset_size=N)
    raise ValueError(f"unknown implementation {family!r} / {name!r}")


def measure_one(family: str, name: str, B: int, D: int) -> Dict[str, object]:
    """Time and peak memory of one implementation, and the values of all three on the same inputs."""
    import measure
    import torch

    z, mu, logvar = measure.make_inputs(B, D)
    values = {}
    if B <= 1024:   # the cheap sizes: every implementation of the family on these inputs
        for other in FAMILIES[family]:
            with torch.no_grad():
                values[other] = float(implementation(family, other, B, D)(z, mu, logvar))
    f = implementation(family, name, B, D)
    leaves = [t.clone().requires_grad_() for t in (z, mu, logvar)]

    def forward():
        with torch.no_grad():
            return f(z, mu, logvar)

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None
        f(*leaves).backward()

    start = time.perf_counter()
    value = float(forward())
    forward_backward()
    warmup_s = time.perf_counter() - start
    return {
        "family": family, "impl": name, "B": B, "D": D, "value": value, "values": values,
        "threads": torch.get_num_threads(), "warmup_s": warmup_s,
        "fwd_peak_mib": measure.peak_extra_mib(forward),
        "fwdbwd_peak_mib": measure.peak_extra_mib(forward_backward),
        "fwd_ms": 1e3 * measure.median_seconds(forward),
        "fwdbwd_ms": 1e3 * measure.median_seconds(forward_backward),
    }


# --- the driver ---------------------------------------------------------------------------------

def cube_bytes(B: int, D: int) -> int:
    return B * B * D * 4


def _rss_bytes(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_child(family: str, name: str, B: int, D: int, kill_bytes: float,
              threads: Optional[int] = None) -> Dict[str, object]:
    """One configuration in a fresh process, killed if its resident set passes kill_bytes."""
    config = {"family": family, "impl": name, "B": B, "D": D}
    command = [sys.executable, os.path.abspath(__file__), "--one", family, name, str(B), str(D)]
    if threads is not None:
        command += ["--threads", str(threads)]
    print(f"  {family:7s} {name:22s} B={B:<5d} D={D} ...", end="", flush=True, file=sys.stderr)
    start = time.perf_counter()
    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    while child.poll() is None:
        rss = _rss_bytes(child.pid)
        peak = max(peak, rss)
        if rss > kill_bytes:
            child.kill()
            child.communicate()
            print(f" killed at {rss / 2**30:.1f} GiB", file=sys.stderr)
            return {**config, "oom": f"killed at {rss / 2**30:.1f} GiB RSS"}
        if time.perf_counter() - start > CONFIG_TIMEOUT_S:
            child.kill()
            child.communicate()
            print(" timed out", file=sys.stderr)
            return {**config, "error": f"timed out after {CONFIG_TIMEOUT_S} s"}
        time.sleep(0.05)
    out, err = child.communicate()
    wall = time.perf_counter() - start
    if child.returncode != 0:
        reason = (err.strip().splitlines() or [f"exit status {child.returncode}"])[-1]
        print(f" failed: {reason}", file=sys.stderr)
        return {**config, "error": reason}
    result = json.loads(out.strip().splitlines()[-1])
    print(f" fwd {result['fwd_ms']:.1f} ms, fwd+bwd {result['fwdbwd_ms']:.1f} ms, "
          f"peak {result['fwdbwd_peak_mib']:.0f} MiB ({wall:.0f} s)", file=sys.stderr)
    return {**result, "wall_s": wall, "child_peak_rss_mib": peak / 2**20}


def available(family: str) -> Optional[str]:
    """The package's version, or None if it (or what importing it needs) is missing."""
    needs = {"pythae": ("pythae",), "disent": ("disent", "lightning", "h5py")}[family]
    if any(importlib.util.find_spec(m) is None for m in needs):
        return None
    return importlib.metadata.version(family)


def run(sizes, D: int, cap_gb: float, threads: Optional[int] = None) -> List[Dict[str, object]]:
    results: List[Dict[str, object]] = []
    cap = cap_gb * 1e9
    for family, names in FAMILIES.items():
        if available(family) is None:
            print(f"{family}: not installed, skipped", file=sys.stderr)
            continue
        for name in names:
            cubes = DEFAULT_PEAK_CUBES if not name.startswith("tcestim") else 0.0
            for B in sizes:
                estimate = cubes * cube_bytes(B, D)
                if estimate > cap:
                    results.append({"family": family, "impl": name, "B": B, "D": D,
                                    "skipped": f"OOM estimate {estimate / 1e9:.0f} GB > {cap_gb:g} GB",
                                    "estimate_gb": estimate / 1e9})
                    print(f"  {family:7s} {name:22s} B={B:<5d} D={D} skipped: estimated {estimate / 1e9:.1f} GB",
                          file=sys.stderr)
                    continue
                r = run_child(family, name, B, D, KILL_FACTOR * cap, threads)
                results.append(r)
                if not name.startswith("tcestim") and r.get("fwdbwd_peak_mib"):
                    # the peak measured at this B, in cubes: the estimate for the next B
                    cubes = max(r["fwdbwd_peak_mib"], r["fwd_peak_mib"]) * 2**20 / cube_bytes(B, D)
    return results


# --- the report ---------------------------------------------------------------------------------

def _ms(v) -> str:
    return "—" if v is None else f"{v:.2f}" if v < 10 else f"{v:.1f}" if v < 100 else f"{v:.0f}"


def _mib(v) -> str:
    return "n/a" if v is None else f"{v:.1f}" if v < 10 else f"{v:.0f}"


def _status(r) -> Optional[str]:
    if "skipped" in r:
        return f"skipped ({r['skipped']})"
    if "oom" in r:
        return f"OOM ({r['oom']})"
    if "error" in r:
        return f"failed: {r['error']}"
    return None


def table(results, family: str) -> str:
    rows = [r for r in results if r["family"] == family]
    peer = {r["B"]: r for r in rows if r["impl"] == family and "fwd_ms" in r}
    lines = ["| B | implementation | value | fwd ms | fwd+bwd ms | peak MiB fwd | peak MiB fwd+bwd "
             f"| {family} ÷ row, fwd | {family} ÷ row, fwd+bwd |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in sorted(rows, key=lambda r: (r["B"], FAMILIES[family].index(r["impl"]))):
        head = f"| {r['B']} | {r['impl']} "
        status = _status(r)
        if status:
            lines.append(head + f"| | {status} | | | | | |")
            continue
        ref = peer.get(r["B"])
        fwd = f"{ref['fwd_ms'] / r['fwd_ms']:.1f}×" if ref else "—"
        fwdbwd = f"{ref['fwdbwd_ms'] / r['fwdbwd_ms']:.1f}×" if ref else "—"
        lines.append(head + f"| {r['value']:.4f} | {_ms(r['fwd_ms'])} | {_ms(r['fwdbwd_ms'])} "
                     f"| {_mib(r['fwd_peak_mib'])} | {_mib(r['fwdbwd_peak_mib'])} | {fwd} | {fwdbwd} |")
    return "\n".join(lines)


def agreement(results, family: str) -> str:
    """The largest relative difference between the peer's value and tcestim's same-number row."""
    same = FAMILIES[family][1]
    by_size = {}
    for r in results:
        if r["family"] == family and "value" in r:
            by_size.setdefault(r["B"], {})[r["impl"]] = r["value"]
    pairs = [(B, v[family], v[same]) for B, v in sorted(by_size.items()) if family in v and same in v]
    if not pairs:
        return f"No size has both {family}'s value and `{same}`'s."
    worst = max(abs(a - b) / max(1.0, abs(a)) for _, a, b in pairs)
    return (f"{family} and `{same}` on the same inputs, B in {', '.join(str(B) for B, _, _ in pairs)}: "
            f"largest relative difference {worst:.1e} (float32 rounding is about 1e-7 to 1e-5).")


def machine_line(date: str) -> str:
    import run_cpu
    return run_cpu.machine_line(date)


def report(meta: Dict[str, object], results) -> str:
    out = ["# The peers' own code beside tcestim (CPU)", "",
           f"Machine: {meta['machine']}", "",
           f"Command: `{meta['command']}`", ""]
    if meta["loaded"]:
        busy = (f"other processes kept {meta['others_cores']:.2f} of {meta['cores']} cores busy on average"
                if "others_cores" in meta else  # results written before others' CPU was measured
                f"1-minute load average {meta['load_before']:.2f} before and {meta['load_after']:.2f} after, "
                f"on {meta['cores']} cores")
        out += [f"**Loaded machine**: {busy} during the run: other work ran alongside, so every time "
                "here is inflated (memory is not affected). Rerun the command on a quiet machine for "
                "timings.", ""]
    if meta.get("note"):
        out += [f"Note: {meta['note']}", ""]
    out += [f"Packages: {', '.join(f'{k} {v}' for k, v in meta['packages'].items())}. "
            f"float32, D = {meta['D']}, dataset size N = {N}, inputs `measure.make_inputs` "
            "(mu ~ N(0, 1), logvar ~ U(-3, 0), seed 0). Times are medians of 3-7 calls after a "
            "warm-up; fwd+bwd back-propagates to z, mu and logvar. Peak MiB is the rise of the "
            "process's peak RSS during one call (a fresh process per row). A size whose "
            f"estimated peak exceeds {meta['cap_gb']:g} GB is skipped. \"value\" is the row's "
            "number on the inputs: the peer's row and tcestim's same-number row agree to float32 "
            "rounding; the stratified row is the corrected estimate.", ""]
    descriptions = {
        "pythae": "`BetaTCVAE.loss_function` (use_mss=True, alpha = gamma = 1, beta = 6: MI + 6 TC + "
                  "dimension-wise KL) against `tcestim.decompose(..., estimator=\"mss-legacy\")` "
                  "and the default stratified `decompose`, summed the same way.",
        "disent": "`BetaTcVae._betatc_compute_total_correlation` (the TC its loss uses) against "
                  "`tcestim.log_aggregate_posterior(..., log_weights=0.0)` and the stratified "
                  "`tcestim.total_correlation(..., dataset_size=N)`.",
    }
    for family in FAMILIES:
        if family not in meta["packages"]:
            out += [f"## {family}", "", "not installed: no rows.", ""]
            continue
        out += [f"## {family} {meta['packages'][family]}", "", descriptions[family], "",
                table(results, family), "", agreement(results, family), ""]
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"B in {QUICK_SIZES} only")
    parser.add_argument("--sizes", type=int, nargs="+", help=f"batch sizes (default {SIZES})")
    parser.add_argument("--d", type=int, default=D_DEFAULT, help="latent dimensions")
    parser.add_argument("--cap-gb", type=float, default=CAP_GB, help="skip sizes estimated above this")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--note", default="", help="a line for the report's header")
    parser.add_argument("--threads", type=int, default=None, help="torch threads per measuring process")
    parser.add_argument("--render", metavar="JSON", help="rewrite the .md beside a results .json; run nothing")
    parser.add_argument("--one", nargs=4, metavar=("FAMILY", "IMPL", "B", "D"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        if args.threads is not None:
            import torch
            torch.set_num_threads(args.threads)
        family, name, B, D = args.one
        print(json.dumps(measure_one(family, name, int(B), int(D))))
        return

    if args.render:
        with open(args.render) as f:
            saved = json.load(f)
        with open(os.path.splitext(args.render)[0] + ".md", "w") as f:
            f.write(report(saved["meta"], saved["results"]))
        return

    import torch

    sizes = tuple(args.sizes or (QUICK_SIZES if args.quick else SIZES))
    date = datetime.date.today().isoformat()
    load_before = os.getloadavg()[0]
    packages = {"torch": torch.__version__}
    for family in FAMILIES:
        version = available(family)
        if version is not None:
            packages[family] = version
    from machine_load import OthersCpu

    with OthersCpu() as others:
        results = run(sizes, args.d, args.cap_gb, args.threads)
    load_after = os.getloadavg()[0]
    cores = os.cpu_count() or 1
    meta = {
        "machine": machine_line(date) + (f"; torch threads per measuring process: {args.threads}"
                                         if args.threads is not None else ""),
        "date": date, "platform": platform.platform(),
        "command": shlex.join(["python", "benchmarks/run_peers.py", *(sys.argv[1:] if argv is None else argv)]),
        "packages": packages, "sizes": list(sizes), "D": args.d, "N": N, "cap_gb": args.cap_gb,
        "cores": cores, "load_before": load_before, "load_after": load_after, "others_cores": others.cores,
        "loaded": others.cores > LOADED_CORES, "note": args.note,
    }
    text = report(meta, results)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"peers-cpu-{date}" + ("-quick" if args.quick else ""))
    with open(stem + ".md", "w") as f:
        f.write(text)
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    print(f"wrote {stem}.md and {stem}.json", file=sys.stderr)


if __name__ == "__main__":
    main()
