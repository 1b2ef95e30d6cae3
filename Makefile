# cliplab: `make demo` runs the main job, `make test` the test suite. Both set themselves up.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
STAMP := $(VENV)/.cliplab-installed
# when make started, before any set-up: `make demo` finishes within 15 minutes of it
STARTED := $(shell date +%s)

.PHONY: setup test lint demo finetune-demo reproduce clean bench data sources-min

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/reference.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==$(TORCH_VERSION)
	$(PY) -m pip install -q -e ".[test,train,dev,parquet,curate,svg,eval,search,serve,browser,onnx,scale,hub]"
	$(PY) -m pip install -q --no-deps -r requirements/reference.txt
	touch $(STAMP)

# A few real sources (about 25 s once, under a second after) so the tests exercise real data.
sources-min: setup
	$(PY) -m cliplab data install --only emoji-datasource-twitter emojibase-data tuxpaint-stamps-default

# All real sources, then every shard set and evaluation set (cached: cheap on re-runs).
data: setup
	scripts/install_sources.sh
	$(PY) -m cliplab data build

test: setup sources-min
	$(PY) -m pytest -q

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts
	$(VENV)/bin/ruff format --check src tests benchmarks scripts

# Side by side with the peers (OpenCLIP, transformers, OpenAI's tokenizer), installed by
# setup: embedding on every runtime, training steps and levers, the tokenizer (~25 minutes).
# Results: benchmarks/results/{inference,train,tokenizer}.json
bench: setup
	$(PY) benchmarks/bench_inference.py
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_finetune.py
	$(PY) benchmarks/bench_tokenizer.py --texts 10000 --repeats 3
	$(PY) benchmarks/summary.py

demo: setup
	$(PY) -m cliplab demo --within 15 --started $(STARTED)

# Fine-tune the demo's model on Fashion-MNIST (FLYP, locked image tower, WiSE-FT), within 15
# minutes once the demo's model exists (trained first, with its own budget, if it does not).
finetune-demo: setup
	$(PY) -m cliplab demo --recipe finetune --within 15 --started $(STARTED)

# The paper's findings at our scale (about 45 minutes; reuses the demo's data and model).
reproduce: setup
	$(PY) -m cliplab reproduce

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache
