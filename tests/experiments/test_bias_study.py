"""The estimator-bias study machinery on a tiny grid (the real study is `python -m tcestim bias`)."""
import csv
import math
import os
import subprocess
import sys

import pytest
import torch

from tcestim.experiments import bias_study
from tcestim.experiments.synthetic import make_posterior

TINY = bias_study.StudyConfig(rhos=(0.5,), noise_stds=(0.5,), dims=(1, 3), dataset_size=300,
                              batch_sizes=(32,), repeats=3, bank_size=64, exact_max_samples=2048)


def test_exact_truth_reaches_its_error_target_or_the_cap():
    g = torch.Generator().manual_seed(0)
    post = make_posterior(300, 3, rho=0.5, noise_std=0.5, generator=g)
    truth = bias_study.exact_truth(post, TINY, g)
    target = max(TINY.exact_relative_se * abs(truth.exact), TINY.exact_absolute_se)
    assert truth.exact_se <= target or truth.samples == TINY.exact_max_samples
    assert truth.exact_joint - truth.exact_marginal == pytest.approx(truth.exact, rel=1e-6)


def test_study_rows_summary_and_outputs(tmp_path):
    rows, truths = bias_study.run_study(TINY, progress=False)
    names = {r["estimator"] for r in rows}
    assert names == set(bias_study.ALL_ESTIMATORS)
    summary = bias_study.summarise(rows, truths)
    assert len(summary) == len(TINY.dims) * len(bias_study.ALL_ESTIMATORS)
    for s in summary:
        group = [r for r in rows if (r["D"], r["estimator"]) == (s["D"], s["estimator"])]
        paired = [r["tc"] - r["batch_exact"] for r in group]
        assert s["bias_exact"] == pytest.approx(sum(paired) / len(paired))
        assert s["bias_se"] >= 0.0
        if s["D"] == 1 and s["estimator"] in ("stratified", "mss", "bank", "mws"):
            assert abs(s["mean"]) < 1e-5  # TC of one dimension is zero (mws too: (D-1) log N = 0)
            assert abs(s["bias_exact"]) < 1e-5
        if not math.isnan(s["bias_joint"]):
            assert s["bias_exact"] == pytest.approx(s["bias_joint"] - s["bias_marginal"], abs=1e-6)
    hits, total = bias_study.bracket_coverage(summary)
    assert total == len(TINY.dims) and 0 <= hits <= total
    paths = bias_study.write_outputs(rows, truths, summary, TINY, str(tmp_path), 1.0)
    for p in paths:
        assert os.path.getsize(p) > 0
    with open(tmp_path / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == len(summary)
    assert "Bracket coverage" in (tmp_path / "summary.md").read_text()
    assert "bank+jackknife1" in (tmp_path / "headline.md").read_text()
    assert any(p.endswith(".png") for p in paths)


def test_bias_command_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "tcestim", "bias", "--quick", "--dims", "2", "--repeats", "2",
                          "--batch-sizes", "32", "--noise-stds", "0.5", "--no-progress", "--out", str(tmp_path)],
                         capture_output=True, text=True, check=True, timeout=300).stdout
    assert "bracket contains the exact TC" in out
    assert (tmp_path / "summary.md").exists() and (tmp_path / "rows.csv").exists()
