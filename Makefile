# Two entry points for a newcomer: `make demo` and `make test`. Both set up .venv on first use
# from the exact versions in constraints.txt (CPU machines; a GPU user may install the ranges
# in pyproject.toml with their own torch instead).
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-stamp
export PREFECT_SERVER_ANALYTICS_ENABLED := false
# Test processes: most tests wait on subprocesses, servers and S3 as much as they compute, so two
# keep two cores busy; each test file runs whole in one process, sharing its module fixtures.
TEST_WORKERS ?= 2

.PHONY: setup demo test bench-codec-speed bench-ttft-batch clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -c constraints.txt -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/ttft demo

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadfile

bench-codec-speed: $(STAMP)
	$(VENV)/bin/python benchmarks/codec_speed.py

bench-ttft-batch: $(STAMP)
	$(VENV)/bin/python benchmarks/ttft_batch.py

clean:
	rm -rf $(VENV) build *.egg-info
