"""tcestim: total correlation and the KL decomposition of a VAE's aggregate posterior.

Fused CPU (and CUDA) kernels for the (M, K, D) log-density cube with exact gradients, the
minibatch estimators of Chen et al. (2018) and Esmaeili et al. (2018), and closed-form Gaussian
ground truths. All values are in nats.
"""
from tcestim._extension import cpu_isa, extension_available, set_cpu_isa, supported_cpu_isas
from tcestim import _ops  # noqa: F401  (registers autograd and fake kernels)
from tcestim import data, discriminator, distributed, losses, metrics, models, priors
from tcestim.bank import MemoryBank
from tcestim.bracket import tc_bracket
from tcestim.estimators import KLDecomposition, decompose, total_correlation
from tcestim.exact import decompose_exact
from tcestim.gaussian import gaussian_tc_of_means, gaussian_total_correlation
from tcestim.knn import knn_total_correlation
from tcestim.mixture import log_aggregate_posterior
from tcestim.weights import ESTIMATORS, StructuredLogWeights, estimator_log_weights

__version__ = "0.1.0"

__all__ = [
    "ESTIMATORS",
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
    "data",
    "discriminator",
    "distributed",
    "losses",
    "metrics",
    "models",
    "priors",
    "knn_total_correlation",
    "log_aggregate_posterior",
    "set_cpu_isa",
    "supported_cpu_isas",
    "tc_bracket",
    "total_correlation",
]
