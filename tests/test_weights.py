"""tcestim.weights: estimator_log_weights against the design table and the reference code, and its
argument checks."""

import numpy as np
import pytest
import torch

import tcestim
from tcestim.weights import StructuredLogWeights

import reference
from helpers import NEED_TWO

ESTIMATORS = ("stratified", "mss", "mws", "mss-legacy")


def as_matrix(weights, B):
    if isinstance(weights, StructuredLogWeights):
        return reference.structured_matrix(B, B, *weights)
    return weights.numpy()


@pytest.mark.parametrize("name", ESTIMATORS)
@pytest.mark.parametrize("B,N", [(2, 2), (2, 50), (7, 7), (16, 1000), (64, 64)])
def test_weight_matrix_matches_design_table(name, B, N):
    got = np.exp(as_matrix(tcestim.estimator_log_weights(name, B, N), B))
    np.testing.assert_allclose(got, reference.estimator_weight_matrix(name, B, N), rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", ["stratified", "mss"])
@pytest.mark.parametrize("B,N", [(2, 10), (16, 1000), (64, 64)])
def test_importance_weights_sum_to_one(name, B, N):
    """Each row of a correct estimator is a probability vector over the batch."""
    w = np.exp(as_matrix(tcestim.estimator_log_weights(name, B, N), B))
    np.testing.assert_allclose(w.sum(1), 1.0, rtol=1e-12)


def test_legacy_matrix_reproduces_reference_code():
    """The reference β-TCVAE code, transcribed with NumPy's flat views (its strides, its bug)."""
    B, N = 6, 100
    M = B - 1
    strat_weight = (N - M) / (N * M)
    W = np.full((B, B), 1 / M)
    W.reshape(-1)[:: M + 1] = 1 / N
    W.reshape(-1)[1 :: M + 1] = strat_weight
    W[M - 1, 0] = strat_weight
    got = tcestim.estimator_log_weights("mss-legacy", B, N).exp().numpy()
    np.testing.assert_allclose(got, W, rtol=1e-12)
    assert not np.allclose(np.diag(W), 1 / N), "the legacy matrix must keep the column-0 bug"


def test_estimator_log_weights_validation():
    with pytest.raises(ValueError, match=r"^estimator must be one of") as info:
        tcestim.estimator_log_weights("bogus", 4, 10)
    assert all(repr(name) in str(info.value) for name in ESTIMATORS)
    for bad in (0, -3):
        with pytest.raises(ValueError, match=r"^batch_size must be >= 1"):
            tcestim.estimator_log_weights("stratified", bad, 10)
    for bad in (2.0, True, "4", None):
        with pytest.raises(TypeError, match=r"^batch_size must be an int"):
            tcestim.estimator_log_weights("stratified", bad, 10)
    # NumPy integers are integers
    assert tcestim.estimator_log_weights("stratified", np.int64(4), np.int32(10)) == \
        tcestim.estimator_log_weights("stratified", 4, 10)
    for estimator in NEED_TWO:
        with pytest.raises(ValueError, match=rf"estimator '{estimator}' needs a batch size of at least 2"):
            tcestim.estimator_log_weights(estimator, 1, 10)
    with pytest.raises(ValueError, match=r"^dataset_size must be >= the batch size 4, got 3"):
        tcestim.estimator_log_weights("mss", 4, 3)
    with pytest.raises(ValueError, match=r"^dataset_size must be >= the batch size 4, got 0"):
        tcestim.estimator_log_weights("mws", 4, 0)
    for bad in (10.0, True, "10"):
        with pytest.raises(TypeError, match=r"^dataset_size must be an int or None"):
            tcestim.estimator_log_weights("stratified", 4, bad)
    # the shapes of what it returns
    assert isinstance(tcestim.estimator_log_weights("mws", 1), tcestim.StructuredLogWeights)
    legacy = tcestim.estimator_log_weights("mss-legacy", 4, 10, dtype=torch.float32)
    assert legacy.shape == (4, 4) and legacy.dtype == torch.float32
