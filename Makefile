# Staged targets. WORK is the work directory (caches, runs); everything generated lives under work/.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
WORK   ?= work/demo
SYNTH  ?= work/synth
VIDEOS ?= 300
SEED   ?= 0
TCD    := $(BIN)/tcd

OCR_ENGINE ?= rapidocr
CONFIG ?= configs/tcd.toml
SET    ?=
SETS   := $(foreach s,$(SET),--set $(s))

.PHONY: setup test test-slow demo synth manifest ocr caption captions encode features train ablate status gc lint clean

# .venv is (re)built when missing or when the pinned requirements change.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

test: setup
	$(BIN)/python -m pytest -q -m "not slow"

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# The demo grows as stages land: today it builds the synthetic set and its features.
demo: setup synth manifest features status

synth: setup
	@if [ -f $(SYNTH)/TextVR_test.json ]; then echo "synthetic set in $(SYNTH) (rm -r it to regenerate)"; \
	else $(TCD) data synth --out $(SYNTH) --videos $(VIDEOS) --seed $(SEED) --with-ocr-json; fi

manifest: setup
	$(TCD) data textvr --root $(SYNTH) --work $(WORK)

ocr: setup
	$(TCD) ocr --work $(WORK) --engine $(OCR_ENGINE) $(SETS)

caption: setup
	$(TCD) caption --work $(WORK) $(SETS)

encode: setup
	$(TCD) encode --work $(WORK) $(SETS)

captions: caption

features: ocr caption encode

train: setup
	$(TCD) train --work $(WORK) --config $(CONFIG) $(SETS)

ablate: setup
	$(TCD) ablate --work $(WORK) --grid configs/ablations.toml $(SETS)

status: setup
	$(TCD) cache status --work $(WORK)

gc: setup
	$(TCD) cache gc --work $(WORK)

lint: setup
	$(BIN)/pip install --quiet ruff && $(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf work
