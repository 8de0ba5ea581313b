"""Table cells shared by run_cpu.py and run_gpu.py (benchmarks/ is not a package)."""
from __future__ import annotations

from typing import Dict, Optional

Result = Dict[str, object]
"""One measured configuration: peer, M, D, timings, memory, or 'skipped' / 'error'."""


def ratio(value, reference) -> str:
    """'2.5x' for value / reference, '—' where either is missing."""
    if value is None or reference is None:
        return "—"
    return f"{value / reference:.1f}x"


def status(result: Result) -> Optional[str]:
    """Why a configuration has no numbers ('skipped (...)', 'failed: ...'), or None."""
    if "skipped" in result:
        return f"skipped ({result['skipped']})"
    if "error" in result:
        return f"failed: {result['error']}"
    return None
