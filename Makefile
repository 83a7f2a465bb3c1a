# streamscore — the two commands a fresh clone needs are `make demo` and `make test`.
# Both go through `make install`, which is idempotent and fast when nothing changed.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
PYTEST_ARGS ?=

.PHONY: install test demo protos check-protos emulator redis clean bench dataflow-steps dataflow-template dataflow-run k8s-render

install: $(STAMP) emulator redis

$(STAMP): pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info >= (3, 11), "streamscore needs Python >= 3.11, found " + sys.version.split()[0]'
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check --upgrade pip
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $(STAMP)

# The official Pub/Sub emulator (Java 17 + google-cloud-cli-pubsub-emulator).
emulator:
	@deploy/local/install-emulator.sh

# redis-server (Debian package): the online feature store the stream writes and the predictor reads.
redis:
	@deploy/local/install-redis.sh

test: install
	$(PY) -m pytest $(PYTEST_ARGS)

demo: install
	$(VENV)/bin/streamscore up

# Regenerate protobuf/gRPC code from protos/**/*.proto (generated files are committed).
protos: $(STAMP)
	$(PY) -m protos.generate

# Deployment (deploy/README.md). The pinned Dataflow transform names (update compatibility):
# regenerate only on purpose, after renaming a transform.
dataflow-steps: $(STAMP)
	PYTHONPATH=. $(PY) -m streaming.job.dataflow steps > tests/deploy/expected_dataflow_steps.json

# Flex Template build and launch (needs gcloud and PROJECT=...; see deploy/dataflow/launch.sh).
dataflow-template:
	deploy/dataflow/launch.sh build

dataflow-run:
	deploy/dataflow/launch.sh run

OVERLAY ?= prod
k8s-render:
	kubectl kustomize deploy/k8s/overlays/$(OVERLAY)

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis build *.egg-info
