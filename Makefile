# Staged targets. WORK is the work directory (caches, runs); everything generated lives under work/.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
WORK   ?= work/demo
SYNTH  ?= work/synth
PROFILE ?= simple
VIDEOS ?= 300
SEED   ?= 0
SEEDS  ?= 0
STUDY_SEEDS ?= 0,1,2
GRID   ?= configs/ablations.toml
TCD    := $(BIN)/tcd

OCR_ENGINE ?= rapidocr
CONFIG ?= configs/tcd.toml
RUN    ?= tcd
NAME   ?=
QUERY  ?= The bakery SUNRISE BREAD is on a busy street
SET    ?=
SETS   := $(foreach s,$(SET),--set $(s))
# settings for the studies' feature extraction, e.g. EXTRACT_SET=ocr.reuse=off (ungated OCR)
EXTRACT_SET  ?=
EXTRACT_SETS := $(foreach s,$(EXTRACT_SET),--set $(s))

.PHONY: setup setup-ray serve screenshot test test-slow soak demo synth manifest ocr caption captions encode features train ablate ablations study eval results bench index search report export status gc lint clean

# .venv is (re)built when missing or when the pinned requirements change.
$(VENV)/.installed: requirements.txt pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -r requirements.txt
	$(BIN)/pip install --quiet --no-deps -e .
	touch $@

setup: $(VENV)/.installed

# The optional Ray executor (`tcd ocr|caption|encode|extract --executor ray`), pinned in
# pyproject.toml's `ray` extra; its tests skip without it.
setup-ray: setup
	$(BIN)/pip install --quiet -e ".[ray]"

# The suite runs in one worker process per core, up to 4 (pytest-xdist), each test module
# whole in one worker so its module fixtures are built once, in file order: tests/reliability,
# long for its few tests, goes first (xdist's default order, by count of tests, puts the
# crash campaign's five tests late); TEST_WORKERS=0 runs the suite in this one process.
TEST_WORKERS ?= auto
test: setup
	$(BIN)/python -m pytest -q -m "not slow and not soak" -n $(TEST_WORKERS) --maxprocesses 4 --dist loadscope --no-loadscope-reorder

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

# The reliability soak (RELIABILITY.md): the whole tests/reliability suite with 20 SIGKILLs per
# stage and 2000 fuzzed inputs per fuzz test; per-stage kill counts go to $(SOAK_REPORT).
SOAK_REPORT ?= work/soak/report.jsonl
soak: setup
	mkdir -p $(dir $(SOAK_REPORT)) && rm -f $(SOAK_REPORT)
	TCD_FUZZ_EXAMPLES=2000 TCD_SOAK_REPORT=$(abspath $(SOAK_REPORT)) \
		$(BIN)/python -m pytest -q -s -p no:cacheprovider tests/reliability --durations=0
	@echo "kill counts per stage: $(SOAK_REPORT)"

# The demo: synthetic set -> features -> TCD and video-only heads -> eval -> search -> report.
# Each step prints its elapsed time; a second run reuses every cache.
STEP = @s=$$(date +%s); $(1); echo "[demo] $(2): $$(( $$(date +%s) - s )) s"
# the first test caption, read when the step runs (the set may not exist before the demo)
DEMO_QUERY = $$($(BIN)/python -c "import json;print(json.load(open('$(SYNTH)/TextVR_test.json'))[0]['captions_info'][0]['caption'])")

demo: setup
	$(call STEP,$(MAKE) --no-print-directory synth,synth)
	$(call STEP,$(TCD) data textvr --root $(SYNTH) --work $(WORK) -q,manifest)
	$(call STEP,$(TCD) ocr --work $(WORK) --engine $(OCR_ENGINE),ocr)
	$(call STEP,$(TCD) caption --work $(WORK),caption)
	$(call STEP,$(TCD) encode --work $(WORK),encode)
	$(call STEP,$(TCD) train --work $(WORK) --config configs/tcd.toml --name tcd,train tcd)
	$(call STEP,$(TCD) train --work $(WORK) --config configs/video_only.toml --name video-only,train video-only)
	$(call STEP,$(TCD) eval --work $(WORK) --run video-only,eval video-only)
	$(call STEP,$(TCD) eval --work $(WORK) --run tcd --sim-matrix $(WORK)/runs/tcd/sim_matrix.npy,eval tcd)
	$(call STEP,$(TCD) search --work $(WORK) --run tcd --top-k 3 "$(DEMO_QUERY)",search)
	$(call STEP,$(TCD) report --work $(WORK) --run tcd --out $(WORK)/runs/tcd/report.html,report)
	@echo; $(TCD) results --work $(WORK)
	@echo "outputs: $(WORK)/runs/{tcd,video-only}/ (metrics.json, curves.png), sim_matrix.npy and report.html in $(WORK)/runs/tcd/"

