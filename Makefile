# cliplab: `make demo` runs the main job, `make test` the test suite. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.cliplab-installed

.PHONY: setup test lint demo clean bench

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/reference.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[test,train,dev]"
	$(PY) -m pip install -q --no-deps -r requirements/reference.txt
	touch $(STAMP)

test: setup
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

bench: setup
	$(PY) benchmarks/bench_tokenizer.py

demo: setup
	$(PY) -m cliplab demo

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
