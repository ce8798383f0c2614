# keti-ray: `make up` runs the main job, `make test` runs the whole suite. Both install first.
PYTHON ?= python3.11
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install up replay test lint format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH" >&2; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

# The main job: a local Ray with simulated GPU nodes and the served allocator (Ctrl-C stops it).
up: install
	$(VENV)/bin/keti-ray up

# The FGD paper's replay on the default trace (FGD vs BestFit).
replay: install
	$(VENV)/bin/keti-ray eval --policy fgd,bestfit --seeds 42-51 --workers 2

test: install
	$(MAKE) -C native/vai_accelerator test
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) bench/replay.py
	$(PY) bench/eval_openb.py
	$(PY) bench/plugin_latency.py
	$(PY) bench/serve_allocate.py --policies fgd,ppo
	$(PY) bench/ppo_decision.py
	$(PY) bench/ppo_eval.py --workers 2

clean:
	rm -rf $(VENV) build *.egg-info
	$(MAKE) -C native/vai_accelerator clean