synth: setup
	@if [ -f $(SYNTH)/TextVR_test.json ]; then echo "synthetic set in $(SYNTH) (rm -r it to regenerate)"; \
	else $(TCD) data synth --out $(SYNTH) --videos $(VIDEOS) --seed $(SEED) --profile $(PROFILE) --with-ocr-json; fi

manifest: setup
	$(TCD) data textvr --root $(SYNTH) --work $(WORK)

ocr: setup
	$(TCD) ocr --work $(WORK) --engine $(OCR_ENGINE) $(SETS)

caption: setup
	$(TCD) caption --work $(WORK) $(SETS)

encode: setup
	$(TCD) encode --work $(WORK) $(SETS)

captions: caption

# the three stages in one process (each model loaded once, only for a stage with work to do)
features: setup
	$(TCD) extract --work $(WORK) --engine $(OCR_ENGINE) $(SETS)

train: setup
	$(TCD) train --work $(WORK) --config $(CONFIG) $(if $(NAME),--name $(NAME)) $(SETS)

ablate: setup
	$(TCD) ablate --work $(WORK) --grid $(GRID) --seeds $(SEEDS) $(SETS)

# The quality study of README: every variant of configs/ablations.toml over 3 head-training
# seeds, on the demo's synthetic set (built first if missing; cached stages are no-ops).
ablations: setup
	$(MAKE) --no-print-directory synth
	$(TCD) data textvr --root $(SYNTH) --work $(WORK) -q
	$(TCD) extract --work $(WORK) --engine $(OCR_ENGINE) -q $(EXTRACT_SETS)
	$(TCD) ablate --work $(WORK) --grid $(GRID) --seeds $(STUDY_SEEDS) $(SETS)

# The temporal study of README: configs/study_temporal.toml on the temporal profile of the
# synthetic set (2-4 shots per video, dense text, overlays, labelled hard-negative families),
# with per-family columns and the twin-swap pair accuracy.
STUDY_SYNTH  ?= work/synth-temporal
STUDY_WORK   ?= work/study
STUDY_VIDEOS ?= 240
study: setup
	@if [ -f $(STUDY_SYNTH)/TextVR_test.json ]; then echo "temporal set in $(STUDY_SYNTH)"; \
	else $(TCD) data synth --profile temporal --out $(STUDY_SYNTH) --videos $(STUDY_VIDEOS) \
		--seed $(SEED) --workers 2; fi
	$(TCD) data textvr --root $(STUDY_SYNTH) --work $(STUDY_WORK) -q
	$(TCD) extract --work $(STUDY_WORK) --engine $(OCR_ENGINE) -q $(EXTRACT_SETS)
	$(TCD) ablate --work $(STUDY_WORK) --grid configs/study_temporal.toml --seeds $(STUDY_SEEDS) \
		--groups $(STUDY_SYNTH)/synth_groups.json $(SETS)

eval: setup
	$(TCD) eval --work $(WORK) --run $(RUN) --sim-matrix $(WORK)/runs/$(RUN)/sim_matrix.npy

index: setup
	$(TCD) index --work $(WORK) --run $(RUN)

search: setup
	$(TCD) search --work $(WORK) --run $(RUN) "$(QUERY)"

results: setup
	$(TCD) results --work $(WORK)

report: setup
	$(TCD) report --work $(WORK) --run $(RUN) --out $(WORK)/runs/$(RUN)/report.html

export: setup
	$(TCD) export --work $(WORK) --run $(RUN) --out $(WORK)/features.h5

status: setup
	$(TCD) cache status --work $(WORK)

gc: setup
	$(TCD) cache gc --work $(WORK)

# The search page on loopback (no --run: the zero-shot run; SERVE_RUN=tcd for a trained one).
serve: setup
	$(TCD) serve --work $(WORK) --run $(or $(SERVE_RUN),zero-shot)

# README's screenshot of the search page, made in headless system Chromium.
screenshot: setup
	$(BIN)/python -m bench.screenshot --work $(WORK) --run $(RUN) --out docs/serve.png

# Benchmarks (not tests): each prints its figures and writes bench/results/NAME.json.
BENCHES ?= extraction incremental memory heads_scale retrieval_scale ray_executor serve_latency cli_latency
bench: setup setup-ray
	@for b in $(BENCHES); do echo "== bench.$$b"; s=$$(date +%s); \
	$(BIN)/python -m bench.$$b || exit 1; echo "[bench] $$b: $$(( $$(date +%s) - s )) s"; done

lint: setup
	$(BIN)/pip install --quiet ruff && $(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf work
