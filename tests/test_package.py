"""The package's shape: what `import tcestim` loads, what the top level exports, and the names that moved."""
import importlib
import subprocess
import sys
import warnings

import pytest

import tcestim


def _modules_after(code: str) -> set:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys\nprint(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True)
    return set(out.stdout.split())


def test_import_loads_only_the_core():
    loaded = _modules_after("import tcestim")
    for heavy in ("tcestim.experiments", "tcestim.baselines", "tcestim.losses", "tcestim.metrics",
                  "tcestim.distributed", "matplotlib", "scipy"):
        assert heavy not in loaded, f"import tcestim loaded {heavy}"
    assert "tcestim.estimators" in loaded


def test_all_is_the_estimator_api():
    assert set(tcestim.__all__) >= {"total_correlation", "decompose", "decompose_exact", "log_aggregate_posterior",
                                    "MemoryBank", "tc_bracket", "ESTIMATORS", "extension_available"}
    for name in tcestim.__all__:
        assert getattr(tcestim, name) is not None
    assert not any(name in tcestim.__all__ for name in ("data", "models", "train", "knn_total_correlation"))


@pytest.mark.parametrize("name", ["losses", "priors", "metrics", "distributed", "baselines", "experiments",
                                  "testing"])
def test_submodules_load_on_attribute_access(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module = getattr(tcestim, name)
    assert module is importlib.import_module(f"tcestim.{name}")


@pytest.mark.parametrize("old, new", [
    ("tcestim.data", "tcestim.experiments.data"),
    ("tcestim.models", "tcestim.experiments.models"),
    ("tcestim.train", "tcestim.experiments.train"),
    ("tcestim.synthetic", "tcestim.experiments.synthetic"),
    ("tcestim.discriminator", "tcestim.baselines.density_ratio"),
    ("tcestim.knn", "tcestim.baselines.knn"),
])
def test_moved_modules_warn_and_are_the_new_module(old, new):
    code = (f"import warnings\nwarnings.simplefilter('error')\n"
            f"try:\n    import {old}\nexcept DeprecationWarning as w:\n    print('WARNED', w)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "WARNED" in out and new in out
    code = (f"import warnings\nwarnings.simplefilter('ignore')\nimport {old}, {new}\n"
            f"print({new}.__spec__.name, {old} is {new})")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [new, "True"]  # the alias is the module itself, which keeps its own spec
    with pytest.warns(DeprecationWarning, match=new.replace(".", r"\.")):
        module = importlib.import_module(old) if old not in sys.modules else getattr(tcestim, old.split(".")[1])
    assert module is importlib.import_module(new)


def test_moved_attribute_warns():
    from tcestim.baselines import knn_total_correlation
    with pytest.warns(DeprecationWarning, match="tcestim.baselines.knn_total_correlation"):
        assert tcestim.knn_total_correlation is knn_total_correlation
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        tcestim.no_such_name  # noqa: B018


def test_command_line_entry_point():
    out = subprocess.run([sys.executable, "-m", "tcestim", "--help"], capture_output=True, text=True, check=True)
    for command in ("demo", "bias", "train", "evaluate"):
        assert command in out.stdout


def test_submodules_are_attributes():
    assert callable(tcestim.distributed.total_correlation)
    assert callable(tcestim.baselines.density_ratio.permute_dims)
