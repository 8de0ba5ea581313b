#!/usr/bin/env bash
# Builds the sdist, installs it into a fresh virtual environment that has torch and nothing of this
# checkout, and checks the installed package: it imports from that environment, its compiled
# extension loads, it ships py.typed, and the quick demonstration runs.
#
#   scripts/check_sdist.sh [PYTHON]      PYTHON builds the sdist (default .venv/bin/python)
#
# torch goes into the fresh environment with pip (TORCH_SPEC, default the version PYTHON has), so
# the check needs the same package index as `make install`. TCESTIM_CUDA is passed through.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tcestim-sdist.XXXXXX")
trap 'rm -rf "$WORK"' EXIT

# -P: the repository's own build/ folder (CMake's) must not shadow the build package
"$PY" -P -c "import build" 2>/dev/null || "$PY" -m pip install -q build
TORCH_SPEC=${TORCH_SPEC:-torch==$("$PY" -c "import torch; print(torch.__version__.split('+')[0])")}

echo "== building the sdist"
"$PY" -P -m build --sdist --no-isolation --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 || { cat "$WORK/build.log"; exit 1; }
SDIST=$(ls "$WORK"/dist/tcestim-*.tar.gz)
tar -tzf "$SDIST" >"$WORK/members.txt"
for member in csrc/ops.cpp csrc/binding.h csrc/cpu/mixture_logdensity.h csrc/cpu/exp2.h setup.py \
              tcestim/py.typed tcestim/_ops.py; do
    grep -q "^tcestim-[^/]*/$member\$" "$WORK/members.txt" || { echo "sdist lacks $member"; exit 1; }
done
echo "   $(basename "$SDIST"): $(grep -c '^tcestim-[^/]*/csrc/.' "$WORK/members.txt") entries under csrc/"

echo "== fresh environment with $TORCH_SPEC"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q "$TORCH_SPEC" "setuptools>=77" wheel ninja

echo "== installing the sdist (compiles the extension)"
MAX_JOBS=${MAX_JOBS:-2} "$VPY" -m pip install -q --no-build-isolation "$SDIST"

echo "== checking the installed package"
cd "$WORK"    # away from the checkout, so that `import tcestim` cannot find its sources
"$VPY" - <<'PYCODE'
import os, sys
import tcestim
where = os.path.dirname(tcestim.__file__)
assert where.startswith(sys.prefix), f"tcestim imported from {where}, not from the fresh environment"
assert tcestim.extension_available(), "the compiled extension did not load"
assert os.path.exists(os.path.join(where, "py.typed")), "py.typed is not installed"
print(f"   tcestim {tcestim.__version__} from {where}; extension loaded, CPU kernels: {tcestim.cpu_isa()}")
PYCODE
"$VPY" -m tcestim demo --quick >"$WORK/demo.log" 2>&1 || { cat "$WORK/demo.log"; exit 1; }
tail -n 3 "$WORK/demo.log"
echo "== sdist OK"
