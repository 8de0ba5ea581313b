"""pytest-benchmark timings of the stratified TC peers (see peers.py), forward and forward+backward.

Not part of the default test run (pyproject's testpaths is ["tests"]); run explicitly:

    pytest benchmarks/ --benchmark-only                  # everything (a few minutes on 2 cores)
    pytest benchmarks/ --benchmark-only -k "fused and 1024"

Tests are grouped by (mode, M, D) so that pytest-benchmark prints the peers side by side.
Nothing here asserts on time; run_cpu.py adds peak memory and writes the results table.
"""
from __future__ import annotations

import pytest

pytest.importorskip("pytest_benchmark")

import peers  # noqa: E402  (benchmarks/ is put on sys.path by pytest's rootdir-less import)
from measure import make_inputs  # noqa: E402

SIZES_M = (256, 1024, 2048)
SIZES_D = (10, 32)
ROUNDS = 3


@pytest.fixture(params=peers.PEER_NAMES)
def peer(request):
    """(name, function); "compile" is compiled afresh for every test (no recompile limit)."""
    return request.param, peers.get_peer(request.param)


def _skip_if_too_big(name: str, M: int, D: int) -> None:
    if name == "eager" and peers.eager_too_big(M, D):
        pytest.skip(f"eager at M={M}, D={D} would need more than "
                    f"{peers.EAGER_MEMORY_LIMIT / 1e9:.0f} GB")


@pytest.mark.parametrize("D", SIZES_D)
@pytest.mark.parametrize("M", SIZES_M)
def test_forward(benchmark, peer, M, D):
    name, fn = peer
    _skip_if_too_big(name, M, D)
    z, mu, logvar = make_inputs(M, D)
    benchmark.group = f"forward M={M} D={D}"
    benchmark.extra_info.update(peer=name, M=M, D=D)
    # The warm-up round is where torch.compile compiles; it is not timed.
    result = benchmark.pedantic(fn, args=(z, mu, logvar), rounds=ROUNDS, iterations=1,
                                warmup_rounds=1)
    assert result.dim() == 0


@pytest.mark.parametrize("D", SIZES_D)
@pytest.mark.parametrize("M", SIZES_M)
def test_forward_backward(benchmark, peer, M, D):
    name, fn = peer
    _skip_if_too_big(name, M, D)
    leaves = [t.requires_grad_() for t in make_inputs(M, D)]

    def step():
        for leaf in leaves:
            leaf.grad = None
        fn(*leaves).backward()

    benchmark.group = f"forward+backward M={M} D={D}"
    benchmark.extra_info.update(peer=name, M=M, D=D)
    benchmark.pedantic(step, rounds=ROUNDS, iterations=1, warmup_rounds=1)
    assert all(leaf.grad is not None for leaf in leaves)
