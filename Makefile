# `make demo` and `make test` set everything up on a fresh machine (a venv in $(VENV)).
VENV ?= .venv
PY := $(VENV)/bin/python
# The torch/torchvision pair that installs from local disk on this project's machines (x86_64, Python 3.11).
TORCH_PINS ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: install demo test test-slow test-all bench docs docs-serve clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_PINS)
	$(PY) -m pip install -q -e ".[dev,docs]"
	touch $@

install: $(VENV)/.installed

demo: install
	$(VENV)/bin/rf-bench demo

# The test suite on two workers (the docs build and doctests included), then the demo end to end alone (it uses both cores).
test: install
	$(PY) -m pytest -n 2 -m "not slow and not demo" --durations=10 $(PYTEST_ARGS)
	$(PY) -m pytest -m demo -s $(PYTEST_ARGS)

# The slow end-to-end checks (multi-process training, kill -9 resumes, SLURM through submitit, ...); CI runs them too.
test-slow: install
	$(PY) -m pytest -n 2 -m "slow" --durations=10 $(PYTEST_ARGS)

test-all: test test-slow

# The documentation site into site/ (every measured figure rendered from results files by docs/render.py).
docs: install
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs build --strict

docs-serve: install
	NO_MKDOCS_2_WARNING=1 DISABLE_MKDOCS_2_WARNING=true $(VENV)/bin/mkdocs serve

bench: install
	$(PY) benchmarks/run_all.py

clean:
	rm -rf $(VENV) build dist *.egg-info
