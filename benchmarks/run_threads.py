"""Thread scaling of the fused CPU kernel, and its distance to the exp floor of this machine.

    python benchmarks/run_threads.py [--m 2048] [--d 32] [--max-load 0.3] [--wait-s 600] [--out DIR]

For 1 and 2 torch threads (and os.cpu_count() where larger) it measures the ``fused`` peer
(``tcestim.total_correlation``, float32, M = K) with ``measure.measure`` and, in the same run,
the throughput of the kernels' own exp2 on as many threads (``exp2_throughput``, built from
benchmarks/exp2_throughput.cpp with CMake). The floor is the time the exponentials alone take:
the forward evaluates M K (D + 1) of them (joint and per-dimension sums); the backward, which
recomputes the cube, needs at least as many again, so the forward+backward floor is twice that.

Other processes skew every number on a small machine: the script waits (up to --wait-s) for the
1-minute load average to fall below --max-load, and records the load before the run and the CPU
that other processes used while each row was measured (from /proc/stat, minus this process).
Writes ``DIR/cpu-threads-<YYYY-MM-DD>.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import time
from typing import Dict, List

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
import measure  # noqa: E402
from machine_load import OthersCpu  # noqa: E402
from report import Result, ratio  # noqa: E402
from run_cpu import machine_line  # noqa: E402

BUILD_DIR = os.path.join(ROOT, "build", "cmake")
EXP2_BINARY = os.path.join(BUILD_DIR, "exp2_throughput")


def exp2_binary() -> str:
    """Path of exp2_throughput, configured and built with CMake if missing."""
    if not os.path.exists(EXP2_BINARY):
        subprocess.run(["cmake", "-S", ROOT, "-B", BUILD_DIR, "-DCMAKE_BUILD_TYPE=Release"],
                       check=True, capture_output=True)
        subprocess.run(["cmake", "--build", BUILD_DIR, "--target", "exp2_throughput"],
                       check=True, capture_output=True)
    return EXP2_BINARY


def exp2_per_second(threads: int) -> float:
    done = subprocess.run([exp2_binary(), str(threads), "float"], check=True, capture_output=True,
                          text=True)
    return json.loads(done.stdout)["exp2_per_s"]


def load_average() -> float:
    return os.getloadavg()[0]


def top_snapshot(lines: int = 12) -> str:
    try:
        done = subprocess.run(["top", "-bn1"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "(top unavailable)"
    return "\n".join(done.stdout.splitlines()[:lines])


def wait_for_quiet(max_load: float, wait_s: float) -> float:
    """Sleeps until the 1-minute load is below max_load or wait_s has passed; returns the load."""
    deadline = time.monotonic() + wait_s
    while load_average() >= max_load and time.monotonic() < deadline:
        print(f"load {load_average():.2f} >= {max_load}: waiting", file=sys.stderr)
        time.sleep(20)
    return load_average()


def measure_threads(threads: int, M: int, D: int) -> Result:
    torch.set_num_threads(threads)
    with OthersCpu() as others:
        rate = exp2_per_second(threads)
        result = measure.measure("fused", M, D)
        used = torch.ops.tcestim.cpu_last_region_threads()
    floor_fwd_ms = 1e3 * M * M * (D + 1) / rate
    return {**result, "threads": threads, "threads_used": used, "exp2_per_s": rate,
            "floor_fwd_ms": floor_fwd_ms, "floor_fwdbwd_ms": 2 * floor_fwd_ms,
            "others_cores": others.cores}


def _times_floor(value: float, floor: float) -> str:
    return f"{ratio(value, floor)} ({100 * floor / value:.0f}%)"


def table(results: List[Result]) -> str:
    one = results[0]
    lines = ["| threads | ran on | fwd ms | fwd+bwd ms | speed-up fwd | speed-up fwd+bwd "
             "| exp2 /s | floor fwd ms | floor fwd+bwd ms | fwd ÷ floor (fraction) "
             "| fwd+bwd ÷ floor (fraction) | others' CPU (cores) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(
            f"| {r['threads']} | {r['threads_used']} | {r['fwd_ms']:.1f} | {r['fwdbwd_ms']:.1f} "
            f"| {ratio(one['fwd_ms'], r['fwd_ms'])} | {ratio(one['fwdbwd_ms'], r['fwdbwd_ms'])} "
            f"| {r['exp2_per_s']:.2e} | {r['floor_fwd_ms']:.1f} | {r['floor_fwdbwd_ms']:.1f} "
            f"| {_times_floor(r['fwd_ms'], r['floor_fwd_ms'])} "
            f"| {_times_floor(r['fwdbwd_ms'], r['floor_fwdbwd_ms'])} | {r['others_cores']:.2f} |")
    return "\n".join(lines)


def report(machine: str, M: int, D: int, results: List[Result], load: Dict[str, float],
           max_load: float, top: str) -> str:
    quiet = load["before"] < max_load and all(r["others_cores"] < max_load for r in results)
    return "\n".join([
        "# tcestim CPU kernel: thread scaling and the exp floor",
        "",
        f"Machine: {machine}",
        "",
        f"`fused` peer (`tcestim.total_correlation`, structured weights), float32, M = K = {M}, "
        f"D = {D}. Times are medians of 3-7 calls after a warm-up (`benchmarks/measure.py`), "
        "with `torch.set_num_threads(threads)`; *ran on* is the number of threads that executed the "
        "kernel's last parallel region (`torch.ops.tcestim.cpu_last_region_threads`). Speed-ups are "
        "against 1 thread.",
        "",
        "The floor is the exponentials alone: `exp2 /s` is the throughput of the kernels' own "
        "exp2 (`csrc/cpu/exp2.h`, `benchmarks/exp2_throughput.cpp`: load, subtract, exp2, add over "
        "an L1-resident array, widest vectors of this CPU, best of 7 trials) on that many threads, "
        "measured in the same run. Forward floor = M K (D + 1) / (exp2 /s); forward+backward "
        "floor = twice that (the backward recomputes the cube). *÷ floor* is time / floor, the "
        "fraction in brackets floor / time.",
        "",
        f"Load: 1-minute load average {load['before']:.2f} before the run, {load['after']:.2f} "
        "after it (including this run); *others' CPU* is the average number of cores other "
        "processes kept busy while that row was measured. "
        + ("Quiet machine: below the threshold of "
           f"{max_load} throughout." if quiet else
           f"**Taken under load** (threshold {max_load}): other processes competed for the cores."),
        "",
        table(results),
        "",
        "`top -bn1` before the run:",
        "",
        "```",
        top,
        "```",
        "",
    ])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--m", type=int, default=2048, help="M = K")
    parser.add_argument("--d", type=int, default=32)
    parser.add_argument("--max-load", type=float, default=0.3,
                        help="wait for the 1-minute load average to fall below this")
    parser.add_argument("--wait-s", type=float, default=600, help="give up waiting after this")
    parser.add_argument("--out", default=os.path.join(HERE, "results"), help="output folder")
    args = parser.parse_args(argv)

    exp2_binary()
    counts = sorted({1, 2, os.cpu_count() or 1})
    load = {"before": wait_for_quiet(args.max_load, args.wait_s)}
    top = top_snapshot()
    date = datetime.date.today().isoformat()
    machine = machine_line(date)
    print(f"Machine: {machine}\nload {load['before']:.2f}", file=sys.stderr)
    results = []
    for threads in counts:
        results.append(measure_threads(threads, args.m, args.d))
        r = results[-1]
        print(f"  {threads} threads (ran on {r['threads_used']}): fwd {r['fwd_ms']:.1f} ms, "
              f"fwd+bwd {r['fwdbwd_ms']:.1f} ms, exp2 {r['exp2_per_s']:.2e}/s, "
              f"others {r['others_cores']:.2f} cores", file=sys.stderr)
    load["after"] = load_average()

    text = report(machine, args.m, args.d, results, load, args.max_load, top)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"cpu-threads-{date}")
    with open(stem + ".md", "w") as out:
        out.write(text)
    with open(stem + ".json", "w") as out:
        json.dump({"machine": machine, "load": load, "max_load": args.max_load, "results": results},
                  out, indent=1)
    print(f"wrote {os.path.relpath(stem)}.md, .json", file=sys.stderr)


if __name__ == "__main__":
    main()
