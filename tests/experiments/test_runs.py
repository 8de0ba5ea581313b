"""Run folders, files and checkpoints (tcestim.experiments.runs) and what the commands do with them:
refuse to overwrite, write atomically, resume exactly, load safely, validate sizes up front, stop a
diverged run, survive a dead unit."""
import argparse
import json
import os
import pickle
import subprocess
import sys

import pytest
import torch

import tcestim
from tcestim.experiments import runs, train

TINY = ["--data", "pinwheel", "--latent-dim", "2", "--subsample", "600", "--batch-size", "32", "--eval-points",
        "300", "--no-progress", "--no-plots"]


def command(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "tcestim", *args], capture_output=True, text=True, timeout=timeout)


def parsed(tmp_path, *extra):
    parser = argparse.ArgumentParser()
    train.add_train_arguments(parser)
    return parser.parse_args([*TINY, "--out", str(tmp_path), *extra])


# ----------------------------------------------------------------------------------------------
# files


def test_prepare_output_refuses_a_non_empty_folder(tmp_path):
    runs.prepare_output(str(tmp_path / "new"))
    assert (tmp_path / "new").is_dir()
    (tmp_path / "new" / "result.csv").write_text("precious")
    with pytest.raises(SystemExit, match="is not empty; pass --resume"):
        runs.prepare_output(str(tmp_path / "new"))
    assert (tmp_path / "new" / "result.csv").read_text() == "precious"
    runs.prepare_output(str(tmp_path / "new"), resume=True)
    assert (tmp_path / "new" / "result.csv").exists()
    with pytest.raises(SystemExit, match="--overwrite deletes only what this command writes, but .* result.csv"):
        runs.prepare_output(str(tmp_path / "new"), overwrite=True, owned=("checkpoint.pt", "*.png"))
    assert (tmp_path / "new" / "result.csv").read_text() == "precious"
    runs.prepare_output(str(tmp_path / "new"), overwrite=True, owned=("result.csv",))
    assert os.listdir(tmp_path / "new") == []
    with pytest.raises(SystemExit, match="needs an existing run"):
        runs.prepare_output(str(tmp_path / "missing"), resume=True)
    with pytest.raises(SystemExit, match="exclude each other"):
        runs.prepare_output(str(tmp_path / "new"), resume=True, overwrite=True)


def test_atomic_write_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "checkpoint.pt"
    runs.atomic_write_text(str(path), "good")

    def fails_halfway(f):
        f.write("half of the new ")
        raise OSError("No space left on device")

    with pytest.raises(OSError, match="No space left"):
        runs.atomic_write(str(path), fails_halfway)
    assert path.read_text() == "good"
    assert os.listdir(tmp_path) == ["checkpoint.pt"]  # no temporary file left behind


def test_read_json_lines_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert runs.read_json_lines(str(path)) == [{"step": 1}, {"step": 2}]
    assert runs.read_json_lines(str(tmp_path / "none.jsonl")) == []


# ----------------------------------------------------------------------------------------------
# checkpoints


class _RunsCode:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["missing", "empty", "truncated", "garbage", "not_tcestim", "other_version", "code"])
def test_load_checkpoint_refuses_what_it_cannot_trust(tmp_path, kind):
    good = tmp_path / "good.pt"
    runs.save_checkpoint({"step": 1, "model": {"w": torch.ones(3)}}, str(good))
    path = tmp_path / "bad.pt"
    marker = tmp_path / "code-ran"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif kind == "garbage":
        path.write_bytes(os.urandom(300))
    elif kind == "not_tcestim":
        torch.save({"model": {"w": torch.ones(3)}}, str(path))
    elif kind == "other_version":
        torch.save({"format": runs.CHECKPOINT_FORMAT, "version": 1, "model": {}}, str(path))
    elif kind == "code":
        payload = _RunsCode()
        payload.marker = str(marker)
        with open(path, "wb") as f:
            pickle.dump({"format": runs.CHECKPOINT_FORMAT, "version": runs.CHECKPOINT_VERSION, "x": payload}, f,
                        protocol=2)
    expected = {"missing": "no checkpoint", "empty": "is empty", "truncated": "not a readable",
                "garbage": "not a readable", "not_tcestim": "not a tcestim checkpoint",
                "other_version": "version 1 tcestim checkpoint", "code": "not a readable"}[kind]
    with pytest.raises(runs.CheckpointError, match=expected):
        runs.load_checkpoint(str(path))
    assert not marker.exists()
    assert runs.load_checkpoint(str(good))["step"] == 1


