"""Names that moved in 0.2, kept importable for one release with a DeprecationWarning.

``tcestim.data``, ``tcestim.models``, ``tcestim.train``, ... moved into :mod:`tcestim.experiments`
and ``tcestim.knn`` / ``tcestim.discriminator`` into :mod:`tcestim.baselines`. Both the attribute
(``tcestim.data``) and the import (``from tcestim.data import SpritesDataset``) resolve to the new
module itself (no copy), after a warning that names the new place.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

MOVED_MODULES = {
    "tcestim.data": "tcestim.experiments.data",
    "tcestim.models": "tcestim.experiments.models",
    "tcestim.train": "tcestim.experiments.train",
    "tcestim.demo": "tcestim.experiments.demo",
    "tcestim.bias_study": "tcestim.experiments.bias_study",
    "tcestim.synthetic": "tcestim.experiments.synthetic",
    "tcestim.knn": "tcestim.baselines.knn",
    "tcestim.discriminator": "tcestim.baselines.density_ratio",
}

MOVED_ATTRIBUTES = {
    "knn_total_correlation": ("tcestim.baselines", "knn_total_correlation"),
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new} in tcestim 0.2; the old name will be removed in 0.3",
                  DeprecationWarning, stacklevel=3)


def moved_attribute(name: str):
    """The object behind a moved top-level name of ``tcestim`` (for its module ``__getattr__``)."""
    full = f"tcestim.{name}"
    if full in MOVED_MODULES:
        _warn(full, MOVED_MODULES[full])
        return importlib.import_module(MOVED_MODULES[full])
    if name in MOVED_ATTRIBUTES:
        module, attribute = MOVED_ATTRIBUTES[name]
        _warn(full, f"{module}.{attribute}")
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module 'tcestim' has no attribute {name!r}")


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec):
        _warn(spec.name, MOVED_MODULES[spec.name])
        module = importlib.import_module(MOVED_MODULES[spec.name])
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module):
        # the import system has just set module.__spec__ to the alias's spec: give the module its own back
        module.__spec__ = self._own_spec


def install() -> None:
    if not any(isinstance(finder, _Alias) for finder in sys.meta_path):
        sys.meta_path.append(_Alias())
