# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
# torch is installed first, on its own (its dependencies come with the project's, from the usual
# index), so that `pip install -e .` finds it satisfied and no resolver picks another build. On
# Linux, PyPI's torch wheel is the CUDA build (about 0.5 GB plus the NVIDIA libraries); PyTorch's
# CPU index holds the CPU build (2.13.0+cpu). With that index added, pip takes the CPU build: a
# local version label (+cpu) sorts above the plain version. If that index cannot be reached, pip
# warns and goes on, and the check after the install stops with an error rather than keep a CUDA
# build (a machine with a CPU wheel of its own in pip's find-links is fine).
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
	$(PIP) install -q --no-deps "$(TORCH_SPEC)" $(if $(TORCH_INDEX_URL),--extra-index-url "$(TORCH_INDEX_URL)")
	$(PIP) install -q -e '.[test]'
	@$(PY) -c "import torch, sys; cuda = torch.version.cuda; \
	print('torch', torch.__version__, 'CUDA ' + cuda if cuda else 'CPU build'); \
	sys.exit('error: TORCH_INDEX_URL is the CPU index but this is a CUDA build' if cuda and '$(TORCH_INDEX_URL)'.endswith('/cpu') else 0)"
	touch $@

install: $(VENV)/.installed

test: install
	$(VENV)/bin/ruff check src tests benchmarks examples
	$(VENV)/bin/mypy src/mfdiffuser
	$(PY) -m pytest -q

test-slow: install
	$(PY) -m pytest -q -m slow

lint: install
	$(VENV)/bin/ruff check src tests benchmarks examples

demo: install
	$(VENV)/bin/mfd demo

bench: install
	$(VENV)/bin/mfd bench

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache
