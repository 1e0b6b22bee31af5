# Two commands from a fresh machine: `make demo` and `make test`. Each first creates or reuses the
# project's virtual environment .venv (scripts/setup-venv.sh: a few seconds when nothing changed),
# then runs only the venv's own tools. CI (.ci/run) runs `make lint` and `make test`.
#
#   make demo DEMO_ARGS="--out runs/demo"
#   make test PYTEST_ARGS="tests/test_loader.py -q"
#   make venv PYTHON=python3.12      # the interpreter that creates .venv (3.11 or newer)

BIN := .venv/bin
PYTHON ?= python3
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: help demo test lint venv chromium clean-venv

help:
	@echo "make demo    set up .venv, then run the demo (bielik-quant demo \$$DEMO_ARGS)"
	@echo "make test    set up .venv (and Debian's chromium), then run pytest \$$PYTEST_ARGS"
	@echo "make lint    set up .venv, then ruff and the corpus manifest check"

demo: venv
	$(BIN)/bielik-quant demo $(DEMO_ARGS)

test: venv chromium
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m calibration_data --check

venv:
	@PYTHON="$(PYTHON)" scripts/setup-venv.sh

chromium:
	@scripts/install-chromium.sh

clean-venv:
	rm -rf .venv
