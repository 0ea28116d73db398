# The two commands a new user runs (see README.md):
#   make demo   -- set up a virtual environment and run the demo on embedded data
#   make test   -- set up a virtual environment and run the test suite
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= cryoscape-demo

.PHONY: setup demo test clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# Keep a torch that is already importable (e.g. a user's CUDA build); otherwise take the CPU 2.13.0 build.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(VENV)/bin/cryoscape demo -o $(DEMO_OUT)

test: setup
	$(PY) -m pytest -q -n 2 tests

clean:
	rm -rf $(VENV) build *.egg-info
