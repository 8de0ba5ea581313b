"""Rehearsal of scripts/gpu_paper.sh (the GPU protocol of the paper reproduction) on the CPU, with a
tiny set-up: the files the device tool brings back, and that a second call reads finished cells back."""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("--device cpu --data sprites --model mlp --image-size 16 --subsample 400 --latent-dim 3 --batch-size 32 "
        "--steps 4 --eval-every 2 --eval-points 200 --no-plots")


def rehearse(out, runs):
    env = {**os.environ, "OUT": str(out), "PAPER_RUNS": str(runs), "PAPER_TRAIN_ARGS": TINY, "PAPER_S": "300",
           "PYTHON": sys.executable}
    return subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_paper.sh")], env=env, capture_output=True,
                          text=True, timeout=600)


def test_gpu_paper_script_rehearsed_on_the_cpu(tmp_path):
    out, runs = tmp_path / "out", tmp_path / "runs"
    done = rehearse(out, runs)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    names = {p.name for p in out.iterdir()}
    assert names == {"paper.log", "sweep.md", "sweep.json", "mig_vs_beta.png", "tc_vs_mig.png",
                     "beta-vae-beta6-seed0.jsonl", "beta-tcvae-beta6-seed0.jsonl"}
    assert len(names) <= 8  # what the device tool returns
    cells = json.loads((out / "sweep.json").read_text())["cells"]
    assert {(c["objective"], c["beta"], c["seed"]) for c in cells} == {("beta-vae", 6.0, 0), ("beta-tcvae", 6.0, 0)}
    steps = [json.loads(line)["step"] for line in (out / "beta-tcvae-beta6-seed0.jsonl").read_text().splitlines()]
    assert steps == [2, 4]
    checkpoint = runs / "beta-tcvae-beta6-seed0" / "checkpoint.pt"
    before = checkpoint.stat().st_mtime_ns
    again = rehearse(out, runs)
    assert again.returncode == 0, again.stdout[-3000:]
    assert checkpoint.stat().st_mtime_ns == before   # finished cells are read back, not rerun
