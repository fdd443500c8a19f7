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
# The faces suite's adversarially trained detector: custom_cnn on FGSM examples with a random start
# (PGD with one step of 1.25 ε: Wong et al. 2020's fast adversarial training), at twice a plain run's cost.
FACES_ADV := $(FACES_MODELS)/custom_cnn-pgd.pt
FACES_TRAIN_EPS ?= 2/255

# The robust suite: the digits CNN trained normally and on PGD examples at ROBUST_EPS (Madry et al.).
DIGITS_MODELS ?= models/digits
ROBUST_EPS ?= 0.15
ROBUST_MODELS := $(DIGITS_MODELS)/digits_cnn.pt $(DIGITS_MODELS)/digits_cnn-pgd.pt

# Perf gate: baselines live per device (GPU model, or CPU model and core count) so an H100 is never
# compared with an A100. Commit benchmarks/baselines/<device>/ from the machine that gates.
PERF_FAIL ?= median:10%
PERF_STORAGE = benchmarks/baselines/$(shell $(BIN)/python -c "from bench.results import machine_slug; print(machine_slug())" 2>/dev/null)
PERF_SELECT ?=
PERF_ARGS = tests/benchmarks -m benchmark_suite --benchmark-only --benchmark-warmup=on \
	--benchmark-timer=bench.timing.synchronized_timer --benchmark-storage=file://$(abspath $(PERF_STORAGE)) \
	$(if $(PERF_SELECT),-k "$(PERF_SELECT)")

NIGHTLY_SUITE ?= suites/nightly-gpu.yaml
# a baseline run keeps its per-image predictions and worst case, so bench compare can pair the images
BASELINE_FILES = results.parquet run.json predictions.parquet worst_case.parquet worst_case_images.parquet
NIGHTLY_BASELINE = benchmarks/nightly/$(shell $(BIN)/python -c "from bench.results import machine_slug; print(machine_slug())" 2>/dev/null)/results.parquet

.PHONY: bench test test-slow docs install clean-results faces robust attack-sources gpu-kit perf-baseline perf-gate nightly nightly-baseline

install: $(STAMP)

# torchattacks goes in with --no-deps: its wheel pins requests~=2.25.1, which it never imports,
# and would downgrade requests for everything else in the environment. Its real needs (torch,
# numpy, scipy) come from pyproject.toml. robustbench goes in with --no-deps too, after torchattacks (which ships an
# old copy of its package): its wheel pins timm==1.0.9 and gdown==5.1.0; what its model zoo imports is the extra.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[test,timm,ray,foolbox,art,hf,autoattack,robustbench]'
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps 'torchattacks>=3.5.1,<4'
	$(BIN)/python -m pip install --disable-pip-version-check -q --no-deps 'robustbench>=1.1,<2'
	touch $(STAMP)

bench: $(STAMP)
	$(BIN)/bench run $(SUITE)

