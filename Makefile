# EmbedHub: `make demo` and `make test` work on a fresh machine (Python 3.11 + internet-free PyPI mirror).
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export PYTHONPATH := $(CURDIR)/platform:$(CURDIR)

.PHONY: install demo test lint format services-start services-stop bench clean

$(PY):
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "Python 3.11 is required (set PYTHON=...)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

# torch is pinned alone first: the exact pin installs the CPU wheel from local disk,
# a looser spec would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) scripts/demo.py

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	bash scripts/browser-deps.sh
	$(PY) -m pytest $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

services-start: install
	$(PY) manage.py services start

services-stop: install
	$(PY) manage.py services stop

clean:
	-$(PY) manage.py services stop
	rm -rf $(VENV) var staticfiles
