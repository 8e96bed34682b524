# Every target works on a fresh clone: the virtual environment is created on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv test test-slow bench clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,litert]"
	touch $@

venv: $(VENV)/.installed

# Default suite: everything not marked slow (< 15 minutes on 2 cores).
test: venv
	$(PY) -m pytest -q

# Slow suite: long end-to-end and benchmark-sized checks.
test-slow: venv
	$(PY) -m pytest -q -m slow

bench: venv
	$(PY) benchmarks/stt_attention.py

clean:
	rm -rf $(VENV) build *.egg-info
