"""CPU benchmark of the stratified total correlation: every peer at every size, in one run.

    python benchmarks/run_cpu.py [--quick] [--out DIR]

Each configuration (peer, M, D[, ISA]) runs in a fresh process (``measure.py``), so that its peak
memory is its own and no compiled graph or allocator cache carries over. The script prints a
markdown table, writes it to ``DIR/cpu-<YYYY-MM-DD>.md`` (``cpu-<date>-quick.md`` with --quick)
with the raw numbers beside it (``.json``) and a plot of forward+backward time against M (``.png``).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from typing import List, Optional

import torch

import tcestim

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import peers  # noqa: E402
from report import Result  # noqa: E402
from report import ratio as _ratio  # noqa: E402
from report import status as _status  # noqa: E402

SIZES_M = (256, 1024, 2048)
QUICK_SIZES_M = (256, 1024)
SIZES_D = (10, 32)
CONFIG_TIMEOUT_S = 300



# --- running ------------------------------------------------------------------------------------

def supported_isas() -> List[str]:
    """The instruction sets tcestim.set_cpu_isa accepts on this machine (best first)."""
    return list(tcestim.supported_cpu_isas())


def run_config(peer: str, M: int, D: int, *, isa: Optional[str] = None,
               flush_denormal: bool = False) -> Result:
    """Measure one configuration in a fresh Python process; errors are returned, not raised."""
    config = {"peer": peer, "M": M, "D": D, "isa": isa, "flush_denormal": flush_denormal}
    if peer == "eager" and peers.eager_too_big(M, D):
        return {**config, "skipped": "cube too large"}
    command = [sys.executable, os.path.join(HERE, "measure.py"), "--peer", peer, "--m", str(M),
               "--d", str(D)]
    if isa is not None:
        command += ["--isa", isa]
    if flush_denormal:
        command.append("--flush-denormal")
    label = f"{peer:8s} M={M:<5d} D={D:<3d}" + (f" isa={isa}" if isa else "") + \
        (" flush-denormal" if flush_denormal else "")
    print(f"  {label} ...", end="", flush=True, file=sys.stderr)
    start = time.perf_counter()
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=CONFIG_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        print(f" timed out after {CONFIG_TIMEOUT_S} s", file=sys.stderr)
        return {**config, "error": f"timed out after {CONFIG_TIMEOUT_S} s"}
    wall = time.perf_counter() - start
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        print(f" failed: {reason}", file=sys.stderr)
        return {**config, "error": reason}
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(f" fwd {result['fwd_ms']:.1f} ms, fwd+bwd {result['fwdbwd_ms']:.1f} ms ({wall:.0f} s)",
          file=sys.stderr)
    return {**result, "wall_s": wall}


# --- reporting ----------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def git_revision() -> str:
    """Short commit of the checkout, with "+changes" when tracked sources differ from it."""
    def git(*args):
        return subprocess.run(["git", *args], cwd=HERE, capture_output=True, text=True, timeout=10)
    try:
        head = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--untracked-files=no", "--", "../tcestim", "../csrc")
    except (OSError, subprocess.TimeoutExpired):
        return "unknown commit"
    if head.returncode != 0:
        return "unknown commit"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def machine_line(date: str) -> str:
    return (f"{cpu_model()}, {os.cpu_count()} cores ({torch.get_num_threads()} torch threads), "
            f"torch {torch.__version__}, tcestim {tcestim.__version__} at {git_revision()} "
            f"(cpu_isa {tcestim.cpu_isa()}), Python {platform.python_version()}, {date}")


def _ms(value) -> str:
    return "—" if value is None else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _mib(value) -> str:
    return "n/a" if value is None else f"{value:.1f}" if value < 10 else f"{value:.0f}"




def peer_table(results: List[Result]) -> str:
    """One row per (M, D, peer); the ratio columns divide the peer's time by fused's."""
    fused = {(r["M"], r["D"]): r for r in results if r["peer"] == "fused" and "fwd_ms" in r}
    lines = ["| M | D | peer | fwd ms | fwd+bwd ms | peak MiB fwd | peak MiB fwd+bwd "
             "| fwd ÷ fused | fwd+bwd ÷ fused |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        head = f"| {r['M']} | {r['D']} | {r['peer']} "
        status = _status(r)
        if status:
            lines.append(head + f"| {status} | | | | | |")
            continue
        ref = fused.get((r["M"], r["D"]), {})
        lines.append(head + f"| {_ms(r['fwd_ms'])} | {_ms(r['fwdbwd_ms'])} "
                     f"| {_mib(r['fwd_peak_mib'])} | {_mib(r['fwdbwd_peak_mib'])} "
                     f"| {_ratio(r['fwd_ms'], ref.get('fwd_ms'))} "
                     f"| {_ratio(r['fwdbwd_ms'], ref.get('fwdbwd_ms'))} |")
    return "\n".join(lines)


def isa_table(results: List[Result]) -> str:
    """The fused kernel under each instruction set; ratios against the first (best) row."""
    lines = ["| fused kernel | M | D | fwd ms | fwd+bwd ms | peak MiB fwd+bwd | fwd ÷ first "
             "| fwd+bwd ÷ first |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    reference = next((r for r in results if "fwd_ms" in r), {})
    for r in results:
        name = r["isa"] + (" + flush denormals" if r["flush_denormal"] else "")
        head = f"| {name} | {r['M']} | {r['D']} "
        status = _status(r)
        if status:
            lines.append(head + f"| {status} | | | | |")
            continue
        lines.append(head + f"| {_ms(r['fwd_ms'])} | {_ms(r['fwdbwd_ms'])} "
                     f"| {_mib(r['fwdbwd_peak_mib'])} "
                     f"| {_ratio(r['fwd_ms'], reference.get('fwd_ms'))} "
                     f"| {_ratio(r['fwdbwd_ms'], reference.get('fwdbwd_ms'))} |")
    return "\n".join(lines)


def report(machine: str, peer_results: List[Result], isa_results: List[Result],
           load: float) -> str:
    return "\n".join([
        "# tcestim CPU benchmark: stratified total correlation",
        "",
        f"Machine: {machine}",
        "",
        f"float32; batch B = M = K queries and components, dataset size N = {peers.DATASET_SIZE}. "
        "Times are medians of 3-7 calls after a warm-up call (torch.compile compiles during the "
        "warm-up). Peak MiB is the rise of the process's peak RSS during one call. "
        "Ratios are the peer's time divided by fused's (higher = fused faster). "
        f"1-minute load average before the run: {load:.2f}.",
        "",
        peer_table(peer_results),
        "",
        "## Fused kernel by instruction set",
        "",
        "(`tcestim.set_cpu_isa`; the flush-denormals row also calls `torch.set_flush_denormal(True)`.)",
        "",
        isa_table(isa_results),
        "",
    ])


def plot(results: List[Result], path: str) -> bool:
    """fwd+bwd time against M, log-log, one line per peer, one panel per D. False without matplotlib."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import matplotlib.ticker
    except ImportError:
        print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
        return False
    dims = sorted({r["D"] for r in results})
    fig, axes = plt.subplots(1, len(dims), figsize=(5 * len(dims), 4), sharey=True, squeeze=False)
    for ax, D in zip(axes[0], dims):
        for peer in peers.PEER_NAMES:
            points = sorted((r["M"], r["fwdbwd_ms"]) for r in results
                            if r["peer"] == peer and r["D"] == D and "fwdbwd_ms" in r)
            if points:
                ax.plot(*zip(*points), marker="o", label=peer)
        ax.set(xscale="log", yscale="log", xlabel="M (batch size)", title=f"D = {D}")
        sizes = sorted({r["M"] for r in results})
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set_xticks(sizes, [str(m) for m in sizes])
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("forward + backward time (ms)")
    axes[0][0].legend()
    fig.suptitle("Stratified TC on CPU, float32")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# --- main ---------------------------------------------------------------------------------------

