# Two commands for a new user on Debian/Ubuntu:  `make demo`  and  `make test`.
# Both install what is missing (Debian QGIS, a .venv from the system Python with pinned packages),
# and are fast when everything is already there.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# xvfb, xauth and Mesa's GL (libLLVM-15) let tests/test_qgis_desktop.py run desktop QGIS as a user's desktop does.
APT_PACKAGES := qgis python3-qgis qgis-providers python3-rasterio python3-venv xvfb xauth libgl1-mesa-dri libglx-mesa0
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Headless QGIS in an isolated profile; the venv's bin first so QGIS's Python sees torch.
export QT_QPA_PLATFORM ?= offscreen
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
DEMO_OUT := build/demo

.PHONY: setup system-deps venv demo test test-ltr package clean

setup: system-deps venv

system-deps:
	@if ! dpkg -s $(APT_PACKAGES) >/dev/null 2>&1; then \
	  echo ">> installing Debian packages: $(APT_PACKAGES)"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $(APT_PACKAGES); \
	fi

venv: $(STAMP)

# torch's CUDA build brings triton, whose own LLVM crashes a process that has loaded Mesa's (desktop QGIS; the
# plugin also blocks it, see d3rsmde_qgis/deps.py). triton only compiles GPU kernels: without an NVIDIA driver
# it is dead weight, so it is removed.
$(STAMP): requirements.txt pyproject.toml
	@[ -x $(PY) ] || /usr/bin/python3 -m venv --system-site-packages $(VENV)
	@$(PY) -c "import torch" 2>/dev/null || scripts/require_disk.sh 6 $(VENV) "Installing torch and the other packages into $(VENV)"
	$(PY) -m pip install -q --upgrade "pip>=23"
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@if ! nvidia-smi >/dev/null 2>&1 && $(PY) -m pip show triton >/dev/null 2>&1; then \
	  echo ">> no NVIDIA driver (nvidia-smi): removing triton from $(VENV)"; \
	  $(PY) -m pip uninstall -q -y triton; \
	fi
	@touch $@

demo: setup
	$(PY) scripts/demo.py --out $(DEMO_OUT)

test: setup
	$(PY) -m pytest -q tests

# QGIS LTR: the QGIS-facing tests inside a Debian 13 root (QGIS 3.40, Python 3.13, numpy 2) that
# scripts/test_ltr.sh builds with debootstrap in build/ltr-root; a second run only re-runs the tests.
test-ltr:
	scripts/test_ltr.sh

package: setup
	$(PY) scripts/package_plugin.py --out dist/d3rsmde_qgis.zip

clean:
	rm -rf --one-file-system build dist .pytest_cache  # never into a mount a killed test-ltr left in build/ltr-root
