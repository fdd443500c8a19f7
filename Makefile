# Two commands on a fresh machine: `make bench` and `make test`. Both create .venv if missing.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.bench-installed
SUITE  ?= suites/tutorial.yaml
PYTEST_ARGS ?=

FACES_DATA ?= data/faces-proxy
FACES_MODELS ?= models/faces
RECIPES := custom_cnn resnet18_frozen resnet18_finetune

.PHONY: bench test install clean-results faces

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

# The faces workflow on the offline proxy: data (once), three detectors (once each), the suite.
faces: $(STAMP) $(foreach r,$(RECIPES),$(FACES_MODELS)/$(r).pt)
	$(BIN)/bench run suites/faces.yaml

$(FACES_DATA)/split.json: | $(STAMP)
	$(BIN)/bench data faces --proxy --out $(FACES_DATA)

$(FACES_MODELS)/%.pt: $(FACES_DATA)/split.json
	$(BIN)/bench train $* --data $(FACES_DATA) --out $(FACES_MODELS)

clean-results:
	rm -rf results/*/ reports/*/
