# callbridge — every target installs what it needs into .venv on its own.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install run test check lint typecheck contracts format bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

## The demo: the Bitrix24 emulator, recorded PBX calls over AMI and the bridge between them
## (production runs `callbridge run`: see the README).
run: install
	$(BIN)/callbridge demo

## The whole test suite (SQLite always; PostgreSQL too when CALLBRIDGE_TEST_POSTGRES_URL is set).
test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff format --check src tests benchmarks migrations
	$(BIN)/ruff check src tests benchmarks migrations

typecheck: install
	$(BIN)/mypy

contracts: install
	$(BIN)/lint-imports

check: lint typecheck contracts test

format: install
	$(BIN)/ruff format src tests benchmarks migrations
	$(BIN)/ruff check --fix src tests benchmarks migrations

bench: install
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	$(BIN)/python benchmarks/queue.py
	$(BIN)/python benchmarks/ami.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
