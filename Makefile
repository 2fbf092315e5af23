# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOME_DIR ?= work/home
export DEFECTFLOW_HOME := $(abspath $(HOME_DIR))
export PREFECT_HOME := $(DEFECTFLOW_HOME)/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: venv demo test ui ui-check serve lint bench bench-learning clean

$(BIN)/defectflow: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	@# The install peaks at 8.7 GB of disk (6.1 GB of venv + 2.6 GB of downloaded wheels, torch's
	@# CUDA packages mostly). --no-cache-dir: where the index allows caching (PyPI does), pip would
	@# also keep those 2.6 GB of wheels in ~/.cache/pip for good.
	$(BIN)/pip install --quiet --no-cache-dir --upgrade pip
	$(BIN)/pip install --progress-bar off --no-cache-dir --no-compile -e '.[dev]'
	@# pip byte-compiles wheel by wheel on one core (2 min for torch and co. on 2 cores); this uses
	@# every core. A file written for a newer Python cannot compile here: pip skips those too.
	$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib > /dev/null || true
	touch $@

venv: $(BIN)/defectflow

demo: venv
	$(BIN)/defectflow demo --work work/demo

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check flows tasks tests bench

# The Prefect UI on the database the demo used (http://127.0.0.1:4200).
ui: venv
	$(BIN)/prefect server start --host 127.0.0.1 --port 4200

# Screenshots of the Prefect UI (the newest retrain run's artifacts, the deployments) after
# `make demo`, taken by headless Chromium; skipped when no browser is installed.
ui-check: venv
	$(BIN)/python -m bench.ui_screenshot --home $(HOME_DIR)

# The nightly retrain on its schedule: make serve CONFIG=datasets_cfg/neu_det.yaml
serve: venv
	$(BIN)/defectflow serve $(CONFIG) --work work/retrain

# Run after `make demo`: the evaluation throughput is measured on the demo's champion.
bench: venv
	$(BIN)/python -m bench
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.base_size

# The demo's night 1 for 3 seeds in fresh processes: test mAP50 (min / median) and minutes.
bench-learning: venv
	$(BIN)/python -m bench.learning

clean:
	rm -rf work .defectflow