def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only M in (256, 1024) (about a minute)")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="output folder")
    args = parser.parse_args(argv)

    sizes_m = QUICK_SIZES_M if args.quick else SIZES_M
    date = datetime.date.today().isoformat()
    machine = machine_line(date)
    print(f"Machine: {machine}\npeers: {', '.join(peers.PEER_NAMES)}", file=sys.stderr)
    if not peers.keops_available():
        print("pykeops not importable: no keops column", file=sys.stderr)

    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: load average {load:.1f} before starting; other work will skew the timings",
              file=sys.stderr)
    start = time.perf_counter()
    peer_results = [run_config(peer, M, D)
                    for M in sizes_m for D in SIZES_D for peer in peers.PEER_NAMES]
    isa_m, isa_d = max(sizes_m), max(SIZES_D)
    isas = supported_isas()
    isa_results = [run_config("fused", isa_m, isa_d, isa=isa) for isa in isas]
    isa_results.append(run_config("fused", isa_m, isa_d, isa=isas[0], flush_denormal=True))
    print(f"total {time.perf_counter() - start:.0f} s", file=sys.stderr)

    text = report(machine, peer_results, isa_results, load)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"cpu-{date}" + ("-quick" if args.quick else ""))
    with open(stem + ".md", "w") as out:
        out.write(text)
    with open(stem + ".json", "w") as out:
        json.dump({"machine": machine, "load_before": load, "peers": peer_results,
                   "isa": isa_results}, out, indent=1)
    written = [stem + ".md", stem + ".json"] + ([stem + ".png"] if plot(peer_results, stem + ".png") else [])
    print("wrote " + ", ".join(os.path.relpath(p) for p in written), file=sys.stderr)


if __name__ == "__main__":
    main()
