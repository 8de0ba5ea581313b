"""The argument conventions every public entry point shares (tcestim._validation): z, mu and logvar of
decompose, total_correlation and log_aggregate_posterior are checked the same way.

Every rejected input asserts the exception type (TypeError for wrong Python types and dtypes,
ValueError for wrong shapes, sizes and devices) and that the message starts with / names the offending
argument. The checks of one module's own arguments are in that module's test file (test_estimators.py:
dataset_size, estimator, batch size, prior; test_mixture.py: log_weights; test_weights.py;
test_gaussian.py; test_ops.py: the raw operators).
"""
import numpy as np
import pytest
import torch

import tcestim

from helpers import posterior


def _decompose(z, mu, logvar, **kw):
    return tcestim.decompose(z, mu, logvar, **kw)


def _total_correlation(z, mu, logvar, **kw):
    return tcestim.total_correlation(z, mu, logvar, **kw)


def _log_aggregate_posterior(z, mu, logvar, **kw):
    return tcestim.log_aggregate_posterior(z, mu, logvar, **kw)


POSTERIOR_FNS = {
    "decompose": _decompose,
    "total_correlation": _total_correlation,
    "log_aggregate_posterior": _log_aggregate_posterior,
}


ARGS = ("z", "mu", "logvar")


def with_arg(name, value, B=5, D=3):
    args = dict(zip(ARGS, posterior(B, D)))
    args[name] = value
    return args["z"], args["mu"], args["logvar"]


# ----------------------------------------------------------------------------------------------
# types and dtypes


@pytest.mark.parametrize("fn", POSTERIOR_FNS.values(), ids=POSTERIOR_FNS.keys())
@pytest.mark.parametrize("arg", ARGS)
@pytest.mark.parametrize("bad", [[[0.0, 1.0], [2.0, 3.0]], np.zeros((5, 3)), 1.5, None],
                         ids=["list", "ndarray", "float", "None"])
def test_non_tensor_input_raises_type_error(fn, arg, bad):
    with pytest.raises(TypeError, match=rf"^{arg} must be a torch\.Tensor"):
        fn(*with_arg(arg, bad))


@pytest.mark.parametrize("fn", POSTERIOR_FNS.values(), ids=POSTERIOR_FNS.keys())
@pytest.mark.parametrize("arg", ARGS)
@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool, torch.complex64,
                                   torch.complex128])
def test_non_floating_dtype_raises_type_error(fn, arg, dtype):
    bad = torch.ones(5, 3, dtype=dtype)
    with pytest.raises(TypeError, match=rf"^{arg} must have a floating dtype"):
        fn(*with_arg(arg, bad))


@pytest.mark.parametrize("fn", POSTERIOR_FNS.values(), ids=POSTERIOR_FNS.keys())
@pytest.mark.parametrize("arg", ["mu", "logvar"])
@pytest.mark.parametrize("dtypes", [(torch.float64, torch.float32), (torch.float32, torch.float64),
                                    (torch.float32, torch.float16), (torch.bfloat16, torch.float16)])
def test_mixed_floating_dtypes_raise_type_error(fn, arg, dtypes):
    z, mu, logvar = posterior(dtype=dtypes[0])
    args = dict(z=z, mu=mu, logvar=logvar)
    args[arg] = args[arg].to(dtypes[1])
    with pytest.raises(TypeError, match=rf"^{arg} must have the dtype of z"):
        fn(args["z"], args["mu"], args["logvar"])


@pytest.mark.parametrize("fn", POSTERIOR_FNS.values(), ids=POSTERIOR_FNS.keys())
@pytest.mark.parametrize("arg", ["mu", "logvar"])
def test_device_mismatch_raises_value_error(fn, arg):
    z, mu, logvar = posterior()
    args = dict(z=z, mu=mu, logvar=logvar)
    args[arg] = torch.empty(args[arg].shape, dtype=args[arg].dtype, device="meta")
    with pytest.raises(ValueError, match=rf"^{arg} must be on the device of z"):
        fn(args["z"], args["mu"], args["logvar"])


# ----------------------------------------------------------------------------------------------
# shapes


@pytest.mark.parametrize("fn", POSTERIOR_FNS.values(), ids=POSTERIOR_FNS.keys())
@pytest.mark.parametrize("arg", ARGS)
@pytest.mark.parametrize("shape", [(15,), (5, 3, 1), (), (1, 5, 3)], ids=["1d", "3d", "0d", "3d-lead"])
def test_wrong_rank_raises_value_error(fn, arg, shape):
    bad = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=rf"^{arg} must be 2-D"):
        fn(*with_arg(arg, bad))


@pytest.mark.parametrize("fn", POSTERIOR_FNS.values(), ids=POSTERIOR_FNS.keys())
@pytest.mark.parametrize("shape", [(0, 3), (5, 0), (0, 0)], ids=["B=0", "D=0", "both"])
def test_empty_inputs_raise_value_error(fn, shape):
    empty = torch.zeros(shape, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^z must be non-empty"):
        fn(empty, empty.clone(), empty.clone())
