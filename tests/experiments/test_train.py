"""The training and evaluation commands on tiny runs (files, metrics, reproducible evaluation)."""
import json
import subprocess
import sys

import pytest

from tcestim.experiments import train


def tiny_args(tmp_path, **overrides):
    parser = __import__("argparse").ArgumentParser()
    train.add_train_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--no-progress"])
    for key, value in overrides.items():
        setattr(args, key, value)
    return args


@pytest.mark.parametrize("objective", train.OBJECTIVES)
def test_pinwheel_training_writes_everything(tmp_path, objective):
    args = tiny_args(tmp_path, data="pinwheel", latent_dim=2, steps=6, eval_every=3, eval_points=300,
                     batch_size=32, objective=objective, subsample=600, beta=2.0, eta=0.1, alpha=0.5)
    final = train.train(args)
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [3, 6]
    for key in ("mi", "tc", "dimkl", "mig_chen", "mig_discrete", "loss"):
        assert key in final
    assert final["mi"] + final["tc"] + final["dimkl"] > 0  # the KL of q(z|x) to the prior is positive on average
    for name in ("checkpoint.pt", "curves.png", "mi_matrix.png", "traversals.png"):
        assert (tmp_path / name).stat().st_size > 0


def test_evaluate_checkpoint_reproduces_the_final_evaluation(tmp_path):
    args = tiny_args(tmp_path, data="pinwheel", latent_dim=2, steps=4, eval_every=4, eval_points=300,
                     batch_size=32, subsample=600, no_plots=True)
    final = train.train(args)
    again = train.evaluate_checkpoint(str(tmp_path / "checkpoint.pt"))
    for key in ("mi", "tc", "dimkl", "mig_chen", "mig_discrete"):
        assert again[key] == pytest.approx(final[key], rel=1e-5, abs=1e-7)


def test_sprites_training_with_a_prior_and_the_command_line(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "tcestim", "train", "--data", "sprites", "--image-size", "32", "--subsample", "400",
         "--steps", "3", "--eval-every", "3", "--eval-points", "200", "--batch-size", "16", "--latent-dim", "4",
         "--prior", "student-t", "--model", "mlp", "--no-progress", "--out", str(tmp_path)],
        capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert '"mig_chen"' in out.stdout and '"mig_paper"' in out.stdout and '"elbo"' in out.stdout
    result = subprocess.run([sys.executable, "-m", "tcestim", "evaluate", str(tmp_path / "checkpoint.pt")],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout)["step"] == 3
