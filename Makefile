# `make demo` and `make test` do all the set-up on a fresh machine: a .venv with the
# pinned toolchain (requirements-dev.txt), then an (incremental) build of peftcore.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Two cores here: keep the C++/CUDA build at two jobs.
export CMAKE_BUILD_PARALLEL_LEVEL ?= 2

.PHONY: demo test test-fast install bench clean

$(VENV)/.deps-stamp: requirements-dev.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $@

# torch must be importable while CMake configures, hence --no-build-isolation.
install: $(VENV)/.deps-stamp
	$(PY) -m pip install --quiet --no-build-isolation --no-deps .
	$(PY) -c "import peftcore; print('peftcore', peftcore.build_info())"

test: install
	$(PY) -m pytest

test-fast: install
	$(PY) -m pytest -m "not slow"

demo: install
	$(PY) -m peftcore fetch-data
	$(PY) -m peftcore demo

bench: install
	$(PY) bench/run.py --quick
	$(PY) bench/report.py

clean:
	rm -rf build $(VENV)
