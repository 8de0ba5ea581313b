"""tcestim: total correlation and the KL decomposition of a VAE's aggregate posterior.

Fused CPU (and CUDA) kernels for the (M, K, D) log-density cube with exact gradients, the
minibatch estimators of Chen et al. (2018) and Esmaeili et al. (2018), the exact decomposition
against stored encodings, and closed-form Gaussian ground truths. All values are in nats.

The package, from the stable core outwards (see ``docs/design.md``)::

    tcestim                 the estimator API below (``__all__``)
    tcestim.losses          VAE objectives built on it (β-VAE, β-TCVAE, RTC-VAE, Mathieu et al.)
    tcestim.priors          priors usable as ``prior=``
    tcestim.metrics         disentanglement metrics (MIG, sparsity)
    tcestim.distributed     the estimators over the global batch of torch.distributed ranks
    tcestim.baselines       other TC estimators, for comparison (kNN, density ratio)
    tcestim.experiments     reference models, data, training, the bias study, the command line
    tcestim.testing         devices, dtypes and CPU instruction sets for test suites

Submodules are imported on first use, so ``import tcestim`` loads only the core.

Example:
    >>> import torch, tcestim
    >>> mu, logvar = torch.randn(64, 4), torch.full((64, 4), -2.0)
    >>> z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
    >>> tc = tcestim.total_correlation(z, mu, logvar, dataset_size=10_000)
    >>> tc.shape
    torch.Size([])
"""
import importlib as _importlib

from tcestim import (
    _compat,
    _ops,  # noqa: F401  (registers autograd and fake kernels)
)
from tcestim._extension import cpu_isa, extension_available, set_cpu_isa, supported_cpu_isas
from tcestim.bank import DatasetBank, MemoryBank
from tcestim.bracket import tc_bracket
from tcestim.estimators import KLDecomposition, decompose, total_correlation
from tcestim.exact import decompose_exact
from tcestim.gaussian import gaussian_tc_of_means, gaussian_total_correlation
from tcestim.mixture import log_aggregate_posterior
from tcestim.weights import ESTIMATORS, StructuredLogWeights, estimator_log_weights

__version__ = "0.2.0"

__all__ = [
    "ESTIMATORS",
    "DatasetBank",
    "KLDecomposition",
    "MemoryBank",
    "StructuredLogWeights",
    "cpu_isa",
    "decompose",
    "decompose_exact",
    "estimator_log_weights",
    "extension_available",
    "gaussian_tc_of_means",
    "gaussian_total_correlation",
    "log_aggregate_posterior",
    "set_cpu_isa",
    "supported_cpu_isas",
    "tc_bracket",
    "total_correlation",
]

_SUBMODULES = ("losses", "priors", "metrics", "distributed", "baselines", "experiments", "testing")


def __getattr__(name):
    if name in _SUBMODULES:
        return _importlib.import_module(f"tcestim.{name}")
    return _compat.moved_attribute(name)


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES))


_compat.install()
