"""Numerical extremes, memory behaviour: the kernels stay finite wherever the float64 reference is.

Extremes (issue "Robustness"): logvar in [-30, 30], |z - mu| up to 1e4, D up to 1024, one query,
one component. The reference gets the inputs after rounding to the tested dtype, so differences
measure the kernel, not the input rounding.
"""
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from tcestim import _fallback
from tcestim.weights import StructuredLogWeights

import reference

pytestmark = pytest.mark.usefixtures("requires_extension")

WEIGHTS = StructuredLogWeights(math.log(0.01), math.log(0.3), math.log(0.05))
# (M, K, D, scale of z, logvar low, logvar high)
EXTREMES = [
    (9, 7, 3, 1e4, -30.0, 30.0),
    (5, 6, 1024, 3.0, -2.0, 2.0),
    (1, 1, 4, 1e4, -30.0, -30.0),
    (7, 5, 2, 1e4, 30.0, 30.0),
    (20, 20, 8, 1.0, -30.0, -29.0),
    (1, 40, 5, 1.0, -1.0, 1.0),
    (40, 1, 5, 10.0, -1.0, 1.0),
]


def extreme_inputs(M, K, D, scale, lo, hi, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(M, D, generator=g, dtype=torch.float64)
    mu = torch.randn(K, D, generator=g, dtype=torch.float64)
    logvar = lo + (hi - lo) * torch.rand(K, D, generator=g, dtype=torch.float64)
    return [t.to(dtype) for t in (z, mu, logvar)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("case", EXTREMES, ids=lambda c: "M{}-K{}-D{}-z{:g}-lv{:g}..{:g}".format(*c))
def test_extremes_finite_and_match_reference(cpu_isa, case, dtype):
    z, mu, logvar = extreme_inputs(*case, dtype)
    log_qz, log_qzd = torch.ops.tcestim.mixture_logdensity(z, mu, logvar, *WEIGHTS)
    M, K = case[0], case[1]
    want_qz, want_qzd = reference.mixture_logdensity(
        *(reference.to_numpy(t) for t in (z, mu, logvar)), reference.structured_matrix(M, K, *WEIGHTS))
    assert np.isfinite(want_qz).all() and np.isfinite(want_qzd).all()
    assert torch.isfinite(log_qz).all() and torch.isfinite(log_qzd).all()
    rtol = 2e-6 if dtype == torch.float32 else 1e-12
    for got, want in ((log_qz, want_qz), (log_qzd, want_qzd)):
        error = np.abs(got.double().numpy() - want) / np.maximum(1.0, np.abs(want))
        assert error.max() <= rtol


@pytest.mark.parametrize("case", EXTREMES[:1] + EXTREMES[2:5], ids=lambda c: "M{}-K{}-D{}".format(*c[:3]))
def test_gradients_at_extremes_match_autograd_reference(case):
    """Gradients agree with PyTorch autograd through the materialised cube, to the conditioning limit.

    The softmax weights are exp(x - logsumexp(x)) with |x| up to max|C|: any float64 implementation
    knows them only to about max|C| * eps, so the tolerance (relative to the largest gradient) is
    10 * eps * max|C|, and never looser than 1e-9.
    """
    z, mu, logvar = (t.requires_grad_() for t in extreme_inputs(*case, torch.float64, seed=1))
    fused = torch.ops.tcestim.mixture_logdensity(z, mu, logvar, *WEIGHTS)
    grads = torch.autograd.grad(fused[0].sum() + fused[1].sum(), (z, mu, logvar))
    slow = _fallback.mixture_logdensity(z, mu, logvar, WEIGHTS)
    want = torch.autograd.grad(slow[0].sum() + slow[1].sum(), (z, mu, logvar))
    max_c = float(np.abs(reference.cube(*(reference.to_numpy(t) for t in (z, mu, logvar)))).max())
    relative = max(1e-9, 10 * np.finfo(np.float64).eps * max_c)
    for g, w in zip(grads, want):
        assert torch.isfinite(g).all()
        scale = float(w.abs().max().clamp(min=1.0))
        assert float((g - w).abs().max()) <= relative * scale


def _run_python(code: str, timeout: int) -> str:
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


_RSS = """
def rss_mib():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) / 1024
def peak_mib():
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('VmHWM:'):
                return int(line.split()[1]) / 1024
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="needs Linux /proc")
def test_no_memory_growth_over_ten_thousand_calls():
    out = _run_python(_RSS + """
import torch, tcestim
torch.manual_seed(0)
z, mu, logvar = (torch.randn(64, 8, requires_grad=True) for _ in range(3))
def step():
    tcestim.total_correlation(z, mu, logvar, dataset_size=1000).backward()
for _ in range(1000):
    step()
before = rss_mib()
for _ in range(10000):
    step()
print(rss_mib() - before)
""", timeout=600)
    growth = float(out.strip().splitlines()[-1])
    assert growth < 8.0, f"RSS grew by {growth:.1f} MiB over 10000 forward+backward calls"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/clear_refs"), reason="needs Linux /proc")
def test_no_cube_sized_allocation_at_16384():
    """M = K = 16384, D = 64, float32: the cube would be 64 GiB; forward+backward needs megabytes."""
    out = _run_python(_RSS + """
import torch, tcestim
torch.manual_seed(0)
M, D = 16384, 64
z, mu = torch.randn(M, D, requires_grad=True), torch.randn(M, D, requires_grad=True)
logvar = (0.3 * torch.randn(M, D)).requires_grad_()
with open('/proc/self/clear_refs', 'w') as f:
    f.write('5')
base = peak_mib()
tcestim.total_correlation(z, mu, logvar, dataset_size=100000).backward()
print(peak_mib() - base)
""", timeout=900)
    extra = float(out.strip().splitlines()[-1])
    assert extra < 256.0, f"peak RSS rose by {extra:.0f} MiB"
