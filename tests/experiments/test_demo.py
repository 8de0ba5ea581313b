"""tcestim.experiments.demo through the command line: one table row per dimension, one column per estimator."""
import subprocess
import sys

ESTIMATORS = ("stratified", "mss", "mws", "mss-legacy")


def test_demo_command_prints_every_estimator():
    out = subprocess.run([sys.executable, "-m", "tcestim", "demo", "--quick"], capture_output=True,
                         text=True, check=True, timeout=300).stdout
    header = next(line for line in out.splitlines() if line.startswith("| D"))
    for column in ("gaussian", "exact", *ESTIMATORS):
        assert column in header
    rows = [line for line in out.splitlines() if line.startswith("| 2 ") or line.startswith("| 4 ")]
    assert len(rows) == 2
