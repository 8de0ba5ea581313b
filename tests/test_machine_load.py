"""benchmarks/machine_load.py: other processes' CPU during a block, this process's own left out."""
import os
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
from machine_load import OthersCpu  # noqa: E402

pytestmark = pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="reads Linux /proc/stat")

BUSY = "import time\nend = time.monotonic() + {s}\nwhile time.monotonic() < end: pass\n"


def test_a_busy_process_that_is_not_ours_counts():
    """A process this one neither is nor has waited for keeps a core busy: about one core."""
    child = subprocess.Popen([sys.executable, "-c", BUSY.format(s=3.0)])
    try:
        time.sleep(0.5)  # past its start-up
        with OthersCpu() as others:
            time.sleep(1.5)
    finally:
        child.kill()
        child.wait()
    assert others.cores > 0.5


def test_this_process_and_its_waited_children_do_not_count():
    """Busy work here and in a child waited for inside the block: neither is another's."""
    with OthersCpu() as others:
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            pass
        subprocess.run([sys.executable, "-c", BUSY.format(s=1.0)], check=True)
    assert others.cores < 0.5
