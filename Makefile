# Two entry points on a fresh machine:  `make demo`  and  `make test`.
# Everything installs into ./.venv; torch is installed only if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h csrc/*/*.inc csrc/*/*.cu csrc/*/*.cuh)

.PHONY: install demo test lint typecheck test-python test-cpp test-sdist test-slow bench bias clean docs

$(VENV)/.installed: $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install "setuptools>=77" wheel ninja
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install --no-build-isolation -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m tcestim demo

test: lint typecheck test-python test-cpp docs test-sdist

# ruff's rule set is in pyproject.toml ([tool.ruff]).
lint: install
	$(PY) -m ruff check .

# mypy over the library (configuration and what it leaves out: [tool.mypy] in pyproject.toml).
typecheck: install
	$(PY) -c "import mypy" 2>/dev/null || $(PY) -m pip install -q "mypy>=1.10"
	$(PY) -m mypy

# The test suite, then every docstring example of the package (doctest).
test-python: install
	TCESTIM_REQUIRE_EXTENSION=1 $(PY) -m pytest -q -p no:cacheprovider
	TCESTIM_REQUIRE_EXTENSION=1 $(PY) -m pytest -q -p no:cacheprovider --doctest-modules tcestim

# The long job: slow tests and 1000 hypothesis examples per property (not part of `make test`).
test-slow: install
	TCESTIM_REQUIRE_EXTENSION=1 TCESTIM_HYPOTHESIS_EXAMPLES=1000 $(PY) -m pytest -q -p no:cacheprovider -m "slow or not slow"

test-cpp:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release
	cmake --build build/cmake -j 2
	ctest --test-dir build/cmake --output-on-failure

DOCS_DEPS := "mkdocs>=1.6" "mkdocs-material>=9.5" "mkdocstrings[python]>=0.26"

# The documentation site (mkdocs.yml) into site/; --strict fails on any warning (broken links and
# references). Missing docstrings and examples fail tests/test_docs.py in test-python.
docs: install
	$(PY) -c "import material, mkdocstrings_handlers.python" 2>/dev/null || $(PY) -m pip install -q $(DOCS_DEPS)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict --site-dir site

# The sdist, installed into a fresh venv (torch from the same index as install), imported, demo --quick.
test-sdist: install
	bash scripts/check_sdist.sh $(PY)

bench: install
	$(PY) -m pip install matplotlib
	$(PY) benchmarks/run_cpu.py

bias: install
	$(PY) -m tcestim bias --out benchmarks/results/bias

clean:
	rm -rf build $(VENV) tcestim/*.so *.egg-info site
