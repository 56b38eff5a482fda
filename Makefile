# `make demo` and `make test` work on a fresh clone with nothing installed: they create .venv
# and install the package the first time (a few minutes; torch is large), and skip it after.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export SPEECHTUNE_CACHE ?= $(CURDIR)/.cache
export PYTHONUNBUFFERED := 1

.PHONY: demo demo-bilingual demo-seeds test test-fast install benchmark clean docker-images
SEEDS := seed000_mono seed000_bilingual seed001_presets seed002_staged seed003_convergence seed004_crnn

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

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

# the HTML report test opens the report in Debian's Chromium (tests/test_analysis.py)
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	$$(command -v sudo) apt-get install -y -q chromium >/dev/null || \
	  { $$(command -v sudo) apt-get update -q && $$(command -v sudo) apt-get install -y -q chromium >/dev/null; }

test: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q --durations=10

# the tests that start no Ray and train nothing for long (markers in tests/conftest.py): about 2 minutes
test-fast: $(STAMP) $(CHROMIUM)
	$(PY) -m pytest -q -m "not ray and not slow" --durations=5

benchmark: $(STAMP)
	$(PY) benchmarks/train_throughput.py
	$(PY) benchmarks/report_load.py
	$(PY) benchmarks/input_pipeline.py
	$(PY) benchmarks/features.py

# images for cluster nodes (docker/; used by cluster/configs/ and docker/compose.yaml)
IMAGE_TAG := $(shell sed -n 's/^version = "\(.*\)"/\1/p' pyproject.toml)
docker-images:
	docker build -f docker/Dockerfile.cpu -t speechtune:$(IMAGE_TAG)-cpu .
	docker build -f docker/Dockerfile.gpu -t speechtune:$(IMAGE_TAG)-gpu .

clean:
	rm -rf experiments reports .pytest_cache
