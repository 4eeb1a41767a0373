# The two quickstart commands are `make demo` and `make test`; each sets up .venv on first use.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SKAB_DATA ?= ../shared/datasets/skab
DATASETS ?= ../shared/datasets
JOBS ?= 2

.PHONY: venv demo test check lint types bench skab detect-report clean

$(STAMP): pyproject.toml deploy/constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c deploy/constraints.txt -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/anomaly demo --out runs/demo

# Two pytest workers: most of the integration tests' time is spent waiting on brokers and daemons, so two
# halve the suite's wall time on 2 cores (worksteal keeps the long broker tests from queueing on one worker).
TEST_WORKERS ?= 2

test: $(STAMP)
	@command -v promtool >/dev/null && command -v prometheus-alertmanager >/dev/null || \
	  { echo 'installing prometheus + alertmanager (Debian packages) for the integration tests'; \
	    (apt-get install -y -q prometheus prometheus-alertmanager >/dev/null 2>&1 || \
	     (apt-get update -q >/dev/null && apt-get install -y -q prometheus prometheus-alertmanager >/dev/null)) || \
	    echo 'warning: could not install prometheus; its integration tests will fail'; }
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist worksteal

lint: $(STAMP)
	$(BIN)/ruff check anomaly tests
	$(BIN)/ruff format --check anomaly tests

types: $(STAMP)
	$(BIN)/mypy anomaly

check: lint types test

bench: $(STAMP)
	$(BIN)/anomaly bench

skab: $(STAMP)
	$(BIN)/anomaly skab $(SKAB_DATA) -p pipelines/skab.toml --json-out runs/skab/summary.json

# Detection quality tables of the README: SKAB with project defaults and with pipelines/skab.toml, then NASA SMAP
# and MSL per channel with defaults; model vs z-score and PCA baselines, own vs oracle threshold. The NASA runs
# train 53 + 27 models (about 15 s each on one core): JOBS parallel processes.
detect-report: $(STAMP)
	$(BIN)/anomaly skab $(DATASETS)/skab --defaults --json-out runs/detect/skab-defaults.json
	$(BIN)/anomaly skab $(DATASETS)/skab -p pipelines/skab.toml --json-out runs/detect/skab-pipeline.json
	$(BIN)/anomaly nasa $(DATASETS)/smap_msl --dataset smap -j $(JOBS) --json-out runs/detect/smap.json
	$(BIN)/anomaly nasa $(DATASETS)/smap_msl --dataset msl -j $(JOBS) --json-out runs/detect/msl.json

clean:
	rm -rf runs .pytest_cache
