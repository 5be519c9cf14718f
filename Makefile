# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# The CPU build of torch is installed first and explicitly, so that no resolver pulls a CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: venv install test test-slow lint demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

test: install
	$(VENV)/bin/ruff check src tests benchmarks
	$(VENV)/bin/mypy src/mfdiffuser
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check src tests benchmarks

demo: install
	$(VENV)/bin/mfd demo

bench: install
	$(VENV)/bin/mfd bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache
