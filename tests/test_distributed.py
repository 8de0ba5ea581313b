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


def _outcomes(worker, case, tmp_path):
    """What each of 2 gloo ranks running ``worker(case)`` wrote (see distributed_worker._record)."""
    mp.spawn(worker, args=(2, case, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    return [(tmp_path / f"{rank}.txt").read_text() for rank in range(2)]


@pytest.mark.parametrize("case, expected", [
    ("dim", "the ranks disagree on D: rank 0 has 3, rank 1 has 4"),
    ("dtype", "the ranks disagree on dtype: rank 0 has torch.float64, rank 1 has torch.float32"),
    ("dataset_size", "the ranks disagree on dataset_size: rank 0 has 200, rank 1 has 100"),
    ("invalid", "invalid inputs on 1 of 2 ranks (rank 1: ValueError: logvar must have the shape of z"),
    ("grad", "the ranks disagree on whether mu/logvar need gradients: rank 0 has True, rank 1 has False"),
])
def test_ranks_that_disagree_all_raise_the_same_error(case, expected, tmp_path):
    outcomes = _outcomes(distributed_worker.agreement, case, tmp_path)
    assert outcomes[0] == outcomes[1], outcomes
    assert outcomes[0].startswith("ValueError tcestim.distributed:") and expected in outcomes[0]


def test_a_rank_with_an_empty_batch_takes_part(tmp_path):
    empty, full = _outcomes(distributed_worker.agreement, "empty", tmp_path)
    assert empty.startswith("ok ") and full.startswith("ok ")
    assert empty.split()[1] == full.split()[1]           # the same global value on both ranks
    assert "grad (0, 3)" in empty and "grad (4, 3)" in full
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 3, generator=g).double()
    single = tcestim.total_correlation(z, z + 0.1, torch.zeros(4, 3, dtype=torch.float64), dataset_size=100)
    assert float(full.split()[1]) == pytest.approx(float(single), abs=1e-12)


@pytest.mark.parametrize("case, expected", [
    ("bank_kind", "the ranks disagree on bank kind: rank 0 has none, rank 1 has DatasetBank"),
    ("duplicates", "the global batch's dataset indices must be distinct"),
    ("update_indices", "invalid inputs on 1 of 2 ranks (rank 1: ValueError: indices must be distinct"),
])
def test_banks_across_ranks_fail_together(case, expected, tmp_path):
    outcomes = _outcomes(distributed_worker.bank_agreement, case, tmp_path)
    assert outcomes[0] == outcomes[1], outcomes
    assert outcomes[0].startswith("ValueError") and expected in outcomes[0]
