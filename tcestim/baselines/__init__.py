"""Other estimators of total correlation, for comparison with the mixture estimators of :mod:`tcestim`.

- :func:`knn_total_correlation`: the Kraskov–Stögbauer–Grassberger kNN estimate from samples alone
  (needs SciPy).
- :mod:`tcestim.baselines.density_ratio`: FactorVAE's discriminator (density-ratio) estimate.
"""
from tcestim.baselines.density_ratio import DensityRatioTC, fit_density_ratio_tc, permute_dims
from tcestim.baselines.knn import knn_total_correlation

__all__ = ["DensityRatioTC", "fit_density_ratio_tc", "knn_total_correlation", "permute_dims"]
