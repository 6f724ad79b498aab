# Everything a fresh Debian/Ubuntu machine (as root) needs is installed by these targets.
SHELL := /bin/bash
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
APT_PKGS := python3-venv prometheus runc busybox-static bubblewrap iproute2 procps nftables systemd dbus openssl util-linux tini podman zsh fish
STAMP_APT := $(VENV)/.apt-stamp
# Only for the cgroup v2 + systemd VM test tier (`make test-vm-image`): `make test` does not need them.
VM_APT_PKGS := qemu-system-x86 debootstrap busybox-static e2fsprogs kmod
STAMP_PIP := $(VENV)/.pip-stamp

.PHONY: all deps demo test test-vm-image bench lint typecheck clean
all: test

# apt packages: only asks apt when one is missing, so repeated runs stay fast and offline.
$(STAMP_APT): Makefile
	@missing=$$(for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	@[ -d $(VENV) ] || $(PY) -m venv $(VENV)
	@touch $@

$(STAMP_PIP): $(STAMP_APT) pyproject.toml
	$(BIN)/pip install -q --upgrade pip >/dev/null
	$(BIN)/pip install -q -e '.[dev]'   # a .pth path entry (pyproject's package-dir): no import-hook finder
	@touch $@

deps: $(STAMP_PIP)

demo: deps
	$(BIN)/python -m cgagent.demo

test: deps
	$(BIN)/python -m pytest -q tests

# Builds the cgroup v2 + systemd VM image once (~1-2 min; cached in /var/tmp/cgagent-vm, rebuilt when
# tests/vm/cgagent-vm.sh or the Python dependencies change). `make test` then runs tests/test_vm.py too.
test-vm-image: deps
	@missing=$$(for p in $(VM_APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  echo "installing apt packages: $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi
	PIP=$(BIN)/pip tests/vm/cgagent-vm.sh build

bench: deps
	$(BIN)/python -m bench

lint: deps
	$(BIN)/ruff check cgagent exporters policies grafana tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .ruff_cache
