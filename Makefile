# cipa-proxy: `make test` installs what it needs (once) and runs lint + the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PORT   ?= 3128

.PHONY: install test lint format run bench clean

$(BIN)/cipa-proxy: pyproject.toml setup.py constraints.txt proxy/_visible.c
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[test]'
	@touch $@

install: $(BIN)/cipa-proxy

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: install
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

test: lint
	$(BIN)/pytest -q

run: install
	$(BIN)/cipa-proxy run --config config.yaml --listen-port $(PORT)

bench: install
	$(BIN)/python bench/engine.py
	$(BIN)/python bench/proxy.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info proxy/*.so
