# remoteckpt: every target installs what it needs into a local virtual environment first.
#   make test     the whole test suite (TensorFlow, PyTorch and JAX included, so every test runs)
#   make bench    benchmarks; results go to bench-results/ (see docs/benchmarks.md)
#   make demo     save and restore a checkpoint on an embedded S3 server (STORE=/dir for local disk)
#   make soak     reliability soak (crash, network, corruption, fuzz) at scale, MINUTES=10; docs/reliability.md
#   make protos   regenerate remoteckpt/_proto from protos/

PYTHON ?= python3
VENV ?= .venv
# The test run installs every framework the plugins serve, so their tests run too.  torch is
# pinned here (not in the extras): 2.13.0 is the CPU build; an unpinned torch is a CUDA build.
EXTRAS ?= test,tensorflow,jax
PINNED ?= torch==2.13.0
comma := ,
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(subst $(comma),-,$(EXTRAS))
PYTEST_ARGS ?=

.PHONY: install test bench demo protos clean soak

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]" $(PINNED)
	touch $@

install: $(STAMP)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m remoteckpt.bench $(BENCH_ARGS)

demo: $(STAMP)
	$(PY) -m remoteckpt.demo $(if $(STORE),--store $(STORE),)

# The pinned code generator lives apart from the environments (its protobuf pin would clash
# with TensorFlow's); tests/test_protos.py installs and runs the same one.
PROTOC_DIR := build/protoc

$(PROTOC_DIR)/.requirements: protos/protoc-requirements.txt | $(PY)
	$(PY) -m pip install --quiet --no-deps --upgrade --target $(PROTOC_DIR) -r $<
	cp $< $@

protos: $(PROTOC_DIR)/.requirements
	PYTHONPATH=$(PROTOC_DIR) $(PY) -m grpc_tools.protoc -Iprotos --python_out=. --pyi_out=. protos/remoteckpt/_proto/*.proto

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .hypothesis bench-results

soak: $(STAMP)
	$(PY) -m remoteckpt.bench.soak --minutes $(or $(MINUTES),10) $(SOAK_ARGS)
