# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch is installed first, on its own, so that `pip install -e .` finds it satisfied and no
# resolver picks another build. On Linux, PyPI's torch wheel is the CUDA build (about 0.5 GB plus
# the NVIDIA libraries); PyTorch's CPU index holds the CPU build (2.13.0+cpu). With that index added,
# pip takes the CPU build: a local version label (+cpu) sorts above the plain version.
#   make install                       CPU build (the default)
#   make install TORCH_INDEX_URL=      PyPI's build only: CUDA on Linux x86-64
#   make install TORCH_INDEX_URL=https://download.pytorch.org/whl/cuXYZ   another PyTorch index
#   make install TORCH_SPEC='torch==2.6.0'                                another torch version
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX_URL ?= https://download.pytorch.org/whl/cpu

.PHONY: venv install test test-slow lint demo bench clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--extra-index-url "$(TORCH_INDEX_URL)")
	$(PY) -c "import torch; print('installed torch', torch.__version__, '(CUDA', torch.version.cuda, ')')"
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
