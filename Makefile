# Every target installs the project into .venv first, so a fresh clone needs nothing but python3.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install install-gpu test demo lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade "pip>=23.2"
	$(BIN)/python -m pip uninstall -y -q mmpretrain 2>/dev/null || true  # earlier checkouts installed as `mmpretrain`
	$(BIN)/python -m pip install -e ".[dev,demo]"
	touch $(STAMP)

install: $(STAMP)

# faiss-gpu replaces faiss-cpu (both provide the `faiss` module, so they cannot sit side by side)
install-gpu: $(STAMP)
	$(BIN)/python -m pip uninstall -y faiss-cpu
	$(BIN)/python -m pip install "faiss-gpu>=1.8"

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
