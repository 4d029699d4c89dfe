# Every target creates .venv on first use and installs requirements.txt into it, so each one
# works as the only command on a fresh machine.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv quickstart test test-all browser bench clean-runs

$(STAMP): requirements.txt requirements-test.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt -r requirements-test.txt
	touch $(STAMP)

venv: $(STAMP)

## quickstart: the main job on the built-in Shapes world (see README)
quickstart: $(STAMP)
	$(PY) main.py quickstart

## test: the fast suite; test-all: everything, slow tests included
test: $(STAMP)
	$(PY) -m pytest -m "not slow" -q

test-all: $(STAMP) browser
	$(PY) -m pytest -q

## browser: headless Chromium from the Debian packages, for the test that renders the report (slow)
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)
browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y --no-install-recommends chromium; }
	@chromium --version

bench: $(STAMP)
	$(PY) main.py bench

clean-runs:
	rm -rf runs data/shapes
