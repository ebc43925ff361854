# Two commands on a fresh machine: `make up` runs the stack, `make test` runs the suite.
# Both install whatever is missing: Redis (apt), Kafka's jars (Maven Central), the Python
# environment (.venv, with vLLM's CPU build) and the tiny model.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
ENGINE_STAMP := $(VENV)/.engine-cpu
APP_STAMP := $(VENV)/.sluice-app
MODEL_DIR := $(CURDIR)/.cache/models/sluice-tiny-dsv3

export VLLM_TARGET_DEVICE ?= cpu
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install deps redis kafka-jars model up infra test unit clean

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

# The whole stack on the tiny model, on CPU. SLUICE_MODEL may name any vLLM-supported folder.
up: install model
	SLUICE_MODEL=$${SLUICE_MODEL:-$(MODEL_DIR)} $(PY) -m infra.stack

# Kafka and Redis only.
infra: install
	$(PY) -m infra.localinfra

test: install model
	SLUICE_TEST_MODEL=$(MODEL_DIR) $(PY) -m pytest $(PYTEST_ARGS)

unit: install
	$(PY) -m pytest tests/unit $(PYTEST_ARGS)

clean:
	rm -rf .cache/run .pytest_cache
