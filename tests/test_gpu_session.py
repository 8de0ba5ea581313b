"""Rehearsal of scripts/gpu_session.sh without a GPU (TCESTIM_GPU_REHEARSAL=1): the GPU steps are
stand-ins, the benchmark runs benchmarks/run_gpu.py --rehearsal on the CPU. Checks the files the
device tool brings back, the summary, that a failing step loses no other step's results, and that
the stage budgets are enforced by the script (statuses only, no timing assertions)."""
import json
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "gpu_session.sh")
OUT_FILES = {"session.log", "build.log", "ptxas.log", "checks.log", "test_cuda.log", "bench.jsonl",
             "bench.md", "summary.txt"}
STAGE1 = ["build", "driver_build", "driver", "memcheck", "racecheck", "synccheck", "test_cuda"]


def rehearse(out, **env):
    environment = {k: v for k, v in os.environ.items() if not k.startswith("TCESTIM_REHEARSAL")}
    environment.update(OUT=str(out), TCESTIM_GPU_REHEARSAL="1", PYTHON=sys.executable, **env)
    done = subprocess.run(["bash", SCRIPT], env=environment, capture_output=True, text=True, timeout=600)
    steps = {}
    summary = (out / "summary.txt").read_text()
    for line in summary.splitlines():
        parts = line.split(None, 4)
        if len(parts) >= 4 and parts[0] in ("1", "2"):
            steps[parts[1]] = parts[2]
    return done, steps, summary


def bench_rows(out):
    rows = [json.loads(line) for line in (out / "bench.jsonl").read_text().splitlines()]
    assert "meta" in rows[0]
    return rows[1:]


def test_rehearsal_writes_the_files_and_a_summary(tmp_path):
    done, steps, summary = rehearse(tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert {p.name for p in tmp_path.iterdir()} == OUT_FILES  # the device tool returns at most 8
    assert steps == {**{name: "ok" for name in STAGE1}, "bench": "ok"}
    assert "487188 checks, 0 failures" in summary and "ERROR SUMMARY: 0 errors" in summary
    rows = bench_rows(tmp_path)
    assert {r["kind"] for r in rows} == {"op", "large", "exact", "fused", "eager", "compile"}
    assert all("median_ms" in r for r in rows), [r for r in rows if "median_ms" not in r]
    assert [r["kind"] for r in rows].count("compile") == 2  # one shape, forward and backward
    md_rows = [line for line in (tmp_path / "bench.md").read_text().splitlines()
               if line.startswith("| ") and not line.startswith("| row ")]
    assert [line.split(" | ")[0][2:] for line in md_rows] == [r["row"] for r in rows]
    assert f"{len(rows)} rows measured, 0 failed, 0 skipped" in summary
    assert "== summary" in (tmp_path / "session.log").read_text()


def test_a_failing_step_keeps_the_other_results(tmp_path):
    done, steps, summary = rehearse(tmp_path, TCESTIM_REHEARSAL_FAIL="driver,test_cuda",
                                    TCESTIM_REHEARSAL_FAIL_ROWS="eager M64")
    assert done.returncode == 1
    assert steps["driver"].startswith("FAIL") and steps["test_cuda"].startswith("FAIL")
    assert steps["memcheck"] == steps["synccheck"] == steps["bench"] == "ok"
    assert "ERROR SUMMARY: 0 errors" in (tmp_path / "checks.log").read_text()
    rows = bench_rows(tmp_path)
    failed = [r["row"] for r in rows if "error" in r]
    assert failed == ["eager M64 D8 fwd", "eager M64 D8 fwdbwd"]
    after = rows[[r["row"] for r in rows].index(failed[-1]) + 1:]
    assert after and all("median_ms" in r for r in after)  # rows after the failure still measured
    assert "failed: RuntimeError: injected failure in eager M64 D8 fwd" in summary


def test_an_out_of_memory_row_is_recorded(tmp_path):
    done, steps, _ = rehearse(tmp_path, TCESTIM_REHEARSAL_FAIL_ROWS="oom:large")
    assert steps["bench"] == "ok"
    large = [r for r in bench_rows(tmp_path) if r["kind"] == "large"]
    assert len(large) == 1 and large[0]["error"].startswith("out of memory")


def test_stage_budgets_are_enforced(tmp_path):
    done, steps, summary = rehearse(tmp_path, TCESTIM_STAGE1_S="15", TCESTIM_SESSION_S="60",
                                    TCESTIM_REHEARSAL_SLOW="memcheck:600")
    assert done.returncode == 1
    assert steps["memcheck"] == "timeout"  # killed at the end of stage 1
    assert steps["racecheck"] == steps["synccheck"] == steps["test_cuda"] == "skipped"
    assert steps["bench"] == "ok"  # stage 2 still runs, inside what is left of the session
    rows = bench_rows(tmp_path)
    assert any("median_ms" in r for r in rows)
    assert all("median_ms" in r or "budget" in r.get("skipped", "") for r in rows)


def test_a_failed_build_skips_what_needs_it(tmp_path):
    done, steps, summary = rehearse(tmp_path, TCESTIM_REHEARSAL_FAIL="build")
    assert done.returncode == 1
    assert steps["build"].startswith("FAIL")
    assert steps["test_cuda"] == steps["bench"] == "skipped"
    assert steps["driver"] == steps["racecheck"] == "ok"  # the torch-free driver needs no extension
    assert "needs build" in summary
    assert not (tmp_path / "bench.jsonl").exists()


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc")
def test_rehearsal_with_the_real_driver_build(tmp_path):
    """The nvcc commands of the GPU session (sm_90 objects, link, ptxas report) need no GPU."""
    done, steps, summary = rehearse(tmp_path, TCESTIM_REHEARSAL_REAL="driver_build")
    assert steps["driver_build"] == "ok", (tmp_path / "build.log").read_text()[-3000:]
    assert "forward_kernel_large" in (tmp_path / "ptxas.log").read_text()
    assert "registers (sm_90):" in summary
    assert "| forward_kernel_large double dense |" in summary


@pytest.mark.parametrize("fault", ["", "oom:op"])
def test_run_gpu_summarize_reads_a_cut_jsonl(tmp_path, fault):
    env = {**os.environ, "TCESTIM_REHEARSAL_FAIL_ROWS": fault}
    subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run_gpu.py"), "--rehearsal", "--out",
                    str(tmp_path), "--peers", "fused"], env=env, check=True, capture_output=True, timeout=300)
    text = (tmp_path / "bench.jsonl").read_text()
    (tmp_path / "cut.jsonl").write_text(text[: len(text) - 40])  # as if killed while writing a row
    summary = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "run_gpu.py"), "--summarize",
                              str(tmp_path / "cut.jsonl")], check=True, capture_output=True, text=True).stdout
    rows = len(text.splitlines()) - 1
    failed = 4 if fault else 0  # the op rows at both op shapes, forward and backward
    assert f"{rows - 1 - failed} rows measured, {failed} failed" in summary
