"""Global-batch estimation with torch.distributed: 2 and 3 gloo processes, uneven batch sizes.

Values and gradients of tcestim.distributed.* must equal the single-process computation on the
concatenated batch (float64), for every estimator, with a memory bank and with the jackknife.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import tcestim
import tcestim.distributed

import distributed_worker


@pytest.mark.parametrize("sizes", [(5, 3), (4, 6, 2)], ids=["2-ranks", "3-ranks-uneven"])
def test_global_batch_matches_single_process(sizes, tmp_path):
    mp.spawn(distributed_worker.run, args=(len(sizes), list(sizes), str(tmp_path / "init")),
             nprocs=len(sizes), join=True)


def test_error_without_process_group():
    assert not dist.is_initialized()
    x = torch.randn(4, 2)
    with pytest.raises(RuntimeError, match="needs an initialised process group"):
        tcestim.distributed.total_correlation(x, x, x)
    with pytest.raises(RuntimeError, match="needs an initialised process group"):
        tcestim.distributed.decompose(x, x, x)


def test_example_script_runs_under_torchrun():
    import subprocess
    import sys

    script = os.path.join(os.path.dirname(__file__), "..", "examples", "distributed_tc.py")
    out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          script], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "global-batch TC" in out.stdout