test: $(STAMP)
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The slow tests (the GPU check's smoke run, the perf gate's two sessions, Ray's own logs): CI runs them after make test.
test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow $(PYTEST_ARGS)

# The suite reference (docs/suite-reference.md), generated from the registries in bench/; tests/test_reference.py
# fails when the committed file is not what this writes.
docs: $(STAMP)
	$(BIN)/python -m bench.reference > docs/suite-reference.md.tmp && mv docs/suite-reference.md.tmp docs/suite-reference.md

# The faces workflow on the offline proxy: data (once), four detectors (once each), the suite.
faces: $(STAMP) $(foreach r,$(RECIPES),$(FACES_MODELS)/$(r).pt) $(FACES_ADV)
	$(BIN)/bench run suites/faces.yaml

$(FACES_ADV): $(FACES_DATA)/split.json
	$(BIN)/bench train custom_cnn --adversarial pgd --train-eps $(FACES_TRAIN_EPS) --train-steps 1 \
		--train-step-size 2.5/255 --data $(FACES_DATA) --out $(FACES_MODELS)

# Robustness where there is some: both digits models (once each, on scikit-learn's digits), then the suite.
robust: $(STAMP) $(ROBUST_MODELS)
	$(BIN)/bench run suites/robust.yaml

# Attacks from anywhere: PGD and FGSM from torchattacks, foolbox and ART, minimum-norm curves and a user's own
# attack, side by side on the PGD-trained digits model (trained once, as for make robust).
attack-sources: $(STAMP) $(DIGITS_MODELS)/digits_cnn-pgd.pt
	$(BIN)/bench run suites/attack-sources.yaml

# The GPU check's kit: every wheel the GPU machine lacks (gpu_check/__init__.py: KIT), for its Python 3.12, into .whl/
# (ignored). There, `scripts/gpu-check "$$OUT"` installs them into a temporary site folder and runs the check.
gpu-kit: $(STAMP)
	$(BIN)/python -m gpu_check kit .whl

$(DIGITS_MODELS)/digits_cnn.pt: | $(STAMP)
	$(BIN)/bench train digits_cnn --robust-eps $(ROBUST_EPS) --out $(DIGITS_MODELS)

$(DIGITS_MODELS)/digits_cnn-pgd.pt: | $(STAMP)
	$(BIN)/bench train digits_cnn --adversarial pgd --train-eps $(ROBUST_EPS) --out $(DIGITS_MODELS)

$(FACES_DATA)/split.json: | $(STAMP)
	$(BIN)/bench data faces --proxy --out $(FACES_DATA)

$(FACES_MODELS)/%.pt: $(FACES_DATA)/split.json
	$(BIN)/bench train $* --data $(FACES_DATA) --out $(FACES_MODELS)

perf-baseline: $(STAMP)
	$(BIN)/python -m pytest $(PERF_ARGS) --benchmark-save=baseline
	@echo "baseline saved under $(PERF_STORAGE)"

perf-gate: $(STAMP)
	@if ! ls $(PERF_STORAGE)/*/*_baseline.json >/dev/null 2>&1; then \
		echo "perf-gate: no baseline for this device in $(PERF_STORAGE); run 'make perf-baseline' on this machine first"; \
		exit 2; fi
	$(BIN)/python -m pytest $(PERF_ARGS) --benchmark-compare --benchmark-compare-fail=$(PERF_FAIL)

# Nightly: run the GPU suite, compare with this device's stored baseline run, then the history of
# every night (reports/nightly-gpu/history.md: trends and change points). The history is written even
# when the compare finds a regression; the target still exits 1 then.
nightly: $(STAMP) $(foreach r,$(RECIPES),$(FACES_MODELS)/$(r).pt)
	$(BIN)/bench run $(NIGHTLY_SUITE) --no-progress
	@latest=$$(ls -1d results/nightly-gpu/*/ | sort | tail -n 1); status=0; \
	if [ ! -f $(NIGHTLY_BASELINE) ]; then \
		echo "nightly: no baseline for this device yet; storing $$latest as $(NIGHTLY_BASELINE)"; \
		{ mkdir -p $$(dirname $(NIGHTLY_BASELINE)) && cp $(addprefix $$latest/,$(BASELINE_FILES)) $$(dirname $(NIGHTLY_BASELINE))/; } || status=$$?; \
	else \
		$(BIN)/bench compare $(NIGHTLY_BASELINE) $$latest --out reports/nightly-gpu/compare-latest.md || status=$$?; \
	fi; \
	$(BIN)/bench history $(NIGHTLY_SUITE) --out reports/nightly-gpu || status=$$((status ? status : $$?)); \
	exit $$status

nightly-baseline: $(STAMP)
	@latest=$$(ls -1d results/nightly-gpu/*/ | sort | tail -n 1); \
	mkdir -p $$(dirname $(NIGHTLY_BASELINE)) && cp $(addprefix $$latest/,$(BASELINE_FILES)) $$(dirname $(NIGHTLY_BASELINE))/ && \
	echo "nightly baseline is now $$latest"

clean-results:
	rm -rf results/*/ reports/*/
