# Set-up and checks. `make test` and `make demo` build .venv themselves on a fresh Linux
# machine with only Python; a torch that is already installed is reused, never replaced.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
# The CPU build to take when there is no torch and no GPU (it lies on disk on our CI machines).
CPU_TORCH ?= torch==2.13.0

.PHONY: test lint wheel-check demo bench bench-quick fuzz clean

$(VENV)/.installed: pyproject.toml
	@if [ ! -x $(PY) ]; then \
	  if $(PYTHON) -c "import torch" 2>/dev/null; then \
	    echo "reusing the installed torch"; $(PYTHON) -m venv --system-site-packages $(VENV); \
	  else $(PYTHON) -m venv $(VENV); fi; \
	fi
	@if ! $(PY) -c "import torch" 2>/dev/null; then \
	  if command -v nvidia-smi >/dev/null 2>&1; then $(PY) -m pip install torch; \
	  else $(PY) -m pip install "$(CPU_TORCH)" || $(PY) -m pip install torch; fi; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	@touch $@

test: $(VENV)/.installed lint
	$(PY) -m pytest -q -p no:cacheprovider

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

# What `pip install .` gives a library user: the wheel, built and installed with its
# declared dependencies into a clean venv (no system site packages) that holds torch
# alone before it, then imported and run (.ci/check_wheel.py): an import the package
# does not declare fails here. torch comes as for .venv: $(CPU_TORCH) (on disk on our CI
# machines) without an NVIDIA driver, the default torch with one.
CHECK_DIR := build/wheel-check
CHECK_PY  := $(CHECK_DIR)/venv/bin/python
wheel-check:
	rm -rf $(CHECK_DIR)
	$(PYTHON) -m venv $(CHECK_DIR)/venv
	@if command -v nvidia-smi >/dev/null 2>&1; then $(CHECK_PY) -m pip install -q torch; \
	else $(CHECK_PY) -m pip install -q "$(CPU_TORCH)" || $(CHECK_PY) -m pip install -q torch; fi
	$(CHECK_PY) -m pip wheel -q --no-deps -w $(CHECK_DIR)/dist .
	$(CHECK_PY) -m pip install -q $(CHECK_DIR)/dist/betavae_triton-*.whl
	$(CHECK_PY) -I -W "ignore:Failed to initialize NumPy" .ci/check_wheel.py  # torch: no numpy

# Property tests with fresh random examples until the budget is spent (not run by CI).
MINUTES ?= 30
fuzz: $(VENV)/.installed
	$(PY) tests/fuzz.py --minutes $(MINUTES) $(ARGS)

demo: $(VENV)/.installed
	$(PY) -m betavae_triton.demo $(ARGS)

bench: $(VENV)/.installed
	$(PY) -m perf.bench $(ARGS)

bench-quick: $(VENV)/.installed
	$(PY) -m perf.bench --quick $(ARGS)

clean:
	rm -rf $(VENV) demo-output perf/out .pytest_cache .hypothesis build/wheel-check
