# The two commands a new user runs (see README.md):
#   make demo   -- set up a virtual environment and run the demo on embedded data
#   make test   -- set up a virtual environment and run the test suite (as root, also apt-get installs chromium
#                  for the browser tests, after saying so; NO_BROWSER=1 skips that)
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_OUT ?= cryoscape-demo

.PHONY: setup demo test test-fast browser clean

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

# Debian's chromium for the browser tests (tests/test_browser_*.py), installed when missing and possible (root with
# apt-get), after a line that says so. `make test NO_BROWSER=1` skips it (so does a chromium given by
# $CRYOSCAPE_CHROMIUM). Never fails: without chromium those tests skip, or fail with the reason when CI is set.
NO_BROWSER ?=
browser:
	@if [ -n "$(NO_BROWSER)" ]; then \
	  echo "NO_BROWSER=$(NO_BROWSER): not installing chromium; the browser tests will be skipped (or fail under CI)"; \
	elif [ -n "$$CRYOSCAPE_CHROMIUM" ] || command -v chromium >/dev/null 2>&1 || test -x /usr/bin/chromium; then \
	  :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make: installing Debian's chromium package with apt-get (system-wide, a few hundred MB) for the browser tests"; \
	  echo "      tests/test_browser_*.py; to skip it, run: make test NO_BROWSER=1"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	    || echo "could not install chromium: the browser tests will be skipped (or fail under CI)"; \
	else \
	  echo "no chromium, and no root apt-get to install it: the browser tests will be skipped (or fail under CI)"; \
	fi

test: setup browser
	$(PY) -m pytest -q -n 2 tests

# The contributor's loop: everything but the end-to-end tests marked slow (make test and CI run those too).
test-fast: setup
	$(PY) -m pytest -q -n 2 -m "not slow" tests

clean:
	rm -rf $(VENV) build *.egg-info
