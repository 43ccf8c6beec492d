# Kiln: `make run` starts the dev fleet, `make test` runs the suite. Both install first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint typecheck check bench gpu-proof clean install tiny chromium stunnel

$(STAMP): setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

tiny: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/kiln models make-tiny

run: tiny
	@echo "Kiln dev fleet: API http://127.0.0.1:$${KILN_API_PORT:-8000}  Flower http://127.0.0.1:$${KILN_FLOWER_PORT:-5555}"
	PATH=$(abspath $(BIN)):$$PATH HF_HUB_OFFLINE=1 $(BIN)/honcho -f Procfile.dev start

# The browser tests drive Debian's chromium (never a downloaded browser).
chromium:
	@command -v chromium >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	  else echo "install Debian's chromium for the browser tests" >&2; fi; }

# The TLS tests put Debian's stunnel4 in front of Valkey and S3 (the embedded Valkey has
# no TLS built in).
stunnel:
	@command -v stunnel4 >/dev/null || { \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq stunnel4; \
	  else echo "install Debian's stunnel4 for the TLS tests" >&2; fi; }

# One pytest process per core and two more (the fault and host tests spend much of their
# time waiting out real timeouts, which leaves cores idle; the processes share their
# launchers, so one more costs little), a test module each at a time, in the order
# tests/conftest.py gives (longest first; xdist's own order is by test count).
TEST_PROCS ?= $(shell echo $$(( $$(nproc) + 2 )))
test: $(STAMP) chromium stunnel
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_PROCS) --dist loadfile --no-loadscope-reorder; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "no tests were collected" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: $(STAMP)
	$(BIN)/mypy app tasks pipelines config bench harness

check: lint typecheck test

bench: $(STAMP)
	for b in batching overhead baseline api startup compile multiplex; do $(BIN)/python -m bench.$$b || exit 1; done
	$(BIN)/python -m bench.gpu
	$(BIN)/python -m bench.plots

# The GPU proof: full-size SDXL and FLUX.1-schnell on a CUDA GPU (≤ 8 min on one H100);
# without CUDA, its smoke mode (tiny configs, same code) on the CPU, and it says so.
gpu-proof: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m bench.gpu $(ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
