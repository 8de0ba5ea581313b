"""GPU benchmark of the fused kernels and their peers, written row by row as it is measured.

    python benchmarks/run_gpu.py --out DIR [--budget-s S] [--repeats N] [--rehearsal]
    python benchmarks/run_gpu.py --summarize DIR/bench.jsonl

Rows, most important first (all float32; B = M = K, stratified weights, N = peers.DATASET_SIZE):
  op       torch.ops.tcestim.mixture_logdensity alone, forward and forward+backward, against the
           exp-unit floor (M K D exponentials at 16/clock/SM on the device's SMs and clock)
  large    M = K = 65536, D = 64 forward+backward: time and memory beyond inputs/outputs/grads
  exact    tcestim.decompose_exact: 10 000 queries against 737 280 components (dSprites), D = 10
  fused / eager / keops   the stratified total correlation (benchmarks/peers.py) at every size
  compile  torch.compile of eager at one shape only (COMPILE_SHAPE): its compile is the first call

Every row is appended to DIR/bench.jsonl (one JSON object) and DIR/bench.md (one table row) as
soon as it is measured, so a crash, a kill at the deadline or an out-of-memory never loses the
rows before it. Every measurement is guarded: an exception becomes a row with the error. A row
whose estimated cost exceeds the budget left (--budget-s) is written as skipped. The end prints a
one-screen summary (also: --summarize, from the JSONL of a run that was killed).

--rehearsal runs the same control flow on the CPU at tiny sizes (CPU clock instead of CUDA events,
no memory figures, torch.compile with the "eager" backend); TCESTIM_REHEARSAL_FAIL_ROWS=a,b makes
the rows whose names contain a or b raise ("oom:a" raises torch.OutOfMemoryError), for
tests/test_gpu_session.py.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
import traceback
from typing import Callable, Dict, List

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(1, os.path.dirname(HERE))  # the checkout, for an in-place (not installed) build
import peers  # noqa: E402  (benchmarks/ is not a package)
from report import Result, ratio, status  # noqa: E402

import tcestim  # noqa: E402
from tcestim.weights import estimator_log_weights  # noqa: E402

EXP_PER_CLOCK_PER_SM = 16
"""MUFU ex2 throughput per SM and clock (Hopper)."""
BACKWARD_FLOOR_FACTOR = 2.6 / 1.03
"""Forward+backward floor / forward floor at M = K = 8192, D = 64 (exp count of the two sweeps)."""
EAGER_CUBES = {"fwd": 4, "fwdbwd": 8}
"""(M, M, D) float32 cubes eager keeps alive at its peak (compile: half), rounded up."""

SIZES = {  # name -> GPU value, rehearsal value
    "op": ([(8192, 64), (8192, 10), (4096, 64), (4096, 10), (1024, 64), (1024, 10)], [(64, 8), (32, 3)]),
    "peers": ([(1024, 10), (1024, 64), (4096, 10), (4096, 64), (8192, 10), (8192, 64)], [(32, 3), (64, 8)]),
    "compile": ((8192, 64), (64, 8)),
    "large": ((65536, 64), (256, 8)),
    "exact": ((10_000, 737_280, 10), (200, 3000, 4)),
}
TARGET_MS = {(8192, 64, "fwd"): 1.5, (8192, 64, "fwdbwd"): 5.0}
"""The kernels' issue's targets (float32, stratified weights)."""
ESTIMATE_S = {"op": 3, "large": 20, "exact": 10, "fused": 3, "eager": 8, "keops": 30, "compile": 90}
"""Rough cost of one row (warm-up, compile, timed calls) used to skip rows that cannot finish."""


class Bench:
    def __init__(self, out_dir: str, budget_s: float, repeats: int, rehearsal: bool):
        self.rehearsal = rehearsal
        self.device = torch.device("cpu" if rehearsal else "cuda")
        self.repeats = repeats
        self.deadline = time.perf_counter() + budget_s
        self.jsonl = os.path.join(out_dir, "bench.jsonl")
        self.md = os.path.join(out_dir, "bench.md")
        self.fused_ms: Dict[tuple, float] = {}
        self.rows: List[Result] = []
        faults = os.environ.get("TCESTIM_REHEARSAL_FAIL_ROWS", "") if rehearsal else ""
        self.faults = [f.strip() for f in faults.split(",") if f.strip()]
        if rehearsal:
            self.meta = {"device": "CPU rehearsal", "sms": 132, "clock_ghz": 1.98, "clock": "assumed"}
        else:
            props = torch.cuda.get_device_properties(0)
            clock = getattr(props, "clock_rate", 0) / 1e6  # kHz -> GHz, where torch still reports it
            self.meta = {"device": props.name, "sms": props.multi_processor_count, "clock_ghz": clock or 1.98,
                         "clock": "read" if clock else "assumed (H100/H200 boost)"}
        self.meta.update(torch=torch.__version__, cuda=str(torch.version.cuda), python=platform.python_version(),
                         tcestim=tcestim.__version__, date=datetime.datetime.now().isoformat(timespec="seconds"))
        os.makedirs(out_dir, exist_ok=True)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps({"meta": self.meta}) + "\n")
        with open(self.md, "a") as f:
            f.write(f"# tcestim GPU benchmark\n\n{self.meta['device']}, {self.meta['sms']} SMs at "
                    f"{self.meta['clock_ghz']:.2f} GHz ({self.meta['clock']}); torch {self.meta['torch']} "
                    f"(CUDA {self.meta['cuda']}); "
                    f"Python {self.meta['python']}; {self.meta['date']}.\n\n"
                    "| row | M | K | D | mode | median ms | min ms | first call ms | peak MiB | "
                    "÷ floor or ÷ fused | note |\n|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---|\n")

    # --- timing --------------------------------------------------------------------------------

    def sync(self):
        if not self.rehearsal:
            torch.cuda.synchronize()

    def time_calls(self, call: Callable[[], object], repeats: int) -> Dict[str, float]:
        """First-call ms, median/min ms of the timed calls after two warm-ups, peak extra MiB."""
        self.sync()
        start = time.perf_counter()
        call()
        self.sync()
        first_ms = (time.perf_counter() - start) * 1e3
        for _ in range(2):
            call()
        times = []
        for _ in range(repeats):
            if self.rehearsal:
                begin = time.perf_counter()
                call()
                times.append((time.perf_counter() - begin) * 1e3)
            else:
                begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                begin.record()
                call()
                end.record()
                end.synchronize()
                times.append(begin.elapsed_time(end))
        out = {"first_ms": first_ms, "median_ms": statistics.median(times), "min_ms": min(times)}
        if not self.rehearsal:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            before = torch.cuda.memory_allocated()
            result = call()
            torch.cuda.synchronize()
            out["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
            del result
        return out

    # --- rows ----------------------------------------------------------------------------------

    def row(self, name: str, kind: str, M: int, K: int, D: int, mode: str,
            measure: Callable[[], Result]) -> Result:
        """Measures one row (guarded, within the budget) and writes it at once."""
        result: Result = {"row": name, "kind": kind, "M": M, "K": K, "D": D, "mode": mode}
        left = self.deadline - time.perf_counter()
        started = time.perf_counter()
        if left < ESTIMATE_S[kind]:
            result["skipped"] = f"budget: {left:.0f} s left, needs ~{ESTIMATE_S[kind]} s"
        else:
            try:
                for fault in self.faults:
                    if fault.startswith("oom:") and fault[4:] in name:
                        raise torch.OutOfMemoryError(f"injected out of memory in {name}")
                    if not fault.startswith("oom:") and fault in name:
                        raise RuntimeError(f"injected failure in {name}")
                result.update(measure())
            except torch.OutOfMemoryError as error:
                result["error"] = f"out of memory: {str(error).splitlines()[0][:120]}"
            except Exception as error:  # one failing implementation must not stop the run
                first = str(error).splitlines()[0][:160] if str(error) else ""
                result["error"] = f"{type(error).__name__}: {first}"
                traceback.print_exc()
            finally:
                if not self.rehearsal:
                    torch.cuda.empty_cache()
        result["elapsed_s"] = round(time.perf_counter() - started, 2)
        if kind == "fused" and "median_ms" in result:
            self.fused_ms[(M, D, mode)] = result["median_ms"]
        if kind in ("eager", "compile", "keops"):
            result["vs_fused"] = ratio(result.get("median_ms"), self.fused_ms.get((M, D, mode)))
        self.write(result)
        return result

    def write(self, r: Result):
        self.rows.append(r)
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(r) + "\n")
        relative = r.get("vs_fused") or (ratio(r.get("median_ms"), r["floor_ms"]) if "floor_ms" in r else "")
        note = status(r) or r.get("note", "")
        with open(self.md, "a") as f:
            f.write(f"| {r['row']} | {r['M']} | {r['K']} | {r['D']} | {r['mode']} | {_ms(r.get('median_ms'))} "
                    f"| {_ms(r.get('min_ms'))} | {_ms(r.get('first_ms'))} | {_mib(r.get('peak_mib'))} "
                    f"| {relative} | {note} |\n")
        print(f"  {r['row']:28s} {status(r) or _ms(r.get('median_ms')) + ' ms'}", flush=True)

    def inputs(self, M: int, D: int, requires_grad: bool, seed: int = 0):
        gen = torch.Generator(device=self.device).manual_seed(seed)
        mu = torch.randn(M, D, generator=gen, device=self.device)
        logvar = torch.rand(M, D, generator=gen, device=self.device) * -3.0
        z = mu + torch.randn(M, D, generator=gen, device=self.device) * torch.exp(0.5 * logvar)
        return [t.requires_grad_(requires_grad) for t in (z, mu, logvar)]

    def op_row(self, M: int, D: int, mode: str) -> Result:
        def measure() -> Result:
            weights = estimator_log_weights("stratified", M, peers.DATASET_SIZE)
            z, mu, logvar = self.inputs(M, D, mode == "fwdbwd")
            op = torch.ops.tcestim.mixture_logdensity

            def call():
                if mode == "fwd":
                    with torch.no_grad():
                        return op(z, mu, logvar, *weights)
                log_qz, log_qzd = op(z, mu, logvar, *weights)
                return torch.autograd.grad((log_qz - log_qzd.sum(1)).mean(), (z, mu, logvar))

            out = self.time_calls(call, self.repeats)
            exp_per_s = EXP_PER_CLOCK_PER_SM * self.meta["sms"] * self.meta["clock_ghz"] * 1e9
            out["floor_ms"] = M * M * D / exp_per_s * 1e3 * (1 if mode == "fwd" else BACKWARD_FLOOR_FACTOR)
            target = TARGET_MS.get((M, D, mode))
            if target is not None:
                out["note"] = f"target <= {target} ms: {'met' if out['median_ms'] <= target else 'MISSED'}"
            return out
        return self.row(f"op M{M} D{D} {mode}", "op", M, M, D, mode, measure)

    def large_row(self) -> Result:
        M, D = SIZES["large"][self.rehearsal]

        def measure() -> Result:
            weights = estimator_log_weights("stratified", M, peers.DATASET_SIZE)
            z, mu, logvar = self.inputs(M, D, True)

            def call():
                log_qz, log_qzd = torch.ops.tcestim.mixture_logdensity(z, mu, logvar, *weights)
                return torch.autograd.grad((log_qz - log_qzd.sum(1)).mean(), (z, mu, logvar))

            out = self.time_calls(call, max(3, self.repeats // 3))
            if "peak_mib" in out:
                kept = (M + M * D + 3 * M * D) * 4 / 2**20  # outputs and gradients
                out["note"] = f"{out['peak_mib'] - kept:.0f} MiB beyond outputs and gradients"
            return out
        return self.row(f"large M{M} D{D} fwdbwd", "large", M, M, D, "fwdbwd", measure)

    def exact_row(self) -> Result:
        M, N, D = SIZES["exact"][self.rehearsal]

        def measure() -> Result:
            z, mu, logvar = self.inputs(M, D, False, seed=1)
            mu_all, logvar_all, _ = self.inputs(N, D, False, seed=2)

            def call():
                with torch.no_grad():
                    return tcestim.decompose_exact(z, mu, logvar, mu_all, logvar_all, progress=False)
            return self.time_calls(call, 3)
        return self.row(f"exact M{M} N{N} D{D}", "exact", M, N, D, "fwd", measure)

    def peer_row(self, name: str, fn: Callable, M: int, D: int, mode: str) -> Result:
        def measure() -> Result:
            cube = M * M * D * 4
            cubes = EAGER_CUBES[mode] // (2 if name == "compile" else 1)
            if name in ("eager", "compile") and not self.rehearsal and \
                    cubes * cube > 0.9 * torch.cuda.get_device_properties(0).total_memory:
                return {"skipped": "cube does not fit"}
            z, mu, logvar = self.inputs(M, D, mode == "fwdbwd")

            def call():
                if mode == "fwd":
                    with torch.no_grad():
                        return fn(z, mu, logvar)
                value = fn(z, mu, logvar)
                return value, torch.autograd.grad(value, (z, mu, logvar))
            out = self.time_calls(call, self.repeats)
            with torch.no_grad():
                out["value"] = float(fn(z, mu, logvar))
            return out
        return self.row(f"{name} M{M} D{D} {mode}", name, M, M, D, mode, measure)


def _ms(value) -> str:
    if value is None:
        return "—"
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:.0f}"


def _mib(value) -> str:
    return "—" if value is None else f"{value:.0f}"


def compiled_peer(rehearsal: bool) -> Callable:
    if not rehearsal:
        return peers.make_compiled()
    torch._dynamo.reset()
    return torch.compile(peers.eager, dynamic=False, fullgraph=True, backend="eager")


def run(bench: Bench, wanted: List[str]) -> None:
    """Rows in priority order: the headline operator shape, the memory and exact rows, every peer at
    the compile shape (torch.compile there only), then the other operator and peer shapes."""
    g = bench.rehearsal
    op_shapes, peer_shapes = SIZES["op"][g], SIZES["peers"][g]
    compile_shape = SIZES["compile"][g]
    for mode in ("fwd", "fwdbwd"):
        bench.op_row(*op_shapes[0], mode)
    bench.large_row()
    bench.exact_row()
    names = [n for n in ("fused", "eager", "keops") if n in wanted]
    peer_order = [compile_shape] + [shape for shape in peer_shapes if shape != compile_shape]
    for i, (M, D) in enumerate(peer_order):
        for name in names:
            fn = peers.keops if name == "keops" else getattr(peers, name)
            for mode in ("fwd", "fwdbwd"):
                bench.peer_row(name, fn, M, D, mode)
        if i == 0:
            if "compile" in wanted:
                compile_rows(bench, M, D)
            for shape in op_shapes[1:]:
                for mode in ("fwd", "fwdbwd"):
                    bench.op_row(*shape, mode)


def compile_rows(bench: Bench, M: int, D: int) -> None:
    try:
        fn = compiled_peer(bench.rehearsal)
    except Exception as error:  # torch.compile unusable here: one row says so
        bench.write({"row": f"compile M{M} D{D}", "kind": "compile", "M": M, "K": M, "D": D, "mode": "fwd",
                     "error": f"{type(error).__name__}: {error}"})
        return
    for mode in ("fwd", "fwdbwd"):
        bench.peer_row("compile", fn, M, D, mode)


def summarize(path: str) -> str:
    """One screen: the headline rows, every failure, and counts."""
    meta, rows = {}, []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:  # a line cut by a kill
                continue
            if "meta" in obj:
                meta = obj["meta"]
            else:
                rows.append(obj)
    measured = [r for r in rows if "median_ms" in r]
    failed = [r for r in rows if "error" in r]
    skipped = [r for r in rows if "skipped" in r]
    lines = [f"benchmark: {meta.get('device', '?')}: {len(measured)} rows measured, {len(failed)} failed, "
             f"{len(skipped)} skipped"]
    first_op = next(((r["M"], r["D"]) for r in rows if r["kind"] == "op"), None)
    for r in rows:
        headline = r["kind"] in ("large", "exact", "compile") or (r["kind"] == "op" and (r["M"], r["D"]) == first_op)
        if headline or "error" in r:
            floor = ratio(r.get("median_ms"), r["floor_ms"]) + " floor" if "floor_ms" in r else ""
            extra = r.get("vs_fused") or floor
            shown = status(r) or _ms(r.get("median_ms")) + " ms"
            lines.append(f"  {r['row']:28s} {shown}  {extra}  {r.get('note', '')}".rstrip())
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--budget-s", type=float, default=240.0, help="rows that would end later are skipped")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--peers", default="fused,eager,compile,keops")
    parser.add_argument("--rehearsal", action="store_true", help="CPU stand-in at tiny sizes")
    parser.add_argument("--summarize", metavar="JSONL", help="print the summary of a (possibly killed) run")
    args = parser.parse_args(argv)
    if args.summarize:
        print(summarize(args.summarize))
        return 0
    if not args.rehearsal:
        if not torch.cuda.is_available():
            print("run_gpu.py: no CUDA device visible to torch", file=sys.stderr)
            return 2
        if not tcestim._extension.has_fused_kernel(torch.device("cuda")):
            print("run_gpu.py: tcestim has no CUDA kernel (build with TCESTIM_CUDA=1)", file=sys.stderr)
            return 2
    wanted = [p.strip() for p in args.peers.split(",") if p.strip()]
    if "keops" in wanted and not peers.keops_available():
        wanted.remove("keops")
    bench = Bench(args.out, args.budget_s, max(3 if args.rehearsal else 10, args.repeats), args.rehearsal)
    run(bench, wanted)
    print(summarize(bench.jsonl))
    return 0


if __name__ == "__main__":
    sys.exit(main())
