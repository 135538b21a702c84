# storyline: two commands on a fresh machine.
#   make demo   set up .venv, build the models, ingest seeds/ and run the main job
#   make test   the whole test suite (sets up first if needed)
PY      ?= python3.11
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: demo setup models test test-fast lint serve clean

demo: models
	$(BIN)/storyline demo seeds

setup: $(STAMP)

# torch goes in first, pinned to the local CPU wheel: anything that depends on torch
# would otherwise pull a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e '.[build,eval,dev,postgres,ray]'
	touch $@

# Always asked: the build compares each artefact's key (inputs, recipe, code) with the
# manifest and skips what is current (~8 s), so a pulled recipe change rebuilds.
models: $(STAMP)
	$(BIN)/storyline models build

test: models
	$(BIN)/python -m pytest -q

test-fast: models
	$(BIN)/python -m pytest -q -m "not slow"

# mypy checks the package as it is imported (storyline.*): a tree of links stands in for
# the installed layout, so cross-module imports are typed rather than silently Any.
lint: $(STAMP)
	$(BIN)/ruff check models index service tests bench
	rm -rf build/mypy && mkdir -p build/mypy/storyline
	ln -s ../../../models ../../../index ../../../service build/mypy/storyline/
	MYPYPATH=build/mypy $(BIN)/mypy -p storyline

serve: models
	$(BIN)/storyline serve

clean:
	rm -rf $(VENV) data build dist *.egg-info
