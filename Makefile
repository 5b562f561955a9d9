# The two commands of the README: `make demo` and `make test`. Each sets itself up on a fresh machine.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# Do not pin torch: torchvision pins the torch it was built for (see README, "Install notes").
STAMP := $(VENV)/.installed

.PHONY: demo test test-floors install clean bench-cifar10

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/imgcls demo --out demo-output

# The browser tests drive Debian's Chromium; without root or apt they skip (and say so).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	-(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) >/dev/null 2>&1 \
	  || echo "note: could not install chromium; browser tests will be skipped"

test: $(STAMP) | $(CHROMIUM)
	$(BIN)/python -m pytest

# The same tests on the lowest versions pyproject.toml allows (.ci/floors.txt), in a venv of their own: CI runs
# both, so a machine with an older preinstalled stack is known to work.
FLOORS := .venv-floors
$(FLOORS)/.installed: pyproject.toml .ci/floors.txt
	$(PYTHON) -m venv $(FLOORS)
	$(FLOORS)/bin/python -m pip install -q --upgrade pip
	$(FLOORS)/bin/python -m pip install -q -c .ci/floors.txt -e ".[dev]"
	touch $@

test-floors: $(FLOORS)/.installed | $(CHROMIUM)
	$(FLOORS)/bin/python -m pytest

clean:
	rm -rf demo-output runs .pytest_cache
