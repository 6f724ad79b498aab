# Everything a fresh Debian/Ubuntu machine (as root) needs is installed by these targets.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PKGS := python3-venv prometheus runc busybox-static bubblewrap iproute2 procps
STAMP_APT := $(VENV)/.apt-stamp
STAMP_PIP := $(VENV)/.pip-stamp

.PHONY: all deps demo test bench lint typecheck clean
all: test

# apt packages: only asks apt when one is missing, so repeated runs stay fast and offline.
$(STAMP_APT):
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@[ -d $(VENV) ] || $(PY) -m venv $(VENV)
	@touch $@

$(STAMP_PIP): $(STAMP_APT) pyproject.toml
	$(BIN)/pip install -q --upgrade pip >/dev/null
	$(BIN)/pip install -q --config-settings editable_mode=compat -e '.[dev]'  # a .pth path entry: no import-hook finder at every start-up
	@touch $@

deps: $(STAMP_PIP)

demo: deps
	$(BIN)/python -m cgagent.demo

test: deps
	$(BIN)/python -m pytest -q tests

bench: deps
	$(BIN)/python -m bench

lint: deps
	$(BIN)/ruff check cgagent exporters policies tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
