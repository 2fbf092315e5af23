# The two commands of the README: `make demo` and `make test`. Each creates .venv when missing.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
HOME_DIR ?= work/home
# The home decides Prefect's database too (`defectflow --home H` sets PREFECT_HOME=H/prefect
# itself, whatever is exported); exported here for `prefect` commands run by hand.
export DEFECTFLOW_HOME := $(abspath $(HOME_DIR))
export PREFECT_HOME := $(DEFECTFLOW_HOME)/prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: venv demo test docs scenarios ui ui-check serve serve-model lint bench bench-learning seeds chaos soak clean

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

# The long served scenarios (marked `scenario`) are `make scenarios`: they take minutes each.
test: venv
	$(BIN)/python -m pytest -q -m "not scenario"

# Served lines through bad moments, each a real `serve` and Prefect server: a night frozen past
# its heartbeats, the server stopped and serve killed while a batch lands (~12 min on 2 cores).
scenarios: venv
	$(BIN)/python -m pytest -q -m scenario

lint: venv
	$(BIN)/ruff check flows tasks tests bench

# The home's lasting Prefect server on the database the demo used, in the background
# (http://127.0.0.1:4200); every line of the home uses it; `defectflow server stop` stops it.
ui: venv
	$(BIN)/defectflow server start --port 4200

# Screenshots of the Prefect UI (the newest retrain run's artifacts, the deployments) after
# `make demo`, taken by headless Chromium; skipped when no browser is installed.
ui-check: venv
	$(BIN)/python -m bench.ui_screenshot --home $(HOME_DIR)

# The nightly retrain on its schedule: make serve CONFIG=datasets_cfg/neu_det.yaml
# (work dir: the config's own line, $(HOME_DIR)/lines/<config name>)
serve: venv
	$(BIN)/defectflow serve $(CONFIG)

# The line's champion over HTTP, following the registry (make serve-model CONFIG=... PORT=8000)
PORT ?= 8000
serve-model: venv
	$(BIN)/defectflow serve-model $(CONFIG) --port $(PORT)

# Run after `make demo`: the evaluation throughput is measured on the demo's champion.
bench: venv
	$(BIN)/python -m bench
	$(BIN)/python -m bench.throughput
	$(BIN)/python -m bench.base_size
	$(BIN)/python -m bench.distributed
	$(BIN)/python -m bench.scale
	$(BIN)/python -m bench.step_floors
	$(BIN)/python -m bench.serving

# The demo's night 1 in fresh processes for 5 seeds on the demo's base and 2 on a second base:
# test mAP50 per seed (min / median) and minutes (~35 min on 2 cores).
bench-learning: venv
	$(BIN)/python -m bench.learning

# Every test that trains a model, for 20 pytest-randomly seeds under ATEN_CPU_CAPABILITY=avx2
# and default, each a fresh pytest; the table goes to bench/RESULTS.md.
seeds: venv
	$(BIN)/python -m bench.seeds

# Two served lines on one home, 20 nights each, with faults injected on real parts (nights
# killed, Prefect restarted, a real MLflow server behind a fault proxy, SQLite's write lock held,
# source folders remade), the invariants checked after every night (~45 min on 2 cores).
chaos: venv
	$(BIN)/python -m bench.chaos

# Two lines, 12 nights each, on one home and one Prefect server, 4 nights killed at random and
# run again; checks the registry, the disk and what kills leave behind (~20 min on 2 cores).
soak: venv
	$(BIN)/python -m bench.soak

# The docs as a site (docs/, mkdocs.yml) in site/
docs: venv
	$(BIN)/pip install -q -e '.[docs]'
	$(BIN)/mkdocs build --strict

clean:
	rm -rf work .defectflow
