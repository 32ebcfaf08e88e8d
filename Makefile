# fedmq developer entry points. Every target sets itself up from nothing on a fresh Debian
# machine: Python's venv, the package (editable, with extras) in .venv, and Mosquitto.
# Run as root there and missing system packages are apt-get installed; otherwise a missing
# one stops the target with a single line saying how to install it.

SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help
.DELETE_ON_ERROR:

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
EXTRAS := server,dev
# Re-installed only when pyproject.toml changes.
STAMP := $(VENV)/.installed
BENCH_STAMP := $(VENV)/.installed-bench
# The bench target adds the `bench` extra when pyproject.toml defines one.
BENCH_EXTRAS := $(EXTRAS)$(shell grep -Eq '^[[:space:]]*bench[[:space:]]*=' pyproject.toml \
                  && echo ,bench)

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PIP_NO_INPUT := 1
export DEBIAN_FRONTEND := noninteractive

# $(call apt_or_hint,PACKAGES,WHAT): apt-get install PACKAGES when root, else one line + fail.
apt_or_hint = if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make: installing $(1) with apt-get"; \
	  apt-get update -qq && apt-get install -y -qq $(1) >/dev/null; \
	else \
	  echo "make: $(2) is missing; install it with: sudo apt-get install -y $(1)" >&2; exit 1; \
	fi

.PHONY: help test chaos demo bench venv mosquitto

help: ## list the targets
	@echo "usage: make TARGET"
	@grep -E '^[a-z][a-z-]*:.*## ' $(MAKEFILE_LIST) \
	  | awk -F':.*## ' '{ printf "  %-10s %s\n", $$1, $$2 }'

test: $(STAMP) mosquitto ## ruff, mypy (strict) on the code base, then the quick test suite
	$(BIN)/ruff check .
	$(BIN)/mypy schemas edge_agent orchestrator fedmq
	$(BIN)/pytest -q -m "not slow and not chaos"

chaos: $(STAMP) mosquitto ## the long fault-injection tests (pytest -m chaos)
	@rc=0; $(BIN)/pytest -m chaos -v --timeout=1800 || rc=$$?; \
	if [ $$rc = 5 ]; then echo "make chaos: no chaos tests collected"; rc=0; fi; \
	exit $$rc

demo: $(STAMP) mosquitto ## the end-to-end demo (fedmq demo)
	$(BIN)/fedmq demo

bench: $(BENCH_STAMP) mosquitto ## the benchmarks (fedmq bench all)
	$(BIN)/fedmq bench all

venv: $(STAMP) ## create .venv and install fedmq[server,dev] in it, editable

mosquitto: ## install Mosquitto if it is missing (the system service is not used)
	@if command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ]; then exit 0; fi; \
	$(call apt_or_hint,mosquitto mosquitto-clients,mosquitto)

$(BIN)/python:
	@if ! command -v $(PYTHON) >/dev/null 2>&1; then $(call apt_or_hint,python3 python3-venv,$(PYTHON)); fi
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { \
	  echo "make: fedmq needs Python >= 3.11, $(PYTHON) is $$($(PYTHON) -V 2>&1)" >&2; exit 1; }
	@# Debian ships venv's pip bootstrap separately, in python3-venv.
	@if ! $(PYTHON) -m venv $(VENV) >/dev/null 2>&1; then \
	  $(call apt_or_hint,python3-venv,python3-venv); \
	  $(PYTHON) -m venv --clear $(VENV); \
	fi
	@echo "make: created $(VENV) with $$($@ -V)"

$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[$(EXTRAS)]"
	@touch $@

$(BENCH_STAMP): pyproject.toml $(STAMP)
	$(if $(findstring bench,$(BENCH_EXTRAS)),$(BIN)/python -m pip install -q -e ".[$(BENCH_EXTRAS)]")
	@touch $@
