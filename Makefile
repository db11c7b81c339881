# Every target builds its own virtual environment from the pinned requirements first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
DEVICE ?= auto
SEEDS ?= 0,1,2

.PHONY: test reproduce reproduce-all stress quick report bench clean

$(VENV)/installed: requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

test: $(VENV)/installed
	$(PY) -m pytest -q tests

reproduce: $(VENV)/installed
	$(PY) eval.py reproduce --device $(DEVICE) --seeds $(SEEDS)

reproduce-all: $(VENV)/installed
	$(PY) eval.py reproduce-all --device $(DEVICE)

stress: $(VENV)/installed
	$(PY) stress.py --device $(DEVICE)

quick: $(VENV)/installed
	$(PY) eval.py quick --device $(DEVICE)

report: $(VENV)/installed
	$(PY) eval.py report
	$(PY) stress.py report

bench: $(VENV)/installed
	$(PY) bench.py --device $(DEVICE)

clean:
	rm -rf runs results/quick
