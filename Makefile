# Two commands on a fresh machine: `make demo` (the main job) and `make test` (the whole suite).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
EXTRAS ?= dev,postgres,s3,tokenize,curate,torch,hf,ray,k8s,dp,serve,tabular,live,monitor,server,models,privacy
TEST_WORKERS ?= 2

.PHONY: install demo test test-random lint typecheck clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# the CPU build of PyTorch first, so no extra pulls a CUDA build
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[$(EXTRAS)]'
	# Flower (federated training) without its pins on protobuf<7 / typer<0.21 (see the `flower` extra)
	$(BIN)/pip install -q --no-deps 'flwr==1.42.0' 'iterators==0.0.2' 'pycryptodome>=3.18,<4' 'tomli>=2' 'tomli-w>=1' \
		'grpcio-health-checking>=1.70,<2'
	touch $@

install: $(BIN)/.installed

demo: install
	$(BIN)/granary demo

# Hypothesis runs derandomized here (profile `ci` in tests/conftest.py): the same examples every run, so a
# landing never meets a new random counterexample. `make test-random` explores afresh each run.
test: install
	GRANARY_HYPOTHESIS_PROFILE=ci $(BIN)/pytest -q -n $(TEST_WORKERS) -p no:cacheprovider

test-random: install
	GRANARY_HYPOTHESIS_PROFILE=random $(BIN)/pytest -q -n $(TEST_WORKERS) -p no:cacheprovider

lint: install
	$(BIN)/ruff check src tests benchmarks

typecheck: install
	$(BIN)/mypy src/granary

clean:
	rm -rf $(VENV) build dist src/*.egg-info .pytest_cache .hypothesis
