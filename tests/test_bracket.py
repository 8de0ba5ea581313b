"""tcestim.bracket (tc_bracket): the lower/upper TC bracket against the reference formula, and that it
contains the exact TC on average."""
import math

import numpy as np
import pytest
import torch

import tcestim

import reference
from helpers import encodings, sample


def test_bracket_matches_reference_formula():
    B, N = 10, 400
    mu, logvar = encodings(B, 3, seed=15)
    z = sample(mu, logvar)
    lower, upper = tcestim.tc_bracket(z, mu, logvar, dataset_size=N)
    args = (z.numpy(), mu.numpy(), logvar.numpy())
    strat = reference.mixture_logdensity(*args, np.log(reference.estimator_weight_matrix("stratified", B, N)))
    plugin = reference.mixture_logdensity(*args, np.full((B, B), -math.log(B)))
    assert float(lower) == pytest.approx(float(np.mean(strat[0] - plugin[1].sum(1))), rel=1e-12)
    assert float(upper) == pytest.approx(float(np.mean(plugin[0] - strat[1].sum(1))), rel=1e-12)


def test_bracket_contains_the_exact_tc_on_average():
    from tcestim.experiments.synthetic import finite_mixture_tc, make_posterior

    g = torch.Generator().manual_seed(16)
    post = make_posterior(3000, 4, rho=0.5, noise_std=0.5, generator=g, dtype=torch.float64)
    exact, se = finite_mixture_tc(post, 8000, g)
    lows, highs = [], []
    for _ in range(10):
        index = torch.randperm(3000, generator=g)[:256]
        lo, hi = tcestim.tc_bracket(post.sample(index, g), post.mu[index], post.logvar[index], dataset_size=3000)
        lows.append(float(lo))
        highs.append(float(hi))
    assert np.mean(lows) - 3 * se <= exact <= np.mean(highs) + 3 * se
