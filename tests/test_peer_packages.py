"""The drop-in examples against the peers' real packages (examples/disent_dropin.py,
examples/pythae_dropin.py): the peer's own TC term equals tcestim's matching estimator to float32
rounding, both equal an independent float64 implementation of the peer's formula
(tests/reference.py), and the swapped-in estimator gives the stratified value, away from the peer's
by what docs/peers.md predicts. Each test skips when its package is not installed (neither is a
tcestim dependency); the examples' docstrings say how to install them."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import tcestim

import reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
F32_ROUNDING = 1e-5
"""Relative: two float32 computations of the same sum in different orders (about 80 ulp)."""
F64_REFERENCE = 1e-4
"""Relative: a float32 result against the float64 reference."""


def missing(*modules):
    return [m for m in modules if importlib.util.find_spec(m) is None]


def close(a, b, rel):
    return abs(a - b) <= rel * max(1.0, abs(b))


def unit_weight_tc(z, mu, logvar):
    """disent's formula in float64: log q(z) and each log q(z_d) with weight 1 per batch member."""
    zero = np.zeros((len(z), len(z)))
    log_qz, log_qzd = reference.mixture_logdensity(z, mu, logvar, zero)
    return float(np.mean(log_qz - log_qzd.sum(1)))


@pytest.mark.skipif(bool(missing("disent", "lightning", "h5py")),
                    reason="disent is not installed: pip install disent==0.8.0 --no-deps lightning h5py "
                           "(see examples/disent_dropin.py)")
def test_disent_dropin():
    # a subprocess: the example may register a torchvision placeholder, which must not leak here
    done = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "disent_dropin.py"), "--json"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    r = json.loads(done.stdout.strip().splitlines()[-1])
    z, mu, log_var = (np.array(r[k], dtype=np.float32) for k in ("z", "mu", "log_var"))
    B, D, N = r["B"], r["D"], r["N"]
    assert z.shape == (B, D)

    # disent's TC term == tcestim's log_weights=0.0, to float32 rounding, and == the float64 formula
    assert close(r["tcestim_unit_weights"], r["disent"], F32_ROUNDING), r
    peer = unit_weight_tc(z, mu, log_var)
    assert close(r["disent"], peer, F64_REFERENCE), (r["disent"], peer)
    # ... which is MWS minus (D - 1) log(B N) (docs/peers.md)
    assert close(r["mws_minus_offset"], peer, F64_REFERENCE)

    # the swapped-in framework gives the stratified estimate
    stratified = float(reference.decomposition(z, mu, log_var, "stratified", N)["tc"].mean())
    assert close(r["swapped_stratified"], stratified, F64_REFERENCE), (r["swapped_stratified"], stratified)
    assert close(r["swapped_stratified"], r["stratified"], F32_ROUNDING)
    # ... about (D - 1) log B above disent's (docs/peers.md: "TC about (D - 1) log B too low"):
    # exactly (D - 1) log(B N) minus the gap between MWS and the stratified estimate
    gap = r["swapped_stratified"] - r["disent"]
    mws = float(reference.decomposition(z, mu, log_var, "mws", N)["tc"].mean())
    assert abs(gap - ((D - 1) * math.log(B * N) - (mws - stratified))) < 1e-3 * (D - 1) * math.log(B)
    assert 0.8 < gap / ((D - 1) * math.log(B)) < 1.2, gap


@pytest.mark.skipif(bool(missing("pythae")), reason="pythae is not installed: pip install pythae "
                                                    "(see examples/pythae_dropin.py)")
def test_pythae_dropin():
    spec = importlib.util.spec_from_file_location("pythae_dropin", os.path.join(ROOT, "examples", "pythae_dropin.py"))
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    from pythae.models import BetaTCVAE, BetaTCVAEConfig

    g = torch.Generator().manual_seed(1)
    B, D, N = 64, example.D, example.N
    mu = torch.randn(B, D, generator=g)
    log_var = torch.rand(B, D, generator=g) * 2.0 - 3.0
    z = mu + torch.randn(B, D, generator=g) * (0.5 * log_var).exp()
    args = [reference.to_numpy(t) for t in (z, mu, log_var)]

    def config(use_mss):
        return BetaTCVAEConfig(input_dim=(example.PIXELS,), latent_dim=D, alpha=0.0, beta=1.0, gamma=0.0,
                               use_mss=use_mss, reconstruction_loss="mse")

    for use_mss, ours in ((True, "mss-legacy"), (False, "mws")):
        theirs = float(example.tc_term(BetaTCVAE(config(use_mss)), mu, log_var, z))
        mine = float(tcestim.total_correlation(z, mu, log_var, dataset_size=N, estimator=ours))
        assert close(mine, theirs, F32_ROUNDING), (use_mss, mine, theirs)
        peer = float(reference.decomposition(*args, ours, N)["tc"].mean())
        assert close(theirs, peer, F64_REFERENCE), (use_mss, theirs, peer)
    swapped = float(example.tc_term(example.StratifiedBetaTCVAE(config(True)), mu, log_var, z))
    stratified = float(reference.decomposition(*args, "stratified", N)["tc"].mean())
    assert close(swapped, stratified, F64_REFERENCE), (swapped, stratified)
    # the legacy matrix is not the stratified estimator: its column-0 weights move the TC
    assert abs(float(example.tc_term(BetaTCVAE(config(True)), mu, log_var, z)) - stratified) > 0.5
