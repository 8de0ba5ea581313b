"""The training and evaluation commands on tiny runs (files, metrics, reproducible evaluation)."""
import json
import subprocess
import sys

import pytest
import torch

from tcestim.experiments import train
from tcestim.testing import devices


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


def test_device_and_factor_strides_are_checked(tmp_path, capsys):
    parser = __import__("argparse").ArgumentParser()
    train.add_train_arguments(parser)
    bad = ["--device", "tpu"] if torch.cuda.is_available() else ["--device", "cuda"]
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(bad)
    assert stop.value.code == 2 and "--device" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        parser.parse_args(["--factor-strides", "1", "1", "2", "0", "2"])
    assert stop.value.code == 2 and "--factor-strides" in capsys.readouterr().err
    args = tiny_args(tmp_path, factor_strides=[1, 1, 2, 2, 2], subsample=1000, steps=1)
    with pytest.raises(SystemExit, match="--factor-strides"):
        train.train(args)


def test_factor_strides_train_on_the_subgrid(tmp_path):
    args = tiny_args(tmp_path, image_size=16, factor_strides=[3, 6, 8, 4, 4], model="mlp", latent_dim=3, steps=2,
                     eval_every=2, eval_points=120, batch_size=16, no_plots=True)
    data = train.build_data(args)
    assert len(data) == 1 * 1 * 5 * 8 * 8
    final = train.train(args)
    # shape and scale are constant on this grid: MIG is over orientation, x and y only
    assert final["factor_names"] == ["orientation", "pos_x", "pos_y"]


@pytest.mark.parametrize("device", devices())
def test_training_on_a_device_and_evaluating_anywhere(tmp_path, device):
    """The run on ``device`` (model, rendered batches, bank, estimator), then its checkpoint evaluated on
    the CPU: the evaluation draws its samples on the CPU, so both agree up to rounding."""
    args = tiny_args(tmp_path, data="sprites", image_size=16, subsample=600, model="mlp", latent_dim=3, steps=4,
                     eval_every=2, eval_points=200, batch_size=32, bank="dataset", bank_refresh=40, device=device,
                     no_plots=True)
    final = train.train(args)
    again = train.evaluate_checkpoint(str(tmp_path / "checkpoint.pt"), device="cpu")
    for key in ("mi", "tc", "dimkl", "elbo", "mig_paper"):
        assert again[key] == pytest.approx(final[key], rel=1e-4, abs=1e-5)
    resumed = __import__("argparse").Namespace(**{**vars(args), "resume": True, "steps": 6})
    assert train.train(resumed)["step"] == 6
