# Every target installs the project into .venv first, so a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install test demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade "pip>=23.2"
	$(BIN)/python -m pip install -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

test: $(STAMP)
	WANDB_MODE=offline WANDB_SILENT=true $(BIN)/python -m pytest -q tests

demo: $(STAMP)
	WANDB_MODE=offline WANDB_SILENT=true $(BIN)/python scripts/demo.py

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	for b in scripts/bench_*.py; do $(BIN)/python $$b; done

clean:
	rm -rf $(VENV) logs outputs multirun wandb .pytest_cache
