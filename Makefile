# Every target works on a fresh clone: the virtual environment is created on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export TF_CPP_MIN_LOG_LEVEL ?= 2

.PHONY: venv test test-slow bench quickstart clean

$(VENV)/.installed: setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[test,litert,onnx,report,web]"
	touch $@

venv: $(VENV)/.installed

# Default suite: everything not marked slow, on TEST_WORKERS pytest-xdist workers (tests/conftest.py
# keeps the tests that share a trained model, and each file's tests, on one worker). Budget: 15 minutes
# of wall time for .ci/run on 2 cores (docs/performance.md, "Test suite"). The 15 slowest tests are
# listed at the end, so a test that grows is seen. TEST_WORKERS=0 runs in this process.
TEST_WORKERS ?= 2
PYTEST := $(PY) -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist loadgroup
test: venv
	$(PYTEST)

# Slow suite: long end-to-end and benchmark-sized checks.
test-slow: venv
	$(PYTEST) -m slow

# The main job on the built-in synthetic video, end to end (about 3 minutes on 2 cores after the
# install): train the small STT model with the recommended recipe (the per-frame model first, then
# the STT initialised from it) and the per-frame model with the same total steps and seed, evaluate
# both, export the STT model (SavedModel, TFLite float32 + int8), run the edge demo on a synthetic
# video, and write runs/quickstart/report.md. Re-running resumes finished steps.
QUICK := runs/quickstart
QUICK_STEPS := 300
RECIPE_PER_FRAME_STEPS := 150
QUICK_ARGS := --checkpoint-every 50 --batch-size 4 --synthetic-size 128x256 --crop 128x128 --val-batches 4 --verbose 2
BIN := $(VENV)/bin
quickstart: venv
	@echo "== [1/8] train the per-frame model (psp_tiny), $(QUICK_STEPS) steps"
	$(BIN)/stt-train --preset psp_tiny --steps $(QUICK_STEPS) --out $(QUICK)/psp_tiny $(QUICK_ARGS)
	@echo "== [2/8] the recipe: psp_tiny $(RECIPE_PER_FRAME_STEPS) steps, then stt_psp_tiny from it: same total steps, data and seed"
	$(BIN)/stt-train --preset stt_psp_tiny --per-frame-steps $(RECIPE_PER_FRAME_STEPS) \
		--steps $$(( $(QUICK_STEPS) - $(RECIPE_PER_FRAME_STEPS) )) --out $(QUICK)/stt_psp_tiny $(QUICK_ARGS)
	@echo "== [3/8] evaluate both on held-out synthetic sequences (mIoU, TC, frames/s)"
	$(BIN)/stt-eval --model $(QUICK)/psp_tiny/last.keras --out $(QUICK)/psp_tiny/eval
	$(BIN)/stt-eval --model $(QUICK)/stt_psp_tiny/last.keras --out $(QUICK)/stt_psp_tiny/eval
	@echo "== [4/8] export the STT model: SavedModel, TFLite float32 and int8, parity checks"
	$(BIN)/stt-export --model $(QUICK)/stt_psp_tiny/last.keras --out $(QUICK)/export --size 128x256 \
		--formats savedmodel,tflite --forms default,dense_masked --quantizations float32,int8 --interfaces full,edge
	@echo "== [5/8] write a synthetic video"
	$(PY) -m stt_keras_cli.synthetic_video --out $(QUICK)/demo/input.mp4 --frames 60
	@echo "== [6/8] edge demo: LiteRT int8 model on the video"
	$(PY) -m stt_edge_demo --model $(QUICK)/export/stt_int8.tflite --video $(QUICK)/demo/input.mp4 \
		--out $(QUICK)/demo/overlay.mp4 --no-display
	@echo "== [7/8] the phone demo in headless Chromium (LiteRT.js, WebGPU on SwiftShader): a screenshot for the report"
	@mkdir -p $(QUICK)/figures
	-$(PY) -m stt_edge_demo.web.headless --model $(QUICK)/export --video $(QUICK)/demo/input.mp4 --frames 20 \
		--out $(QUICK)/figures/web_demo.png > $(QUICK)/figures/web_demo.txt
	@echo "== [8/8] report"
	$(PY) -m stt_keras_cli.report --runs $(QUICK)

bench: venv
	$(PY) benchmarks/stt_attention.py

clean:
	rm -rf $(VENV) build *.egg-info
