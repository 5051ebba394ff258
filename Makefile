# The two commands of the README: `make book` (execute every chapter with the quick profile and build the
# HTML book into _build/html) and `make test` (the whole test suite). Both create or reuse .venv.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV ?= .venv
PY := $(VENV)/bin/python
PROFILE ?= quick
export HF_HUB_OFFLINE ?= 1

.PHONY: book test install lint clean

install: $(VENV)/.installed

# constraints.txt holds the exact versions tested on Python 3.11; other Pythons (3.10+) get the ranges of
# pyproject.toml instead, with a warning, since some pinned wheels exist only for 3.11+.
$(VENV)/.installed: pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	@if $(PY) -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then \
	  $(PY) -m pip install --quiet -c constraints.txt -e ".[book,dev,cam]"; \
	else \
	  echo "warning: constraints.txt is for Python 3.11; installing from pyproject.toml ranges"; \
	  $(PY) -m pip install --quiet -e ".[book,dev,cam]"; \
	fi
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	@touch $@

book: install
	$(PY) -m ecl book --profile $(PROFILE)

test: install
	$(PY) -m pytest

lint: install
	$(PY) -m ruff check ecl tests benchmarks data
	$(PY) -m ruff format --check ecl tests benchmarks data

clean:
	rm -rf _build
