# Every target works on a fresh clone: the virtual environment is created on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv test test-slow bench quickstart clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,litert,onnx]"
	touch $@

venv: $(VENV)/.installed

# Default suite: everything not marked slow (< 15 minutes on 2 cores).
test: venv
	$(PY) -m pytest -q

# Slow suite: long end-to-end and benchmark-sized checks.
test-slow: venv
	$(PY) -m pytest -q -m slow

# The main job on the built-in synthetic video: train the small STT model and its per-frame
# baseline, evaluate both (mIoU, TC, frames/s). Export and the edge demo join it later.
QUICK := runs/quickstart
QUICK_ARGS := --steps 300 --checkpoint-every 100 --batch-size 4 --synthetic-size 128x256 --crop 128x128 --val-batches 4 --verbose 2
quickstart: venv
	$(VENV)/bin/stt-train --preset psp_tiny --out $(QUICK)/psp_tiny $(QUICK_ARGS)
	$(VENV)/bin/stt-train --preset stt_psp_tiny --out $(QUICK)/stt_psp_tiny $(QUICK_ARGS) --init-from $(QUICK)/psp_tiny/last.keras
	$(VENV)/bin/stt-eval --model $(QUICK)/psp_tiny/last.keras --out $(QUICK)/psp_tiny/eval
	$(VENV)/bin/stt-eval --model $(QUICK)/stt_psp_tiny/last.keras --out $(QUICK)/stt_psp_tiny/eval
	@echo "reports: $(QUICK)/psp_tiny/eval/report.md $(QUICK)/stt_psp_tiny/eval/report.md"

bench: venv
	$(PY) benchmarks/stt_attention.py

clean:
	rm -rf $(VENV) build *.egg-info
