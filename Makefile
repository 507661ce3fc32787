# One-word commands. `make test` is the test command CI runs; it installs what it needs.
VENV        ?= .venv
PY          := $(VENV)/bin/python
MODEL_DIR   ?= models/current
TORCH_SPEC  ?= torch==2.14.1 torchvision==0.29.1

.PHONY: install test test-fast test-load lint train serve run bench compose-smoke scale-smoke clean

STUBS       := service/v2/protos/inference_pb2_grpc.py

NATIVE      := service/native/libmckernel.so service/native/libmcjson.so

install: $(VENV)/.installed $(STUBS) $(NATIVE)

$(VENV)/.installed: pyproject.toml scripts/install.sh
	VENV=$(VENV) TORCH_SPEC="$(TORCH_SPEC)" bash scripts/install.sh
	touch $@

# The v2 gRPC stubs (git-ignored; scripts/install.sh writes them too): regenerated when a .proto file changes.
$(STUBS): $(wildcard service/v2/protos/*.proto) service/v2/protogen.py | $(VENV)/.installed
	$(PY) service/v2/protogen.py
	touch $@

# The C Monte Carlo kernel and JSON pixel parser (git-ignored; scripts/install.sh builds them too): rebuilt when a
# source changes.
$(NATIVE) &: service/native/mckernel.c service/native/mcjson.c service/native/build.py | $(VENV)/.installed
	$(PY) service/native/build.py

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

test: install
	$(MAKE) lint
	$(PY) -m pytest

# The inner loop: unit and in-process API tests, and the quick real-server ones (no fuzzing,
# Docker, Prometheus or `slow`-marked modules); about 45 s on 2 cores. `make test` runs everything.
test-fast: install
	$(PY) -m pytest tests/mcnet tests/training tests/service tests/bench --ignore=tests/service/test_e2e.py \
		-m "not load and not slow"

# The long load test of docs/hardening.md (20,000 mixed requests, concurrency 64); not part of `make test`.
test-load: install
	$(PY) -m pytest -m load tests/hardening

train: install
	$(PY) -m training --out $(MODEL_DIR)

serve: install
	MCSERVE_MODEL_DIR=$(MODEL_DIR) $(PY) -m service

# Local path without Docker: install, train if no valid model yet, serve.
run: install
	$(PY) -m training --out $(MODEL_DIR) --skip-if-valid
	MCSERVE_MODEL_DIR=$(MODEL_DIR) $(PY) -m service

# Benchmarks (docs/benchmarks.md): `make bench` (full, ~35 min) or `make bench BENCH_ARGS=--quick`. They serve the
# trained artifact in MODEL_DIR when there is one (the issues' targets are stated for it), else random weights.
BENCH_JSON  ?= bench/results/all.json
BENCH_MODEL ?= $(if $(wildcard $(MODEL_DIR)/manifest.json),--model-dir $(MODEL_DIR))
bench: install
	$(PY) -m bench all $(BENCH_MODEL) $(BENCH_ARGS) --json $(BENCH_JSON)
	$(PY) -m bench report --json $(BENCH_JSON)

# Containers end to end: real Docker engine, both targets built offline, the real docker-compose.yml
# (host-network test override), real Prometheus; see docs/deploy.md. Needs root (starts dockerd).
compose-smoke:
	bash scripts/compose_smoke.sh

# Three replicas behind HAProxy, Prometheus + Alertmanager, wrk load: spread, kill -9, rolling update (real
# Debian packages, no containers); see docs/scaling.md. About 2-3 min on 2 cores. Installs packages: root or sudo.
scale-smoke: install
	bash scripts/scale_smoke.sh

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache $(NATIVE)
