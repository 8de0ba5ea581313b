"""How busy other processes kept this machine while a benchmark ran (Linux /proc/stat; no torch).

    with OthersCpu() as others:
        ...                      # the measurement
    others.cores                 # average number of cores others kept busy meanwhile

The 1-minute load average is no substitute: on some virtual machines it reads 5-50 with nothing
running, and it counts the benchmark's own processes.
"""
from __future__ import annotations

import os
import time


class OthersCpu:
    """Average number of cores that other processes kept busy while the block ran: the machine's busy
    CPU time from /proc/stat, less this process's and its waited-for children's."""

    @staticmethod
    def _busy_s() -> float:
        with open("/proc/stat") as stat:
            fields = [int(x) for x in stat.readline().split()[1:]]
        idle = fields[3] + fields[4]  # idle + iowait
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own_s() -> float:
        t = os.times()
        return t.user + t.system + t.children_user + t.children_system

    def __enter__(self) -> "OthersCpu":
        self.start = (time.monotonic(), self._busy_s(), self._own_s())
        return self

    def __exit__(self, *exc) -> None:
        wall, busy, own = (now - then for now, then in
                           zip((time.monotonic(), self._busy_s(), self._own_s()), self.start))
        self.cores = max(busy - own, 0.0) / wall