def test_evaluate_command_reports_a_bad_checkpoint_clearly(tmp_path):
    path = tmp_path / "checkpoint.pt"
    path.write_bytes(b"not a checkpoint")
    out = command("evaluate", str(path))
    assert out.returncode == 1
    assert "error:" in out.stderr and "not a readable weights-only torch file" in out.stderr
    assert "Traceback" not in out.stderr


# ----------------------------------------------------------------------------------------------
# arguments checked when the command line is read


@pytest.mark.parametrize("flags, message", [
    (["--steps", "0"], "argument --steps: must be >= 1, got 0"),
    (["--batch-size", "1"], "argument --batch-size: must be >= 2, got 1"),
    (["--eval-every", "0"], "argument --eval-every: must be >= 1, got 0"),
    (["--eval-points", "1"], "argument --eval-points: must be >= 2, got 1"),
    (["--latent-dim", "-3"], "argument --latent-dim: must be >= 1, got -3"),
    (["--steps", "ten"], "argument --steps: expected an integer, got 'ten'"),
    (["--lr", "0"], "argument --lr: must be in (0.0, inf], got 0"),
    (["--beta", "nan"], "argument --beta: must be in [0.0, inf], got nan"),
    (["--estimator", "bogus"], "argument --estimator: invalid choice"),
])
def test_train_rejects_bad_sizes_before_doing_anything(tmp_path, flags, message):
    out = command("train", *TINY, "--out", str(tmp_path / "run"), *flags)
    assert out.returncode == 2
    assert message in out.stderr
    assert not (tmp_path / "run").exists()


def test_train_rejects_a_batch_larger_than_the_data(tmp_path):
    out = command("train", *TINY, "--batch-size", "700", "--out", str(tmp_path / "run"))
    assert out.returncode != 0 and "--batch-size 700 is larger than the data set (600 points)" in out.stderr


@pytest.mark.parametrize("flags, message", [
    (["--repeats", "0"], "argument --repeats: must be >= 2, got 0"),
    (["--dims", "0"], "argument --dims: must be >= 1, got 0"),
    (["--rho", "1.5"], "argument --rho: must be in [0.0, 1.0], got 1.5"),
])
def test_demo_rejects_bad_sizes(flags, message):
    out = command("demo", "--quick", *flags)
    assert out.returncode == 2 and message in out.stderr


def test_demo_quick_keeps_explicit_options():
    from tcestim.experiments import demo
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = demo.resolve(parser.parse_args(["--quick", "--dims", "3", "--repeats", "7"]))
    assert args.dims == [3] and args.repeats == 7                   # given: kept
    assert args.dataset_size == demo.QUICK["dataset_size"]          # not given: --quick's
    full = demo.resolve(parser.parse_args([]))
    assert full.dims == demo.FULL["dims"] and full.repeats == demo.FULL["repeats"]


def test_bias_refuses_a_non_empty_output_folder(tmp_path):
    (tmp_path / "summary.md").write_text("a finished study")
    out = command("bias", "--quick", "--out", str(tmp_path), "--no-progress")
    assert out.returncode != 0 and "is not empty" in out.stderr
    assert (tmp_path / "summary.md").read_text() == "a finished study"


# ----------------------------------------------------------------------------------------------
# training runs


def test_rerunning_into_a_finished_run_is_refused_and_overwrite_replaces_it(tmp_path):
    train.train(parsed(tmp_path, "--steps", "2", "--eval-every", "2"))
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit, match="is not empty"):
        train.train(parsed(tmp_path, "--steps", "2", "--eval-every", "2"))
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    train.train(parsed(tmp_path, "--steps", "2", "--eval-every", "2", "--overwrite", "--seed", "5"))
    assert runs.load_checkpoint(str(tmp_path / "checkpoint.pt"))["args"]["seed"] == 5


