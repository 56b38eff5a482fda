# `make demo` and `make test` work on a fresh clone with nothing installed: they create .venv
# and install the package the first time (a few minutes; torch is large), and skip it after.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export SPEECHTUNE_CACHE ?= $(CURDIR)/.cache
export PYTHONUNBUFFERED := 1

.PHONY: demo demo-bilingual demo-seeds test test-fast lint-imports install lock benchmark bench-deps search-benchmark clean \
        docker-images
SEEDS := seed000_mono seed000_bilingual seed001_presets seed002_staged seed003_convergence seed004_crnn

# requirements.lock pins every package (`make lock` writes it). uv installs exactly those versions
# without resolving, in parallel (about 20 s here, against about 2 minutes for pip resolving
# pyproject.toml); plain pip installs the same lock where uv cannot run. PIP_FIND_LINKS
# (/opt/wheels here) is where this machine keeps torch's wheel: uv is told to look there too.
# --compile-bytecode: with PYTHONDONTWRITEBYTECODE set (as here) nothing would ever be compiled,
# and every Ray worker would import torch and Ray from source (twice the start-up time).
LOCK       := requirements.lock
UV_VERSION := 0.13.9
FIND_LINKS := $(foreach d,$(PIP_FIND_LINKS),--find-links $(d))

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv==$(UV_VERSION)
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps --compile-bytecode $(FIND_LINKS) -r $(LOCK) \
	  || $(PY) -m pip install -q --disable-pip-version-check --no-deps -r $(LOCK)
	$(VENV)/bin/uv pip install -q --python $(PY) --no-deps --no-build-isolation -e . \
	  || $(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e .
	$(PY) -m tune_jobs.lockcheck $(LOCK)
	touch $(STAMP)

install: $(STAMP)

# resolve pyproject.toml (with its extras) in a clean venv and pin the result
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
	{ echo "# pinned by \`make lock\` from pyproject.toml (.[test]) with pip on Python $$(.lock-venv/bin/python -c 'import platform; print(platform.python_version())')"; \
	  .lock-venv/bin/pip freeze --all --exclude-editable | grep -v -E '^(pip|uv)==' | LC_ALL=C sort -f; } > $(LOCK)
	rm -rf .lock-venv

demo: $(STAMP)
	$(VENV)/bin/speechtune tune tune_jobs/jobs/demo.yaml --report-dir reports/demo

# conformer_aed on English + Persian: one CPU-sized run that reports val_wer and val_lid_acc
demo-bilingual: $(STAMP)
	$(VENV)/bin/speechtune tune tune_jobs/jobs/conformer_bilingual_cpu.yaml --report-dir reports/bilingual

# every seed's job at its CPU profile, one after the other (reports in reports/seeds/NAME)
demo-seeds: $(STAMP)
	set -e; for j in $(SEEDS); do \
	  echo "== $$j"; \
	  $(VENV)/bin/speechtune tune tune_jobs/jobs/$$j.yaml --profile cpu --report-dir reports/seeds/$$j; \
	  $(VENV)/bin/speechtune check experiments/$$j; \
	done
	@echo "== the closing table: each seed's bar (its job's \`bars:\`), read from its experiment"
	$(VENV)/bin/speechtune bars $(SEEDS:%=tune_jobs/jobs/%.yaml) --profile cpu --json reports/seeds/closing.json

# the HTML report test opens the report in Debian's Chromium (tests/test_analysis.py)
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	$$(command -v sudo) apt-get install -y -q chromium >/dev/null || \
	  { $$(command -v sudo) apt-get update -q && $$(command -v sudo) apt-get install -y -q chromium >/dev/null; }

# two pytest-xdist workers, each with its own shared Ray head; tests that start Rays of their own run
# in one of them, one after the other, and the order units are handed out in is set in tests/conftest.py
TEST_WORKERS ?= 2
test: $(STAMP) $(CHROMIUM) lint-imports
	$(PY) -m pytest -q --durations=10 -n $(TEST_WORKERS) --no-loadscope-reorder

# the tests that start no Ray and train nothing for long (markers in tests/conftest.py): about 2 minutes
test-fast: $(STAMP) $(CHROMIUM) lint-imports
	$(PY) -m pytest -q -m "not ray and not slow" --durations=5

# the layering (.importlinter; ARCHITECTURE.md): which package may import which, no cycles
lint-imports: $(STAMP)
	$(VENV)/bin/lint-imports --no-cache

benchmark: $(STAMP)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/report_load.py
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/features.py

# the search benchmark's peers (benchmarks/peers.py), never needed by `make test` or a job.
# syne-tune 0.13 is the last release with MOBSTER, Hyper-Tune and DyHPO; it declares numpy<1.27
# but runs on this numpy (its replays here): installed without its pins, with what it imports
bench-deps: $(STAMP)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[bench]'
	$(PY) -m pip install -q --disable-pip-version-check --no-deps syne-tune==0.13.0 autograd statsmodels patsy \
	  more-itertools

search-benchmark: bench-deps
	$(PY) benchmarks/search_efficiency.py --json benchmarks/results/search_efficiency.json \
	  --plot benchmarks/results/search_efficiency.png

# images for cluster nodes (docker/; used by cluster/configs/ and docker/compose.yaml)
IMAGE_TAG := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
docker-images:
	docker build -f docker/Dockerfile.cpu -t speechtune:$(IMAGE_TAG)-cpu .
	docker build -f docker/Dockerfile.gpu -t speechtune:$(IMAGE_TAG)-gpu .

clean:
	rm -rf experiments reports .pytest_cache
