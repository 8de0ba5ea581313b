"""tcestim.experiments.sweep: a tiny sweep end to end, its table and plots, and resuming it."""
import json
import os
import subprocess
import sys

from tcestim.experiments import runs, sweep

TRAIN = ("--data pinwheel --latent-dim 2 --subsample 400 --batch-size 32 --eval-points 200 --steps 4 "
         "--eval-every 4")


def command(*args):
    return subprocess.run([sys.executable, "-m", "tcestim", *args], capture_output=True, text=True, timeout=600)


def test_a_tiny_sweep_end_to_end_and_resumed(tmp_path):
    out = command("sweep", "--objectives", "beta-vae", "beta-tcvae", "--betas", "1", "4", "--seeds", "0", "1",
                  "--out", str(tmp_path), "--train-args", TRAIN, "--no-progress")
    assert out.returncode == 0, out.stderr[-3000:]
    report = json.loads((tmp_path / "sweep.json").read_text())
    assert [(r["objective"], r["beta"], r["seeds"]) for r in report["rows"]] == [
        ("beta-tcvae", 1.0, 2), ("beta-tcvae", 4.0, 2), ("beta-vae", 1.0, 2), ("beta-vae", 4.0, 2)]
    cells = {(c["objective"], c["beta"], c["seed"]): c for c in report["cells"]}
    assert len(cells) == 8
    for row in report["rows"]:
        mine = [c for c in cells.values() if (c["objective"], c["beta"]) == (row["objective"], row["beta"])]
        assert abs(row["mig_chen"] - sum(c["mig_chen"] for c in mine) / 2) < 1e-12
        assert abs(row["elbo"] - sum(c["elbo"] for c in mine) / 2) < 1e-12
    text = (tmp_path / "sweep.md").read_text()
    assert "| beta-tcvae | 4 | 2 |" in text and "correlation of mean TC and mean MIG" in text
    for name in ("mig_vs_beta.png", "tc_vs_mig.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    checkpoint = tmp_path / "beta-vae-beta4-seed1" / "checkpoint.pt"
    before = checkpoint.stat().st_mtime_ns
    # a cell cut short (its checkpoint is from step 2 of 4) is continued; finished cells are read back
    half = tmp_path / "beta-tcvae-beta1-seed0"
    for name in os.listdir(half):
        os.remove(half / name)
    short = command("train", *TRAIN.replace("--steps 4", "--steps 2").split(),
                    "--objective", "beta-tcvae", "--beta", "1.0", "--seed", "0", "--out", str(half),
                    "--no-progress", "--no-plots")
    assert short.returncode == 0, short.stderr[-2000:]
    again = command("sweep", "--objectives", "beta-vae", "beta-tcvae", "--betas", "1", "4", "--seeds", "0", "1",
                    "--out", str(tmp_path), "--train-args", TRAIN, "--no-progress", "--no-plots")
    assert again.returncode == 0, again.stderr[-3000:]
    assert checkpoint.stat().st_mtime_ns == before                       # not rerun
    assert runs.load_checkpoint(str(half / "checkpoint.pt"))["step"] == 4  # continued to the end


def test_summary_statistics():
    results = {("beta-tcvae", 4.0, 0): {k: 1.0 for k in sweep.SUMMARY_KEYS},
               ("beta-tcvae", 4.0, 1): {k: 3.0 for k in sweep.SUMMARY_KEYS}}
    (row,) = sweep.summarise(results)
    assert row["mig_paper"] == 2.0 and abs(row["mig_paper_se"] - 1.0) < 1e-12
    assert sweep.correlation([1, 2, 3], [3, 2, 1]) == -1.0


def test_parallel_cells_give_the_sequential_results(tmp_path):
    grid = ["--objectives", "beta-tcvae", "--betas", "2", "--seeds", "0", "1", "--train-args",
            TRAIN + " --threads 1", "--no-progress", "--no-plots"]
    one = command("sweep", *grid, "--out", str(tmp_path / "one"))
    two = command("sweep", *grid, "--out", str(tmp_path / "two"), "--jobs", "2")
    assert one.returncode == 0 and two.returncode == 0, (one.stderr + two.stderr)[-3000:]
    cells = [{(c["objective"], c["beta"], c["seed"]): c for c in json.loads((tmp_path / name / "sweep.json")
                                                                            .read_text())["cells"]}
             for name in ("one", "two")]
    assert cells[0].keys() == cells[1].keys() and len(cells[0]) == 2
    for key, cell in cells[0].items():
        for metric in ("mig_paper", "tc", "elbo"):
            assert cell[metric] == cells[1][key][metric]   # same threads per cell: bitwise the same run


def test_the_table_compares_objectives_in_standard_errors():
    rows = sweep.summarise({("beta-vae", 4.0, 0): {"mig_paper": 0.1}, ("beta-vae", 4.0, 1): {"mig_paper": 0.2},
                            ("beta-tcvae", 4.0, 0): {"mig_paper": 0.3}, ("beta-tcvae", 4.0, 1): {"mig_paper": 0.4}})
    (line,) = sweep.comparisons(rows, ["beta-vae", "beta-tcvae"])
    # difference 0.2; each standard error 0.05, combined 0.0707: 2.8 standard errors
    assert "+0.200" in line and "+2.8 standard errors" in line
