# The two commands the README promises. Both set up .venv when it is missing or
# older than pyproject.toml, and do nothing more when it is current.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
CONFIG ?= config.toml

.PHONY: run test

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python -m bot --config $(CONFIG)

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m ruff check .
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m pytest
