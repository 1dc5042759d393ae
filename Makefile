# remoteckpt: every target installs what it needs into a local virtual environment first.
#   make test       make lint, then the whole test suite (TensorFlow, PyTorch and JAX included, so every test runs)
#   make lint       ruff and mypy (configured in pyproject.toml)
#   make test-fast  the suite without TensorFlow, PyTorch, JAX and the slow tests, in .venv-fast
#   make demo       save and restore a checkpoint on an embedded S3 server (STORE=/dir for local disk)
#   make bench      benchmarks; results go to bench-results/ (see docs/benchmarks.md)
#   make scale      simulated fleet of 64..4,096 ranks on an embedded S3 (SCALE_ARGS="--ranks 64,256"); docs/scale.md
#   make soak       reliability soak (crash, network, race, a job's life, corruption, fuzz) at scale, MINUTES=10; docs/reliability.md
#   make mutate     mutation run of the core against its fast tests (MUTATE_ARGS="--only merge"); docs/reliability.md
#   make docs       API reference from the docstrings, into build/docs/
#   make protos     regenerate remoteckpt/_proto from protos/

PYTHON ?= python3
VENV ?= .venv
# The full run installs every framework the plugins serve, so their tests run too.  torch is
# pinned here (not in the extras): 2.13.0 is the CPU build; an unpinned torch is a CUDA build.
EXTRAS ?= test,tensorflow,jax
PINNED ?= torch==2.13.0
FAST_VENV ?= .venv-fast
DEMO_VENV ?= .venv-demo
PYTEST_ARGS ?=
# The tests make test-fast leaves out (markers registered in pyproject.toml).
FAST_MARKERS ?= not slow and not tensorflow and not torch and not jax

comma := ,
PY := $(VENV)/bin/python
FAST_PY := $(FAST_VENV)/bin/python
DEMO_PY := $(DEMO_VENV)/bin/python
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
FAST_STAMP := $(FAST_VENV)/.installed-test
DEMO_STAMP := $(DEMO_VENV)/.installed-testing

.PHONY: install lint test test-fast bench demo scale soak mutate docs protos clean

# $(call venv,DIR,EXTRAS,MORE): a virtual environment in DIR with remoteckpt[EXTRAS] (editable) and MORE.
define venv
	$(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install --quiet --upgrade pip
	$(1)/bin/python -m pip install --quiet -e ".[$(2)]" $(3)
endef

$(STAMP): pyproject.toml
	$(call venv,$(VENV),$(EXTRAS),$(PINNED))
	touch $@

$(FAST_STAMP): pyproject.toml
	$(call venv,$(FAST_VENV),test,)
	touch $@

$(DEMO_STAMP): pyproject.toml
	$(call venv,$(DEMO_VENV),testing,)
	touch $@

install: $(STAMP)

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m mypy

test: lint
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: $(FAST_STAMP)
	$(FAST_PY) -m pytest -m "$(FAST_MARKERS)" $(PYTEST_ARGS)

demo: $(DEMO_STAMP)
	$(DEMO_PY) examples/demo.py $(if $(STORE),--store $(STORE),)

bench: $(STAMP)
	$(PY) -m pip install --quiet -r benchmarks/requirements.txt
	$(PY) -m benchmarks $(BENCH_ARGS)

# The scale benchmark counts requests with the test suite's proxy (tests/faultproxy.py).
scale: $(STAMP)
	$(PY) -m pip install --quiet -r benchmarks/requirements.txt
	PYTHONPATH=$(CURDIR)/tests $(PY) -m benchmarks.scale $(SCALE_ARGS)

soak: $(FAST_STAMP)
	PYTHONPATH=$(CURDIR)/tests $(FAST_PY) -m benchmarks.soak --minutes $(or $(MINUTES),10) $(SOAK_ARGS)

# The public modules (the package's __all__ names no submodules, so they are listed here), in the
# full environment: the plugins' modules import their frameworks.
API_MODULES := remoteckpt remoteckpt.tensorflow remoteckpt.torch remoteckpt.jax remoteckpt.testing remoteckpt.plugins

docs: $(STAMP)
	$(PY) -m pip install --quiet -r docs/requirements.txt
	$(PY) -m pdoc --docformat markdown --output-directory build/docs $(API_MODULES)
	@echo "API reference: build/docs/index.html"

# The pinned code generator lives apart from the environments (its protobuf pin would clash
# with TensorFlow's); tests/test_protos.py installs and runs the same one.
PROTOC_DIR := build/protoc

$(PROTOC_DIR)/.requirements: protos/protoc-requirements.txt
	$(PYTHON) -m pip install --quiet --no-deps --upgrade --target $(PROTOC_DIR) -r $<
	cp $< $@

protos: $(PROTOC_DIR)/.requirements
	PYTHONPATH=$(PROTOC_DIR) $(PYTHON) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. protos/remoteckpt/_proto/*.proto

clean:
	rm -rf $(VENV) $(FAST_VENV) $(DEMO_VENV) build dist *.egg-info .pytest_cache .hypothesis bench-results

mutate: $(STAMP)
	$(PY) tests/mutation/run.py $(MUTATE_ARGS)
