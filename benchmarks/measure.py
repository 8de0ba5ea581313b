"""Measure one benchmark configuration (one peer at one size) in the current process.

Run as a script it measures the configuration given on the command line and prints one JSON line,
so that ``run_cpu.py`` can give every configuration a fresh process (its own peak RSS, no compiled
graphs or allocator caches left over from other configurations):

    python benchmarks/measure.py --peer eager --m 1024 --d 32
    python benchmarks/measure.py --peer fused --m 2048 --d 32 --isa avx2

Timings are medians of a few repeats after one warm-up call (which is where torch.compile compiles).
Peak memory is the rise of the process's peak resident set (Linux ``VmHWM``) over the resident set
just before one call, with the high-water mark reset (``/proc/self/clear_refs``) and freed heap
returned to the OS (``malloc_trim``) first: the extra memory one call needs, whatever allocates it.
"""
from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import statistics
import sys
import time
from typing import Callable, Dict, Optional

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import peers  # noqa: E402  (benchmarks/ is not a package)

MIN_REPEATS = 3
MAX_REPEATS = 7
TIME_BUDGET_S = 3.0
"""Timed calls stop after MIN_REPEATS once they have used TIME_BUDGET_S, else at MAX_REPEATS."""


def make_inputs(M: int, D: int, *, seed: int = 0, dtype=torch.float32):
    """A batch of M encodings: z, mu, logvar, each (M, D), with z[i] ~ N(mu[i], exp(logvar[i]))."""
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(M, D, generator=gen, dtype=dtype)
    logvar = torch.empty(M, D, dtype=dtype).uniform_(-3.0, 0.0, generator=gen)
    z = mu + torch.randn(M, D, generator=gen, dtype=dtype) * torch.exp(0.5 * logvar)
    return z, mu, logvar


# --- memory -------------------------------------------------------------------------------------

def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} missing from /proc/self/status")


def peak_memory_supported() -> bool:
    """True where the peak RSS can be read and reset (Linux /proc)."""
    try:
        _status_kib("VmHWM")
        with open("/proc/self/clear_refs", "w") as clear:
            clear.write("5")
    except OSError:
        return False
    return True


def _release_free_memory() -> None:
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: freed heap may stay resident (numbers err low)
        pass


def peak_extra_mib(call: Callable[[], object]) -> Optional[float]:
    """MiB by which one ``call()`` raises the peak resident set above the current one."""
    if not peak_memory_supported():
        return None
    _release_free_memory()
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset VmHWM to the current VmRSS
    baseline = _status_kib("VmRSS")
    result = call()
    peak = _status_kib("VmHWM")
    del result
    return max(peak - baseline, 0) / 1024.0


# --- time ---------------------------------------------------------------------------------------

def median_seconds(call: Callable[[], object]) -> float:
    """Median wall time of MIN_REPEATS..MAX_REPEATS calls (no warm-up here)."""
    times = []
    while len(times) < MAX_REPEATS:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
        if len(times) >= MIN_REPEATS and sum(times) >= TIME_BUDGET_S:
            break
    return statistics.median(times)


# --- one configuration --------------------------------------------------------------------------

def measure(peer_name: str, M: int, D: int, *, isa: Optional[str] = None,
            flush_denormal: bool = False) -> Dict[str, object]:
    """Forward and forward+backward time (ms, median) and peak extra memory (MiB) of one peer.

    Forward runs on inputs that do not require grad; forward+backward differentiates the scalar
    TC with respect to z, mu and logvar (as a VAE's training step does through the encoder).
    """
    if isa is not None:
        import tcestim
        tcestim.set_cpu_isa(isa)
    if flush_denormal and not torch.set_flush_denormal(True):
        raise RuntimeError("this CPU cannot flush denormals")
    peer = peers.get_peer(peer_name)
    z, mu, logvar = make_inputs(M, D)
    leaves = [t.clone().requires_grad_() for t in (z, mu, logvar)]

    def forward():
        return peer(z, mu, logvar)

    def forward_backward():
        for leaf in leaves:
            leaf.grad = None
        peer(*leaves).backward()

    start = time.perf_counter()
    forward()            # warm-up; torch.compile compiles the inference graph here
    forward_backward()   # ... and the training graph here
    warmup_s = time.perf_counter() - start

    return {
        "peer": peer_name, "M": M, "D": D, "isa": isa, "flush_denormal": flush_denormal,
        "threads": torch.get_num_threads(),
        "warmup_s": warmup_s,
        "fwd_peak_mib": peak_extra_mib(forward),
        "fwdbwd_peak_mib": peak_extra_mib(forward_backward),
        "fwd_ms": 1e3 * median_seconds(forward),
        "fwdbwd_ms": 1e3 * median_seconds(forward_backward),
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--peer", required=True, choices=("eager", "compile", "fused", "keops"))
    parser.add_argument("--m", type=int, required=True, help="batch size M (= K)")
    parser.add_argument("--d", type=int, required=True, help="latent dimensions D")
    parser.add_argument("--isa", default=None, help="tcestim.set_cpu_isa before measuring")
    parser.add_argument("--flush-denormal", action="store_true",
                        help="torch.set_flush_denormal(True) before measuring")
    args = parser.parse_args(argv)
    result = measure(args.peer, args.m, args.d, isa=args.isa, flush_denormal=args.flush_denormal)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
