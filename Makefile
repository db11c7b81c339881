# Every target builds its own virtual environment from the pinned requirements first.
# Your runs, results, figures and reports go to runs/ (ignored); the committed results/, figures/,
# REPORT.md and STRESS.md are the published reference, written only by `make publish`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEVICE ?= auto
SEEDS ?=
THREADS ?= 1
TASK ?= hint
SEED ?=
EXPERIMENTS ?=
DENSE ?=

.PHONY: test quick reproduce directions reproduce-all stress report show bench publish clean

# Bytecode only for the modules the commands import (pip's default compiles all of torch: 10 s more).
$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --no-compile -r requirements.txt
	PYTHONDONTWRITEBYTECODE= $(PY) -c "import torch, torch._dynamo, numpy, tiktoken, matplotlib.pyplot, tqdm, pytest"
	touch $@

test: $(VENV)/installed
	$(PY) -m pytest -q tests

quick: $(VENV)/installed
	$(PY) experiments.py quick --device $(DEVICE) --threads $(THREADS)

reproduce: $(VENV)/installed
	$(PY) experiments.py reproduce --device $(DEVICE) --seeds "$(SEEDS)" --threads $(THREADS)

directions: $(VENV)/installed
	$(PY) experiments.py directions --device $(DEVICE) --seeds "$(SEEDS)" --threads $(THREADS)

reproduce-all: $(VENV)/installed
	$(PY) experiments.py reproduce-all --device $(DEVICE)

stress: $(VENV)/installed
	$(PY) stress.py --device $(DEVICE) $(if $(DENSE),--dense)

report: $(VENV)/installed
	$(PY) experiments.py report
	if [ -d runs/results/stress ]; then $(PY) stress.py report; fi

show: $(VENV)/installed
	$(PY) experiments.py show --task $(TASK) $(if $(SEED),--seed $(SEED))

bench: $(VENV)/installed
	$(PY) bench.py --device $(DEVICE)

# Maintainers: copy your results of EXPERIMENTS (e.g. main) and your stress results and benchmarks into
# the reference, then rebuild REPORT.md, STRESS.md, figures/ and the README's main table from it.
publish: $(VENV)/installed
	$(PY) experiments.py publish --experiments "$(EXPERIMENTS)"
	$(PY) stress.py publish

clean:
	rm -rf runs
