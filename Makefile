# Two entry points for a new machine: `make demo` (the main job) and `make test` (the suite).
# Both create .venv, install the CPU build of torch first, then the project.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
OUT ?= runs/demo-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install demo test lint clean

$(BIN)/fedrs: pyproject.toml setup.py $(wildcard native/coder/*.cpp native/coder/*.hpp)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[dev,bench]"
	touch $(BIN)/fedrs

install: $(BIN)/fedrs

demo: install
	$(BIN)/fedrs simulate --clients 10 --partition modality --out $(OUT)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy fedrs clients server strategies partitions

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf build *.egg-info fedrs/_coder*.so
