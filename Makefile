# Two commands on a fresh machine: `make bench` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bench-installed
SUITE  ?= suites/tutorial.yaml
PYTEST_ARGS ?=

.PHONY: bench test install clean-results

install: $(STAMP)

# torchattacks goes in with --no-deps: its wheel pins requests~=2.25.1, which it never imports,
# and would downgrade requests for everything else in the environment. Its real needs (torch,
# numpy, scipy) come from pyproject.toml.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test]'
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps 'torchattacks>=3.5.1,<4'
	touch $(STAMP)

bench: $(STAMP)
	$(BIN)/bench run $(SUITE)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean-results:
	rm -rf results/*/ reports/*/
