# Two entry points on a fresh machine:  `make demo`  and  `make test`.
# Everything installs into ./.venv; torch is installed only if it is missing.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_SPEC ?= torch==2.13.0
SOURCES := setup.py pyproject.toml $(wildcard csrc/*.cpp csrc/*.h csrc/*/*.cpp csrc/*/*.h csrc/*/*.inc csrc/*/*.cu csrc/*/*.cuh)

.PHONY: install demo test test-python test-cpp test-slow bench bias clean

$(VENV)/.installed: $(SOURCES)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install $(TORCH_SPEC)
	$(PY) -m pip install "setuptools>=77" wheel ninja
	MAX_JOBS=$${MAX_JOBS:-2} $(PY) -m pip install --no-build-isolation -e ".[test]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(PY) -m tcestim demo

test: test-python test-cpp

test-python: install
	TCESTIM_REQUIRE_EXTENSION=1 $(PY) -m pytest -q -p no:cacheprovider

# The long job: slow tests and 1000 hypothesis examples per property (not part of `make test`).
test-slow: install
	TCESTIM_REQUIRE_EXTENSION=1 TCESTIM_HYPOTHESIS_EXAMPLES=1000 $(PY) -m pytest -q -p no:cacheprovider -m "slow or not slow"

test-cpp:
	cmake -S . -B build/cmake -DCMAKE_BUILD_TYPE=Release
	cmake --build build/cmake -j 2
	ctest --test-dir build/cmake --output-on-failure

bench: install
	$(PY) -m pip install matplotlib
	$(PY) benchmarks/run_cpu.py

bias: install
	$(PY) -m tcestim bias --out benchmarks/results/bias

clean:
	rm -rf build $(VENV) tcestim/*.so *.egg-info