def test_resume_continues_exactly_where_the_run_stopped(tmp_path):
    straight = tmp_path / "straight"
    final = train.train(parsed(straight, "--steps", "6", "--eval-every", "3"))
    split = tmp_path / "split"
    train.train(parsed(split, "--steps", "3", "--eval-every", "3"))
    with open(split / "metrics.jsonl", "a") as f:
        f.write('{"step": 6, "loss": 1.0, "torn')   # a write cut short by a kill
    resumed = train.train(parsed(split, "--steps", "6", "--eval-every", "3", "--resume"))
    assert resumed["loss"] == final["loss"]
    for key in ("mi", "tc", "dimkl", "mig_chen"):
        assert resumed[key] == final[key]
    a = runs.load_checkpoint(str(straight / "checkpoint.pt"))
    b = runs.load_checkpoint(str(split / "checkpoint.pt"))
    assert a["step"] == b["step"] == 6
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    lines = [json.loads(line) for line in (split / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [3, 6]


def test_resume_refuses_a_changed_objective(tmp_path):
    train.train(parsed(tmp_path, "--steps", "2", "--eval-every", "2"))
    out = command("train", *TINY, "--out", str(tmp_path), "--resume", "--steps", "4", "--beta", "2")
    assert out.returncode != 0 and "--beta 2.0 differs from the run being resumed (6.0)" in out.stderr
    out = command("train", *TINY, "--out", str(tmp_path), "--resume", "--steps", "4", "--eval-every", "2")
    assert out.returncode == 0, out.stderr[-2000:]
    assert runs.load_checkpoint(str(tmp_path / "checkpoint.pt"))["step"] == 4


def test_resume_without_a_checkpoint_says_so(tmp_path):
    (tmp_path / "notes.txt").write_text("not a run")
    out = command("train", *TINY, "--out", str(tmp_path), "--resume")
    assert out.returncode == 1 and "cannot resume: no checkpoint" in out.stderr


def test_epoch_sampler_draws_distinct_points_and_restores_exactly():
    sampler = train.EpochSampler(10, 3, seed=0)
    epoch = [sampler.next() for _ in range(3)]
    assert all(len(set(b.tolist())) == 3 for b in epoch)
    assert len(set(torch.cat(epoch).tolist())) == 9            # no point twice within an epoch
    saved = sampler.state_dict()
    ahead = [sampler.next() for _ in range(5)]                  # crosses into the next epochs
    assert sampler.epoch >= 1
    again = train.EpochSampler(10, 3, seed=123)
    again.load_state_dict(saved)
    assert all(torch.equal(x, y) for x, y in zip(ahead, [again.next() for _ in range(5)]))


def test_training_batches_have_no_repeated_points(tmp_path, monkeypatch):
    seen = []
    original = train.EpochSampler.next

    def record(self):
        batch = original(self)
        seen.append(batch)
        return batch

    monkeypatch.setattr(train.EpochSampler, "next", record)
    train.train(parsed(tmp_path, "--steps", "25", "--eval-every", "25", "--batch-size", "64"))
    assert len(seen) == 25 and all(len(set(b.tolist())) == 64 for b in seen)


def test_a_diverged_run_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    real = train.objective
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        result = real(*args, **kwargs)
        return result._replace(loss=result.loss * float("nan")) if calls["n"] == 5 else result

    monkeypatch.setattr(train, "objective", poisoned)
    with pytest.raises(runs.TrainingDiverged, match=r"the loss is nan at step 5.*step 3\) is kept"):
        train.train(parsed(tmp_path, "--steps", "9", "--eval-every", "3"))
    state = runs.load_checkpoint(str(tmp_path / "checkpoint.pt"))
    assert state["step"] == 3
    assert all(torch.isfinite(t).all() for t in state["model"].values())
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [3]


def test_evaluation_survives_a_dead_unit(tmp_path):
    args = parsed(tmp_path, "--steps", "1")
    args.eval_points = 300
    data = train.build_data(args)
    model = train.build_model(args)
    with torch.no_grad():
        last = [m for m in model.encoder.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight[0].zero_()          # mu_0 is the constant bias: a collapsed latent
        last.bias[0] = 0.25
    result = train.evaluate(model, data, args, None, torch.Generator().manual_seed(0))
    for key in ("mi", "tc", "dimkl", "mig_chen", "mig_discrete", "tc_of_means"):
        assert result[key] == result[key], key  # not NaN


def test_plots_without_matplotlib_fail_before_training(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    args = parsed(tmp_path / "run", "--steps", "2")
    args.no_plots = False
    with pytest.raises(SystemExit, match="plots need matplotlib"):
        train.train(args)
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("bank", ["fifo", "dataset", "dataset-refresh"])
def test_training_with_a_bank_resumes_exactly(tmp_path, bank):
    flags = ["--bank", bank.split("-")[0], "--bank-size", "200", "--eval-every", "3"]
    if bank == "dataset-refresh":
        flags += ["--bank-refresh", "100"]
    final = train.train(parsed(tmp_path / "straight", "--steps", "6", *flags))
    train.train(parsed(tmp_path / "split", "--steps", "3", *flags))
    state = runs.load_checkpoint(str(tmp_path / "split" / "checkpoint.pt"))
    assert state["bank"] is not None and len(state["bank"]["mu"]) == (96 if bank == "fifo" else 600)
    resumed = train.train(parsed(tmp_path / "split", "--steps", "6", "--resume", *flags))
    assert resumed["loss"] == final["loss"] and resumed["tc"] == final["tc"]


def test_bank_options_are_checked(tmp_path):
    out = command("train", *TINY, "--out", str(tmp_path / "a"), "--bank", "fifo", "--bank-size", "600")
    assert out.returncode != 0
    assert "--batch-size + --bank-size (632) must fit in the data set (600 points)" in out.stderr
    out = command("train", *TINY, "--out", str(tmp_path / "r"), "--bank-refresh", "10")
    assert out.returncode != 0 and "--bank-refresh is for --bank dataset" in out.stderr
    out = command("train", *TINY, "--out", str(tmp_path / "b"), "--bank", "dataset", "--objective", "beta-vae")
    assert out.returncode != 0 and "--bank needs an objective that estimates q(z) from the minibatch" in out.stderr
    out = command("train", *TINY, "--out", str(tmp_path / "c"), "--bank", "dataset", "--objective", "decomposition",
                  "--divergence", "mmd")
    assert out.returncode != 0 and "--divergence kl" in out.stderr


def test_atomic_files_are_readable_by_others(tmp_path):
    runs.atomic_write_text(str(tmp_path / "table.md"), "x")
    mode = (tmp_path / "table.md").stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask


def test_overwrite_checks_everything_before_deleting(tmp_path):
    train.train(parsed(tmp_path, "--steps", "2", "--eval-every", "2"))
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit, match="--batch-size 5000 is larger than the data set"):
        train.train(parsed(tmp_path, "--steps", "2", "--overwrite", "--batch-size", "5000"))
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


def test_resume_keeps_the_runs_step_count_and_its_last_record(tmp_path):
    train.train(parsed(tmp_path, "--steps", "6", "--eval-every", "3"))
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    (tmp_path / "metrics.jsonl").write_text(lines[0] + "\n")  # killed after the step-6 checkpoint
    out = command("train", *TINY, "--out", str(tmp_path), "--resume")   # no --steps: the run's own 6
    assert out.returncode == 0, out.stderr[-2000:]
    assert runs.load_checkpoint(str(tmp_path / "checkpoint.pt"))["step"] == 6
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [3, 6]


def test_bank_refresh_rewrites_a_rotating_slice(tmp_path):
    from tcestim.experiments.train import _refresh

    args = parsed(tmp_path, "--steps", "1")
    args.eval_points = 300
    data, model = train.build_data(args), train.build_model(args)
    bank = tcestim.DatasetBank(len(data), 2)
    batch = torch.arange(590, 600)
    cursor = _refresh(bank, model, data, batch, 580, 30)  # 580..609 wraps to 580..599, 0..9
    assert cursor == 10
    written = bank.filled.nonzero().flatten().tolist()
    assert written == list(range(0, 10)) + list(range(580, 590))   # the batch's own slots skipped
    mu, _ = train.encode_all(model, data, torch.tensor(written))
    torch.testing.assert_close(bank.mu[written], mu)
