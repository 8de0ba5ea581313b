"""benchmarks/run_peers.py's memory guard, without timing anything: sizes whose estimated peak
exceeds the cap are not started, the estimate follows the peak measured at the previous size, a
child past the kill threshold is killed, and the report shows both statuses."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import run_peers  # noqa: E402


@pytest.fixture
def fake_children(monkeypatch):
    """run_child replaced by a stub whose peer rows peak at 4 cubes; every family 'installed'."""
    started = []

    def run_child(family, name, B, D, kill_bytes, threads=None):
        started.append((family, name, B))
        cubes = 0.0 if name.startswith("tcestim") else 4.0
        peak = cubes * run_peers.cube_bytes(B, D) / 2**20
        return {"family": family, "impl": name, "B": B, "D": D, "value": 1.0, "fwd_ms": 2.0, "fwdbwd_ms": 4.0,
                "fwd_peak_mib": peak / 2, "fwdbwd_peak_mib": peak}

    monkeypatch.setattr(run_peers, "run_child", run_child)
    monkeypatch.setattr(run_peers, "available", lambda family: "0.0")
    return started


def test_sizes_over_the_cap_are_skipped(fake_children):
    # D = 10: a cube is 2.7 GB at B = 8192 and 0.67 GB at B = 4096
    results = run_peers.run((256, 4096, 8192), 10, cap_gb=8.0)
    skipped = {(r["family"], r["impl"], r["B"]) for r in results if "skipped" in r}
    # measured 4 cubes at 4096 -> 10.7 GB estimated at 8192: skipped for both peers' own code
    assert skipped == {("pythae", "pythae", 8192), ("disent", "disent", 8192)}
    # tcestim's rows never are
    assert ("pythae", "tcestim stratified", 8192) in fake_children
    assert ("disent", "tcestim unit weights", 8192) in fake_children
    assert len(results) == len(fake_children) + 2


def test_estimate_follows_the_measured_peak(fake_children):
    # 4 cubes at 8192 is 10.7 GB: with a 12 GB cap the peers run at every size
    results = run_peers.run((4096, 8192), 10, cap_gb=12.0)
    assert not any("skipped" in r for r in results)
    # before anything is measured the default (10 cubes, 26.8 GB at 8192) applies
    results = run_peers.run((8192,), 10, cap_gb=12.0)
    assert {r["impl"] for r in results if "skipped" in r} == {"pythae", "disent"}


def test_child_over_the_kill_threshold_is_killed():
    # a real child (it imports torch: well over 1 MB resident) against a 1 MB threshold
    r = run_peers.run_child("disent", "tcestim stratified", 256, 10, kill_bytes=2**20)
    assert "oom" in r and "fwd_ms" not in r, r


def test_report_shows_the_statuses():
    results = [
        {"family": "disent", "impl": "disent", "B": 256, "D": 10, "value": -1.5, "fwd_ms": 8.0,
         "fwdbwd_ms": 20.0, "fwd_peak_mib": 10.0, "fwdbwd_peak_mib": 30.0},
        {"family": "disent", "impl": "tcestim stratified", "B": 256, "D": 10, "value": 0.5, "fwd_ms": 0.5,
         "fwdbwd_ms": 2.0, "fwd_peak_mib": 0.1, "fwdbwd_peak_mib": 0.1},
        {"family": "disent", "impl": "disent", "B": 8192, "D": 10, "skipped": "OOM estimate 19 GB > 8 GB"},
        {"family": "disent", "impl": "tcestim stratified", "B": 8192, "D": 10, "oom": "killed at 9.9 GiB RSS"},
    ]
    text = run_peers.table(results, "disent")
    assert "| 256 | tcestim stratified | 0.5000 | 0.50 | 2.00 | 0.1 | 0.1 | 16.0× | 10.0× |" in text
    assert "skipped (OOM estimate 19 GB > 8 GB)" in text
    assert "OOM (killed at 9.9 GiB RSS)" in text


def test_agreement_line():
    results = [{"family": "disent", "impl": "disent", "B": 256, "value": -2.0},
               {"family": "disent", "impl": "tcestim unit weights", "B": 256, "value": -2.004},
               {"family": "disent", "impl": "disent", "B": 1024, "value": 3.0},
               {"family": "disent", "impl": "tcestim unit weights", "B": 1024, "value": 3.0},
               {"family": "disent", "impl": "disent", "B": 8192, "skipped": "OOM estimate"}]
    line = run_peers.agreement(results, "disent")
    assert "B in 256, 1024:" in line and "largest relative difference 2.0e-03" in line
    assert run_peers.agreement(results[-1:], "disent").startswith("No size")
