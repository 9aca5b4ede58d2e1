# streamer: see README.md. Every target works from a fresh clone; `make install` is idempotent.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEB_PACKAGES := openjdk-17-jre-headless libjetty9-java postgresql mariadb-server
DOCKER_OK = $(shell docker info >/dev/null 2>&1 && echo yes)

.PHONY: install system-packages up down status test lint unit integration faults faults-open chaos demo connectors bench clean

install: $(STAMP) .stack/artifacts/connect-libs/.complete

# Debian packages the native stack needs; installed only when missing, and only as root.
system-packages:
	@missing=""; \
	command -v java >/dev/null || missing="$$missing openjdk-17-jre-headless"; \
	[ -f /usr/share/java/jetty9-server.jar ] || missing="$$missing libjetty9-java"; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	{ [ -x /usr/sbin/mariadbd ] || command -v mariadbd >/dev/null; } || missing="$$missing mariadb-server"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	  else \
	    echo "missing Debian packages:$$missing (run: sudo apt-get install$$missing)"; exit 1; \
	  fi; \
	fi

$(STAMP): pyproject.toml
	@$(MAKE) --no-print-directory system-packages
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

.stack/artifacts/connect-libs/.complete: $(STAMP)
	$(BIN)/streamer stack fetch

up: install
ifeq ($(DOCKER_OK),yes)
	@echo "Docker engine found: starting docker-compose.yml"
	docker compose up -d --wait
	@echo "broker 127.0.0.1:9092  connect http://127.0.0.1:8083  source postgresql://postgres:postgres@127.0.0.1:15432/inventory  mariadb mysql://root:root@127.0.0.1:13306/inventory  schema registry http://127.0.0.1:8081"
else
	@echo "No Docker engine: starting the native stack (streamer stack up)"
	$(BIN)/streamer stack up
endif

down:
ifeq ($(DOCKER_OK),yes)
	docker compose down
else
	@if [ -x $(BIN)/streamer ]; then $(BIN)/streamer stack down; fi
endif

status: install
	$(BIN)/streamer stack status

lint: install
	$(BIN)/ruff check streamer tests
	$(BIN)/ruff format --check streamer tests
	$(BIN)/mypy streamer tests

unit: install
	$(BIN)/pytest tests/unit -q

integration: install
	$(BIN)/pytest tests/integration -q

# the fault matrix alone (also part of `make test`): scenarios in parallel on one shared stack (names
# of their own); the two that restart a private stack's broker or Connect share one worker. The
# workers share the stack, so it is started first when it is down (and stopped again afterwards).
FAULTS_WORKERS ?= 3
FAULTS_SELECT ?= not open_fault
faults: install
	@if $(BIN)/streamer stack status >/dev/null 2>&1; then started=""; \
	else $(MAKE) --no-print-directory up || exit 1; started=yes; fi; \
	$(BIN)/pytest tests/faults -q -n $(FAULTS_WORKERS) --dist loadgroup -m "$(FAULTS_SELECT)"; rc=$$?; \
	if [ -n "$$started" ]; then $(MAKE) --no-print-directory down; fi; exit $$rc

# the scenarios that still fail (marked open_fault), alone
faults-open:
	@$(MAKE) --no-print-directory faults FAULTS_SELECT=open_fault

# random faults on a seeded schedule against a private stack, then whole-table equality; not part
# of `make test`. CHAOS_SECONDS (default 300) bounds the run, SEED=N replays a schedule.
CHAOS_SECONDS ?= 300
chaos: install
	$(BIN)/python -m tests.faults.chaos --seconds $(CHAOS_SECONDS) $(if $(SEED),--seed $(SEED))

# ruff + mypy + every test (unit, integration, then the fault matrix); the tests start the stack themselves.
test: lint
	$(BIN)/pytest -q --ignore=tests/faults
	@$(MAKE) --no-print-directory faults

connectors: install
	$(BIN)/streamer connectors apply --wait 120

# the main job on the embedded default: stack, sample data, connectors, load, consumers, live
# workload, status, validation (STREAMER_TARGET_URL points the target elsewhere)
demo: install up
	$(BIN)/streamer demo

# every benchmark; one table of figures against limits measured in the same run, exit 1 on a miss
bench: install
	$(BIN)/pip install -q -e ".[dev,bench]"
	$(BIN)/python -m streamer.bench

clean: down
	rm -rf .stack $(VENV) *.egg-info .mypy_cache .ruff_cache .pytest_cache
