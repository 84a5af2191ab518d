# The two commands the README promises, and `make models`. All set up .venv when it is
# missing or older than pyproject.toml, and do nothing more when it is current.
PYTHON ?= python3
VENV := .venv
STAMP := $(VENV)/.installed
CONFIG ?= config.toml

.PHONY: run test models

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install -e '.[test,cluster]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/python -m bot --config $(CONFIG)

# Download and check every model file the config names, so that `make run` downloads nothing.
models: $(STAMP)
	$(VENV)/bin/python -m pipelines.fetch_models --config $(CONFIG)

# The cluster tests run against a private PostgreSQL that bot.cluster.private_pg starts in a
# temporary folder (installing the server with apt-get if it is missing) and always stops.
test: $(STAMP)
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m ruff check .
	HF_HUB_OFFLINE=1 $(VENV)/bin/python -m bot.cluster.private_pg -- $(VENV)/bin/python -m pytest
