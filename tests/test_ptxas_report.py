"""scripts/ptxas_report.py: kernel labels from mangled names, whatever digits the namespace ids hold."""
import importlib.util
import pathlib

import pytest

SCRIPT = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "ptxas_report.py"
spec = importlib.util.spec_from_file_location("ptxas_report", SCRIPT)
ptxas_report = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ptxas_report)


@pytest.mark.parametrize("mangled, label", [
    # The anonymous namespace's id ends in "...526ec406_9197": "26" then 26 characters reach the end
    # of "ec406_919714forward_kernel", an identifier ending in "kernel" that is not the kernel's name.
    ("_ZN7tcestim4cuda49_GLOBAL__N__28999a67_11_forward_cu_526ec406_919714forward_kernelIdLi1ENS1_12DenseWeights"
     "IdEEEEvNS1_11SweepParamsIT_EET1_", "forward_kernel double dense"),
    ("_ZN7tcestim4cuda49_GLOBAL__N__28999a67_11_backward_cu_526ec406_919929backward_columns_kernel_largeIfLi1ENS1_"
     "17StructuredWeightsIfEEEEvNS1_11SweepParamsIT_EET1_", "backward_columns_kernel_large float structured"),
    ("_ZN7tcestim4cuda14forward_kernelIfEEvv", "forward_kernel float"),
    ("_Z9not_a_fooi", "_Z9not_a_fooi"),
])
def test_kernel_label(mangled, label):
    assert ptxas_report.kernel_label(mangled) == label
