# Two commands on a fresh machine: `make up` runs the stack, `make test` runs the suite.
# Both install whatever is missing: Redis (apt), Kafka's jars (Maven Central), the Python
# environment (.venv, with vLLM's CPU build) and the tiny model.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ENGINE_STAMP := $(VENV)/.engine-cpu
APP_STAMP := $(VENV)/.sluice-app
MODEL_DIR := $(CURDIR)/.cache/models/sluice-tiny-dsv3
VL_MODEL_DIR := $(CURDIR)/.cache/models/sluice-tiny-qwen3vl
# Both tiny models side by side, each with its own workers; SLUICE_MODELS overrides it.
DEFAULT_MODELS := sluice-tiny-dsv3=$(MODEL_DIR)@cpu;sluice-tiny-qwen3vl=$(VL_MODEL_DIR)@cpu

export VLLM_TARGET_DEVICE ?= cpu
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install deps redis kafka-jars model up infra test unit bench failover faults clean

install: deps $(APP_STAMP)

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(ENGINE_STAMP): infra/scripts/install_cpu_engine.py | $(PY)
	$(PY) -m pip install --quiet packaging
	$(PY) infra/scripts/install_cpu_engine.py
	touch $@

$(APP_STAMP): pyproject.toml $(ENGINE_STAMP)
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

deps: redis kafka-jars

redis:
	@command -v redis-server >/dev/null 2>&1 || { \
	  echo "installing redis-server"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server >/dev/null; }

kafka-jars:
	@infra/kafka/fetch-jars.sh >/dev/null

model: $(APP_STAMP)
	@$(PY) -m infra.models.tiny_dsv3 --out $(MODEL_DIR)
	@$(PY) -m infra.models.tiny_qwen3vl --out $(VL_MODEL_DIR)

# The whole stack on the two tiny models, on CPU. SLUICE_MODELS="name=folder@pool;..." (or
# SLUICE_MODEL=folder for one) may name any vLLM-supported folders instead; SLUICE_GATEWAYS=N
# runs N gateways on consecutive ports, SLUICE_KAFKA_BROKERS=3 a three-broker Kafka cluster.
up: install model
	@if [ -z "$$SLUICE_MODELS$$SLUICE_MODEL" ]; then export SLUICE_MODELS='$(DEFAULT_MODELS)'; fi; \
	$(PY) -m infra.stack

# Kafka and Redis only.
infra: install
	$(PY) -m infra.localinfra

test: install model
	SLUICE_TEST_MODEL=$(MODEL_DIR) SLUICE_TEST_VL_MODEL=$(VL_MODEL_DIR) $(PY) -m pytest $(PYTEST_ARGS)

unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

# Sluice against `vllm serve` and vLLM's offline engine (same model, engine settings and
# client), then the transport ceiling; prints the tables, writes .cache/bench/results.json
# and rewrites docs/benchmarks.md. BENCH_ARGS=--quick for a short trial (docs untouched).
bench: install model
	$(PY) -m infra.bench.run --model $${SLUICE_MODEL:-$(MODEL_DIR)} $(BENCH_ARGS)

# Failover on its own stack (kill, drain and restart workers under load); rewrites the
# results in docs/reliability.md. FAILOVER_ARGS="--rounds 1" for a short trial.
failover: install model
	$(PY) -m infra.bench.failover --model $${SLUICE_MODEL:-$(MODEL_DIR)} --docs docs/reliability.md $(FAILOVER_ARGS)

# Every fault of the robustness issues (workers, engines, gateways, brokers, Redis) on the real
# stack; prints the table and rewrites docs/reliability.md. FAULTS_ARGS="--only cluster_down".
faults: install model
	$(PY) -m infra.bench.faults --model $${SLUICE_MODEL:-$(MODEL_DIR)} --docs docs/reliability.md $(FAULTS_ARGS)

clean:
	rm -rf .cache/run .pytest_cache
