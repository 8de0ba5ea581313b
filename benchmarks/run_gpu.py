"""GPU benchmark of the stratified total correlation: every peer at every size, in one run.

    python benchmarks/run_gpu.py [--quick] [--out DIR] [--repeats N] [--budget-s S] [--peers ...]

Peers (benchmarks/peers.py, all computing the same scalar from (B, D) float32 z, mu, logvar):
fused (tcestim.total_correlation), eager (the materialised (B, B, D) cube), compile
(torch.compile of eager) and keops (LazyTensors, only where ``import pykeops`` works: the joint via
``weightedsqnorm`` + ``logsumexp(dim=1)``, the marginals with D as a batch dimension because KeOps
has no vector-valued logsumexp). Sizes: B = M = K in {1024, 4096, 8192}, D in {10, 64}; forward
(the value) and forward+backward (value and gradients for z, mu, logvar).

Timings use CUDA events around single calls: warm-up calls first (torch.compile and KeOps compile
there; the time of the first call is reported apart), then the median of ``--repeats`` (>= 10)
timed calls. Peak MiB is torch.cuda.max_memory_allocated during one call minus what was allocated
before it. Eager and compile are skipped where their cubes would not fit in the device's memory.
A second table times the fused operator alone (torch.ops.tcestim.mixture_logdensity, no Python
estimator around it) against the exp-unit floor of KERNELS.md, and a last line measures M = K =
65536, D = 64 forward+backward memory.

Writes ``DIR/gpu-<device>-<date>.md`` (and ``.json``), rewritten after every configuration so an
interrupted run keeps what it measured, and prints the tables. ``--budget-s`` stops starting new
configurations after that many seconds (fused first, then eager, compile, keops).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
import traceback
from typing import Callable, Dict, List, Optional

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # the checkout, for an in-place (not installed) build
import tcestim  # noqa: E402
from tcestim.weights import estimator_log_weights  # noqa: E402

import peers  # noqa: E402  (benchmarks/ is not a package)
from report import Result, ratio as _ratio, status as _status  # noqa: E402

SIZES_M = (1024, 4096, 8192)
SIZES_D = (10, 64)
QUICK_SIZES_M = (1024, 4096)
PEER_ORDER = ("fused", "eager", "compile", "keops")
LARGE_M = 65536
LARGE_D = 64
EXP_PER_S = 16 * 132 * 1.98e9
"""H100 SXM exp (MUFU) throughput, KERNELS.md: 16 ex2/clock/SM x 132 SMs x 1.98 GHz."""
BACKWARD_FLOOR_FACTOR = 2.6 / 1.03
"""KERNELS.md: forward+backward floor / forward floor at M = K = 8192, D = 64."""
EAGER_CUBES = {"fwd": 4, "fwdbwd": 8}
"""Cubes of (M, M, D) float32 that eager (and compile's backward) keep alive at its peak, rounded up."""

LOG_2PI = math.log(2.0 * math.pi)


# --- inputs and peers ---------------------------------------------------------------------------

def make_inputs(M: int, D: int, *, seed: int = 0, device="cuda", requires_grad=False):
    """A batch of M encodings on the GPU: z[i] ~ N(mu[i], exp(logvar[i])), float32."""
    gen = torch.Generator(device=device).manual_seed(seed)
    mu = torch.randn(M, D, generator=gen, device=device)
    logvar = torch.rand(M, D, generator=gen, device=device) * -3.0
    z = mu + torch.randn(M, D, generator=gen, device=device) * torch.exp(0.5 * logvar)
    return [t.requires_grad_(requires_grad) for t in (z, mu, logvar)]


def keops_available() -> bool:
    try:
        import pykeops  # noqa: F401
    except Exception:  # ImportError, or a broken install
        return False
    return True


def keops_tc(z: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Stratified TC with KeOps: joint by a weighted squared norm, marginals with D as batch dim."""
    from pykeops.torch import LazyTensor

    B, D = z.shape
    N = peers.DATASET_SIZE
    log_self = -math.log(N)
    log_other = math.log(N - 1) - math.log(N) - math.log(B - 1)
    index = torch.arange(B, dtype=z.dtype, device=z.device)
    precision = torch.exp(-logvar)
    offset = -0.5 * (LOG_2PI + logvar)

    same = (0.5 - (LazyTensor(index.view(B, 1, 1)) - LazyTensor(index.view(1, B, 1))).abs()).step()
    log_w = log_other + (log_self - log_other) * same                                 # (B, B)
    z_i, mu_j = LazyTensor(z.view(B, 1, D)), LazyTensor(mu.view(1, B, D))
    prec_j = LazyTensor(precision.view(1, B, D))
    offset_j = LazyTensor(offset.sum(1).view(1, B, 1))
    log_qz = (log_w + offset_j - 0.5 * (z_i - mu_j).weightedsqnorm(prec_j)).logsumexp(dim=1).view(B)

    def by_dim(t, shape):
        return LazyTensor(t.t().contiguous().view(shape))

    same_b = (0.5 - (LazyTensor(index.view(1, B, 1, 1)) - LazyTensor(index.view(1, 1, B, 1))).abs()).step()
    log_w_b = log_other + (log_self - log_other) * same_b                             # (1, B, B)
    z_b, mu_b = by_dim(z, (D, B, 1, 1)), by_dim(mu, (D, 1, B, 1))
    prec_b, offset_b = by_dim(precision, (D, 1, B, 1)), by_dim(offset, (D, 1, B, 1))
    cube = offset_b - 0.5 * prec_b * (z_b - mu_b).square()                          # (D, B, B)
    log_qzd = (log_w_b + cube).logsumexp(dim=2).view(D, B).t()                       # (B, D)
    return (log_qz - log_qzd.sum(1)).mean()


def get_peer(name: str) -> Callable:
    if name == "fused":
        return peers.fused
    if name == "eager":
        return peers.eager
    if name == "compile":
        return peers.make_compiled()
    if name == "keops":
        return keops_tc
    raise ValueError(name)


def fits(name: str, M: int, D: int, mode: str) -> bool:
    """Whether eager/compile's cubes fit in 90% of the device memory (the others always do)."""
    if name not in ("eager", "compile"):
        return True
    cube = M * M * D * 4
    cubes = EAGER_CUBES[mode] if name == "eager" else max(1, EAGER_CUBES[mode] // 2)
    return cubes * cube < 0.9 * torch.cuda.get_device_properties(0).total_memory


# --- timing -------------------------------------------------------------------------------------

def time_calls(call: Callable[[], object], repeats: int, warmup: int) -> Dict[str, float]:
    """First-call ms, then median/min ms of `repeats` CUDA-event-timed calls, and peak extra MiB."""
    torch.cuda.synchronize()
    start = time.perf_counter()
    call()
    torch.cuda.synchronize()
    first_ms = (time.perf_counter() - start) * 1e3
    for _ in range(warmup):
        call()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        call()
        end.record()
        end.synchronize()
        times.append(begin.elapsed_time(end))
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    out = call()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    del out
    return {"first_ms": first_ms, "median_ms": statistics.median(times), "min_ms": min(times),
            "peak_mib": peak}


def measure(name: str, fn: Callable, M: int, D: int, mode: str, repeats: int) -> Result:
    result: Result = {"peer": name, "M": M, "D": D, "mode": mode}
    if not fits(name, M, D, mode):
        result["skipped"] = "cube does not fit"
        return result
    z, mu, logvar = make_inputs(M, D, requires_grad=(mode == "fwdbwd"))
    if mode == "fwd":
        def call():
            with torch.no_grad():
                return fn(z, mu, logvar)
    else:
        def call():
            value = fn(z, mu, logvar)
            return value, torch.autograd.grad(value, (z, mu, logvar))
    try:
        result.update(time_calls(call, repeats, warmup=2))
        with torch.no_grad():
            result["value"] = float(fn(z, mu, logvar))
    except torch.cuda.OutOfMemoryError:
        result["skipped"] = "out of memory"
    except Exception as error:  # a peer failing must not stop the run
        result["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160] if str(error) else ''}"
        traceback.print_exc()
    finally:
        del z, mu, logvar
        torch.cuda.empty_cache()
    return result


def measure_operator(M: int, D: int, mode: str, repeats: int) -> Result:
    """The fused operator alone (structured stratified weights), against the exp floor."""
    weights = estimator_log_weights("stratified", M, peers.DATASET_SIZE)
    z, mu, logvar = make_inputs(M, D, requires_grad=(mode == "fwdbwd"))
    op = torch.ops.tcestim.mixture_logdensity

    if mode == "fwd":
        def call():
            with torch.no_grad():
                return op(z, mu, logvar, *weights)
    else:
        def call():
            log_qz, log_qzd = op(z, mu, logvar, *weights)
            return torch.autograd.grad((log_qz - log_qzd.sum(1)).mean(), (z, mu, logvar))
    result: Result = {"peer": "fused op", "M": M, "D": D, "mode": mode}
    result.update(time_calls(call, repeats, warmup=2))
    floor_ms = M * M * D / EXP_PER_S * 1e3 * (1 if mode == "fwd" else BACKWARD_FLOOR_FACTOR)
    result["floor_ms"] = floor_ms
    result["gelem_s"] = M * M * D / (result["median_ms"] * 1e-3) / 1e9
    return result


def measure_large(repeats: int) -> Result:
    """M = K = 65536, D = 64 forward+backward of the fused operator: peak memory beyond the
    inputs, outputs and gradients, and time."""
    M, D = LARGE_M, LARGE_D
    weights = estimator_log_weights("stratified", M, peers.DATASET_SIZE)
    z, mu, logvar = make_inputs(M, D, requires_grad=True)

    def call():
        log_qz, log_qzd = torch.ops.tcestim.mixture_logdensity(z, mu, logvar, *weights)
        return torch.autograd.grad((log_qz - log_qzd.sum(1)).mean(), (z, mu, logvar))

    result: Result = {"peer": "fused op", "M": M, "D": D, "mode": "fwdbwd"}
    timing = time_calls(call, max(3, repeats // 3), warmup=1)
    kept = (M + M * D + 3 * M * D) * 4 / 2**20  # outputs and gradients
    result.update(timing)
    result["peak_extra_mib"] = timing["peak_mib"] - kept
    return result


# --- report -------------------------------------------------------------------------------------

def device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def git_revision() -> str:
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=HERE, capture_output=True,
                              text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--",
                                "../tcestim", "../csrc"], cwd=HERE, capture_output=True, text=True,
                               timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown commit"
    if head.returncode != 0:
        return "unknown commit"
    return head.stdout.strip() + ("+changes" if dirty.stdout.strip() else "")


def _ms(value) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"




def peer_table(results: List[Result]) -> str:
    lines = ["| M | D | peer | fwd ms | fwd+bwd ms | first fwd+bwd call ms | peak MiB fwd+bwd "
             "| fwd ÷ fused | fwd+bwd ÷ fused | TC − fused TC |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    by_key = {(r["peer"], r["M"], r["D"], r["mode"]): r for r in results}
    for M in sorted({r["M"] for r in results}):
        for D in sorted({r["D"] for r in results if r["M"] == M}):
            fused_fwd = by_key.get(("fused", M, D, "fwd"), {})
            fused_bwd = by_key.get(("fused", M, D, "fwdbwd"), {})
            for name in PEER_ORDER:
                fwd, bwd = by_key.get((name, M, D, "fwd")), by_key.get((name, M, D, "fwdbwd"))
                if fwd is None and bwd is None:
                    continue
                fwd, bwd = fwd or {}, bwd or {}
                diff = "—"
                if "value" in fwd and "value" in fused_fwd:
                    diff = f"{fwd['value'] - fused_fwd['value']:.1e}"
                cells = [_ms(fwd.get("median_ms")) if not _status(fwd) else _status(fwd),
                         _ms(bwd.get("median_ms")) if not _status(bwd) else _status(bwd),
                         _ms(bwd.get("first_ms")), _ms(bwd.get("peak_mib")),
                         _ratio(fwd.get("median_ms"), fused_fwd.get("median_ms")),
                         _ratio(bwd.get("median_ms"), fused_bwd.get("median_ms")), diff]
                lines.append(f"| {M} | {D} | {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def operator_table(results: List[Result]) -> str:
    lines = ["| M = K | D | mode | ms (median) | ms (min) | exp floor ms | ÷ floor | Gelem/s | peak MiB |",
             "|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        if "median_ms" not in r:
            lines.append(f"| {r['M']} | {r['D']} | {r['mode']} | {_status(r)} | | | | | |")
            continue
        lines.append(f"| {r['M']} | {r['D']} | {r['mode']} | {_ms(r['median_ms'])} | {_ms(r['min_ms'])} "
                     f"| {r['floor_ms']:.3g} | {_ratio(r['median_ms'], r.get('floor_ms'))} "
                     f"| {r.get('gelem_s', 0):.0f} | {r['peak_mib']:.1f} |")
    return "\n".join(lines)


def report(meta: Dict[str, str], peer_results: List[Result], op_results: List[Result],
           large: Optional[Result], notes: List[str]) -> str:
    out = [
        "# tcestim GPU benchmark: stratified total correlation",
        "",
        f"Device: {meta['device']}; torch {meta['torch']} (CUDA {meta['cuda']}); tcestim "
        f"{meta['tcestim']} at {meta['commit']}; Python {meta['python']}; {meta['date']}.",
        "",
        f"float32; B = M = K queries and components, dataset size N = {peers.DATASET_SIZE} "
        "(stratified weights). Times: median of the timed calls (CUDA events, after warm-up calls; "
        "the first call, where torch.compile and KeOps compile, is listed apart). Peak MiB: "
        "torch.cuda.max_memory_allocated during one call minus what was allocated before it. "
        "Ratios: the peer's time ÷ fused's (higher = fused faster). TC − fused TC: the peer's "
        "value minus fused's (a correctness check).",
        "",
        "## Peers",
        "",
        peer_table(peer_results),
        "",
        "## The fused operator alone",
        "",
        "torch.ops.tcestim.mixture_logdensity (log_qz and log_qzd), forward and forward+backward "
        "of (log_qz - log_qzd.sum(1)).mean(). Exp floor: M·K·D exponentials at 16/clock/SM × 132 "
        "SMs × 1.98 GHz (H100 SXM, KERNELS.md), times "
        f"{BACKWARD_FLOOR_FACTOR:.2f} for forward+backward. Targets of the CUDA kernels' issue on "
        "an H100: forward <= 1.5 ms and forward+backward <= 5 ms at M = K = 8192, D = 64.",
        "",
        operator_table(op_results),
        "",
    ]
    if large is not None:
        if "median_ms" in large:
            out += [f"M = K = {LARGE_M}, D = {LARGE_D}, forward+backward of the fused operator: "
                    f"{_ms(large['median_ms'])} ms (median), peak extra memory "
                    f"{large['peak_extra_mib']:.0f} MiB beyond inputs, outputs and gradients "
                    f"(the cube would be {LARGE_M * LARGE_M * LARGE_D * 4 / 2**30:.0f} GiB).", ""]
        else:
            out += [f"M = K = {LARGE_M}, D = {LARGE_D}: {_status(large)}", ""]
    if notes:
        out += ["Notes:", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(out)


# --- main ---------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="M in (1024, 4096) only")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--budget-s", type=float, default=420.0,
                        help="start no new configuration after this many seconds")
    parser.add_argument("--peers", default=",".join(PEER_ORDER),
                        help="comma-separated subset of " + ",".join(PEER_ORDER))
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("run_gpu.py: no CUDA device visible to torch", file=sys.stderr)
        return 2
    if not tcestim._extension.has_fused_kernel(torch.device("cuda")):
        print("run_gpu.py: tcestim has no CUDA kernel (build with TCESTIM_CUDA=1)", file=sys.stderr)
        return 2
    repeats = max(10, args.repeats)
    started = time.perf_counter()
    date = datetime.date.today().isoformat()
    device = torch.cuda.get_device_name(0)
    meta = {"device": device, "torch": torch.__version__, "cuda": str(torch.version.cuda),
            "tcestim": tcestim.__version__, "commit": git_revision(),
            "python": platform.python_version(), "date": date}
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, f"gpu-{device_slug(device)}-{date}" + ("-quick" if args.quick else ""))
    notes: List[str] = []
    wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
    if "keops" in wanted and not keops_available():
        wanted.remove("keops")
        notes.append("KeOps: `import pykeops` failed here (not installed), so no KeOps column.")
    sizes_m = QUICK_SIZES_M if args.quick else SIZES_M
    peer_results: List[Result] = []
    op_results: List[Result] = []
    large: Optional[Result] = None

    def write():
        text = report(meta, peer_results, op_results, large, notes)
        with open(stem + ".md", "w") as f:
            f.write(text)
        with open(stem + ".json", "w") as f:
            json.dump({"meta": meta, "peers": peer_results, "operator": op_results, "large": large,
                       "notes": notes}, f, indent=1)
        return text

    skipped: List[str] = []

    def over_budget(what: str) -> bool:
        if time.perf_counter() - started <= args.budget_s:
            return False
        if not skipped:
            notes.append(f"over the time budget of {args.budget_s:.0f} s, not measured: "
                         "(see the list that follows)")
        skipped.append(what)
        notes[-1] = (f"over the time budget of {args.budget_s:.0f} s, not measured: "
                     + ", ".join(skipped))
        return True

    # The fused operator alone, then the large-memory run, then peers in priority order.
    for M in sizes_m:
        for D in SIZES_D:
            for mode in ("fwd", "fwdbwd"):
                op_results.append(measure_operator(M, D, mode, repeats))
                print(f"  fused op M={M} D={D} {mode}: {op_results[-1]['median_ms']:.3f} ms", flush=True)
    write()
    try:
        large = measure_large(repeats)
        print(f"  large M={LARGE_M} D={LARGE_D}: {large['median_ms']:.1f} ms, "
              f"{large['peak_extra_mib']:.0f} MiB extra", flush=True)
    except Exception as error:
        large = {"M": LARGE_M, "D": LARGE_D, "error": f"{type(error).__name__}: {error}"}
    torch.cuda.empty_cache()
    write()
    for name in wanted:
        for M in sizes_m:
            for D in SIZES_D:
                if over_budget(f"{name} M={M} D={D}"):
                    continue
                fn = get_peer(name)  # a fresh torch.compile per shape (static shapes)
                for mode in ("fwd", "fwdbwd"):
                    r = measure(name, fn, M, D, mode, repeats)
                    peer_results.append(r)
                    print(f"  {name:8s} M={M:<5d} D={D:<3d} {mode:7s}: "
                          f"{_status(r) or _ms(r['median_ms']) + ' ms'}", flush=True)
                    write()
    text = write()
    print(text)
    print(f"wrote {stem}.md and {stem}.json in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
