# The README's commands. Everything installs into $(VENV) (created when missing); every target
# that runs code installs first, and installing again is a no-op.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.o2o-installed
BENCH_ARGS ?=
PYTEST_ARGS ?=

export MUJOCO_GL ?= egl
export PYTHONUNBUFFERED := 1

# Offscreen rendering for MuJoCo: EGL (Mesa, software) and OSMesa as the fallback.
APT_PACKAGES := libegl1 libegl-mesa0 libgl1 libopengl0 libgl1-mesa-dri libosmesa6

.PHONY: setup demo test test-all bench system-deps clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py setup.cfg | system-deps
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# Exact pin: a local CPU wheel satisfies it; anything looser pulls CUDA packages.
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

system-deps:
	@missing=""; \
	for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	$(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  sudo=""; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	  $$sudo apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y -q --no-install-recommends $$missing; \
	fi

# The simulated hardware-in-loop fine-tuning demo (trainer/demo.py); run again, it continues.
demo: setup
	$(VENV)/bin/o2o-demo --out runs/demo

test: setup
	$(PY) -m pytest $(PYTEST_ARGS)

# The slow end-to-end runs as well.
test-all: setup
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

bench: setup
	@set -e; for script in bench/*.py; do \
	  echo "== $$script $(BENCH_ARGS)"; \
	  $(PY) $$script $(BENCH_ARGS); \
	done

clean:
	rm -rf $(VENV) runs build *.egg-info .pytest_cache
