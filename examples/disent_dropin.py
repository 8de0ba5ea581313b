"""disent's β-TCVAE with tcestim's estimator swapped in, and the numbers before and after on one batch.

    pip install disent==0.8.0 --no-deps     # not a tcestim dependency; tested with disent 0.8.0
    pip install lightning h5py               # what importing disent's frameworks needs (keeps your torch)
    python examples/disent_dropin.py

1. disent's own TC term (``BetaTcVae.compute_ave_reg_loss``, logged as ``tc_loss``) is reproduced
   by tcestim with unit weights, ``log_aggregate_posterior(..., log_weights=0.0)``, on the same
   batch: the script stops if it is not.
2. ``StratifiedBetaTcVae`` subclasses disent's framework and replaces the TC computation inside its
   loss by ``tcestim.total_correlation`` (the stratified estimator); everything else is disent's.
   disent's loss has no dataset size, so the subclass adds one to its config.

disent's unit weights leave out the normalisation 1/(B N) of q(z) and of each q(z_d): its TC equals
``mws`` minus (D - 1) log(B N), about (D - 1) log B below the corrected estimate (the script prints
both). disent's ``disent.frameworks`` package imports torchvision (for DFC-VAE's VGG network and its
image transforms, neither used here); where torchvision is not installed (PyPI's torchvision wheels
need PyPI's CUDA torch) the script puts an empty placeholder module in its place before importing
disent, and says so.
"""
import importlib.abc
import importlib.machinery
import importlib.util
import json
import math
import sys
import types
from dataclasses import dataclass
from typing import Optional


class _Placeholder(types.ModuleType):
    """An empty module: each attribute is a class that raises when instantiated (disent subclasses
    some of torchvision's classes at import time, and uses none of them here)."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        qualname = f"{self.__name__}.{name}"

        def missing(*args, **kwargs):
            raise ImportError(f"torchvision is not installed ({qualname} is a placeholder)")
        return type(name, (), {"__init__": missing})


class _PlaceholderFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves torchvision and all its submodules as :class:`_Placeholder` modules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _Placeholder(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def _torchvision_placeholder() -> bool:
    """Install the placeholder finder if torchvision is missing; True if it did."""
    if importlib.util.find_spec("torchvision") is not None:
        return False
    sys.meta_path.append(_PlaceholderFinder())
    return True


import lightning  # noqa: E402,F401  (disent's own dependency; imported before any placeholder, which it must not see)

PLACEHOLDER = _torchvision_placeholder()

import torch  # noqa: E402
from disent.frameworks.vae import BetaTcVae  # noqa: E402
from disent.model import AutoEncoder  # noqa: E402
from disent.model.ae import DecoderLinear, EncoderLinear  # noqa: E402

import tcestim  # noqa: E402

B, D, N, PIXELS, BETA = 256, 10, 60_000, 64, 6.0


class StratifiedBetaTcVae(BetaTcVae):
    """disent's BetaTcVae whose total correlation comes from tcestim's stratified estimator."""

    @dataclass
    class cfg(BetaTcVae.cfg):
        dataset_size: Optional[int] = None   # N; disent's loss has none (None: N = B)

    def _betatc_compute_loss(self, d_posterior, z_sampled):
        tc_loss = tcestim.total_correlation(z_sampled, d_posterior.mean, torch.log(d_posterior.variance),
                                            dataset_size=self.cfg.dataset_size)   # the one changed line
        tc_reg_loss = (self.cfg.beta - 1.0) * tc_loss
        return tc_reg_loss, {"tc_loss": tc_loss, "tc_reg_loss": tc_reg_loss}


def make_framework(cls, **cfg):
    """A disent framework around a linear auto-encoder (the TC term does not depend on it)."""
    model = AutoEncoder(encoder=EncoderLinear(x_shape=(1, PIXELS), z_size=D, z_multiplier=2),
                        decoder=DecoderLinear(x_shape=(1, PIXELS), z_size=D))
    return cls(model=model, cfg=cls.cfg(beta=BETA, **cfg))


def tc_term(framework, mu, log_var, z):
    """The framework's logged ``tc_loss`` on a batch, through its own regulariser and posterior."""
    posterior, prior = framework.latents_handler.encoding_to_dists((mu, log_var))
    _, logs = framework.compute_ave_reg_loss((posterior,), (prior,), (z,))
    return torch.as_tensor(logs["tc_loss"])


def make_batch():
    g = torch.Generator().manual_seed(0)
    mu = torch.randn(B, D, generator=g)
    log_var = torch.rand(B, D, generator=g) * 2.0 - 3.0
    z = mu + torch.randn(B, D, generator=g) * (0.5 * log_var).exp()
    return mu, log_var, z


def run() -> dict:
    """The numbers on the batch and the batch itself, as a dict (the test reads them)."""
    mu, log_var, z = make_batch()
    theirs = tc_term(make_framework(BetaTcVae), mu, log_var, z)
    log_qz, log_qzd = tcestim.log_aggregate_posterior(z, mu, log_var, log_weights=0.0)
    matching = (log_qz - log_qzd.sum(1)).mean()
    torch.testing.assert_close(matching, theirs.to(matching.dtype), rtol=1e-4, atol=1e-4)
    swapped = tc_term(make_framework(StratifiedBetaTcVae, dataset_size=N), mu, log_var, z)
    return {
        "B": B, "D": D, "N": N, "torchvision_placeholder": PLACEHOLDER,
        "mu": mu.tolist(), "log_var": log_var.tolist(), "z": z.tolist(),
        "disent": float(theirs), "tcestim_unit_weights": float(matching),
        "mws_minus_offset": float(tcestim.total_correlation(z, mu, log_var, dataset_size=N, estimator="mws"))
        - (D - 1) * math.log(B * N),
        "swapped_stratified": float(swapped),
        "stratified": float(tcestim.total_correlation(z, mu, log_var, dataset_size=N)),
        "offset_predicted": (D - 1) * math.log(B),
    }


def main():
    r = run()
    print(f"B = {B}, D = {D}, N = {N}; float32" + ("  (torchvision: placeholder)" if PLACEHOLDER else ""))
    print(f"disent BetaTcVae tc_loss:         {r['disent']:9.4f}")
    print(f"tcestim log_weights=0.0:          {r['tcestim_unit_weights']:9.4f}")
    print(f"swapped in (stratified, N={N}): {r['swapped_stratified']:9.4f}")
    print(f"difference {r['swapped_stratified'] - r['disent']:.2f} nats; (D - 1) log B = {r['offset_predicted']:.2f}")
    if "--json" in sys.argv[1:]:    # the numbers and the batch, one line (tests/test_peer_packages.py)
        print(json.dumps(r))


if __name__ == "__main__":
    main()
