"""LiteRT's real GPU accelerator is the judge: every exported dense_masked-form model compiles with no op left
on the CPU and gives the CPU's labels over >= 30 streaming steps of real street footage.

Needs a Vulkan device: on a machine without a GPU, SwiftShader from Debian's `chromium` package
(`.ci/run` installs it, and `opencv-doc` for the footage, vtest.avi). Without them these tests
skip and say why (pytest -rs). SwiftShader emulates a GPU on the CPU: correctness only, no speed.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

from stt_edge_demo import litert_gpu, overlay

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
VIDEO = "/usr/share/doc/opencv-doc/examples/data/vtest.avi"  # Debian's opencv-doc: street footage, 768x576
SIZE = (64, 128)
STEPS = 30
MIN_AGREEMENT = 0.995


def _unavailable():
    reason = litert_gpu.software_vulkan_env()
    if reason:
        return f"LiteRT GPU accelerator not testable here: {reason}"
    if not os.path.isfile(VIDEO):
        return f"street footage missing: {VIDEO} (apt-get install opencv-doc)"
    return None


REASON = _unavailable()
if REASON:
    print(f"\ntests/test_gpu_accelerator.py: skipped: {REASON}", file=sys.stderr)
pytestmark = pytest.mark.skipif(REASON is not None, reason=REASON or "")


def video_frames(height, width, count=STEPS):
    """The first `count` frames of vtest.avi, RGB, letterboxed to the model size (as edge_demo does)."""
    import cv2

    capture = cv2.VideoCapture(VIDEO)
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        assert ok, f"{VIDEO} ended after {len(frames)} frames"
        frames.append(overlay.letterbox(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB), height, width)[0])
    capture.release()
    return frames


def stream_labels(step, frames, inputs):
    """Labels [N, H, W] of streaming `frames` through `step` with its own state carried."""
    state = np.zeros(inputs["state"]["shape"], np.float32) if "state" in inputs else None
    labels = []
    for t, frame in enumerate(frames):
        feed = {"frame": frame[None].astype(inputs["frame"]["dtype"])}
        if state is not None:
            feed.update(state=state, reset=np.array([1.0 if t == 0 else 0.0], np.float32))
        out = step(**feed)
        if state is not None:
            state = np.asarray(out["next_state"], np.float32)
        labels.append(np.asarray(out["labels"])[0] if "labels" in out else np.asarray(out["logits"])[0].argmax(-1))
    return np.stack(labels)


# ------------------------------------------------------------ what the accelerator does (canaries)
def _tflite(fn, *specs):
    import tensorflow as tf

    concrete = tf.function(fn, input_signature=list(specs)).get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf.Module()).convert()


def test_the_two_accelerator_behaviours_the_gpu_step_works_around():
    """ai-edge-litert 2.3.0 (pinned): (1) rank-0 operands are refused; (2) a rank-3 elementwise op
    with a constant whose leading dimension is > 1 gives wrong numbers (rank 4 is right).
    If this starts failing after a LiteRT update, the workarounds in stt_keras/layers/dense_masked.py
    (rank-4 NSM score, [1,1,1,1] bisection) may no longer be needed."""
    import tensorflow as tf

    x = np.random.default_rng(0).normal(size=(2, 64, 5)).astype(np.float32)
    scale = np.arange(1, 3, dtype=np.float32).reshape(2, 1, 1)
    spec = tf.TensorSpec(x.shape, tf.float32, name="x")

    scalar = _tflite(lambda v: {"y": v * tf.cast(tf.reduce_sum(v) >= 0.0, tf.float32)}, spec)
    with pytest.raises(RuntimeError):
        litert_gpu.GpuModel(scalar)  # GPU only: refused ops make the compilation fail
    model = litert_gpu.GpuModel(scalar, cpu_fallback=True)
    assert model.op_split and model.op_split[1] >= 1 and "bad input dims size: 0" in str(model.refused), model.log

    rank3 = litert_gpu.GpuModel(_tflite(lambda v: {"y": v * scale}, spec))
    rank4 = litert_gpu.GpuModel(_tflite(lambda v: {"y": tf.reshape(v[None] * scale[None], x.shape)}, spec))
    assert rank3.fully_accelerated and rank4.fully_accelerated
    np.testing.assert_allclose(rank4(x=x)["y"], x * scale, rtol=1e-6)
    assert np.abs(rank3(x=x)["y"] - x * scale).max() > 0.5, "rank-3 constant broadcast is right now"


def test_labels_on_device_is_argmax_on_the_gpu():
    import tensorflow as tf

    from stt_keras.export.step import labels_on_device

    logits = np.random.default_rng(1).normal(size=(1, 16, 24, 7)).astype(np.float32)
    logits[0, :3, :3, 2] = logits[0, :3, :3, 5] = 9.0  # ties: the lowest index wins, as np.argmax
    model = litert_gpu.GpuModel(_tflite(lambda v: {"labels": labels_on_device(v)},
                                        tf.TensorSpec(logits.shape, tf.float32, name="logits")))
    assert model.fully_accelerated and not model.op_split
    np.testing.assert_array_equal(model(logits=logits)["labels"], logits.argmax(-1))


# ------------------------------------------------------------ the exported models
@pytest.fixture(scope="module")
def gpu_exports(exported, edge_exported, frame_exported):
    """dense_masked-form float32/float16 exports, full and edge interfaces: the trained tiny STT model and a
    per-frame psp_tiny, from the shared exports of tests/conftest.py (exported with --gpu-check auto:
    the tests below hold every one to the targets). Returns {filename: (path, report entry)}."""
    files = {}
    for folder, report in (exported, edge_exported, frame_exported):
        assert report["gpu_accelerator"]["checked"], report["gpu_accelerator"]
        for filename in EXPECTED:
            if filename in report["files"]:
                files[filename] = (os.path.join(folder, filename), report["files"][filename])
    return files


EXPECTED = [f"{prefix}{edge}_{q}.tflite" for prefix in ("stt_gpu", "frame") for edge in ("", "_edge")
            for q in ("float32", "float16")]


def test_every_gpu_form_model_is_exported_and_checked(gpu_exports):
    assert sorted(gpu_exports) == sorted(EXPECTED)
    for filename, (_, entry) in gpu_exports.items():
        gpu = entry["gpu_accelerator"]
        assert gpu["fully_accelerated"] and gpu["ops_on_cpu"] == 0 and gpu["ops_on_gpu"] == gpu["num_ops"], (filename, gpu)
        assert "validation_errors" not in gpu, (filename, gpu)
        assert gpu["label_agreement_with_cpu"] >= MIN_AGREEMENT, (filename, gpu)
        assert entry["parity"]["label_agreement"] >= MIN_AGREEMENT, (filename, entry["parity"])  # vs Keras


# float16 is what a GPU runs (docs/gpu_accelerator.md): its four files take the 30 steps of footage in the default
# suite; the float32 twins are held to the same targets on the export's parity clips there
# (test_every_gpu_form_model_is_exported_and_checked) and on the footage in the slow suite.
@pytest.mark.parametrize("filename", [pytest.param(f, marks=pytest.mark.slow) if "float32" in f else f for f in EXPECTED])
def test_fully_accelerated_with_the_cpu_labels_on_street_footage(gpu_exports, filename):
    from ai_edge_litert.interpreter import Interpreter

    path, _ = gpu_exports[filename]
    gpu = litert_gpu.GpuModel(path)  # GPU only: raises if any op is refused
    assert gpu.fully_accelerated and not gpu.op_split and not gpu.refused, gpu.log[-2000:]
    assert not gpu.validation_errors, gpu.validation_errors[:3]  # e.g. a tensor above the texture size
    cpu = Interpreter(model_path=path, num_threads=2).get_signature_runner()
    frames = video_frames(*SIZE)
    on_gpu = stream_labels(gpu, frames, gpu.input_details)
    on_cpu = stream_labels(cpu, frames, gpu.input_details)
    agreement = float(np.mean(on_gpu == on_cpu))
    per_step = (on_gpu == on_cpu).reshape(len(frames), -1).mean(-1)
    print(f"{filename}: labels agree {100 * agreement:.3f}% over {len(frames)} steps (worst step {100 * per_step.min():.2f}%)")
    assert agreement >= MIN_AGREEMENT and per_step.min() >= 0.98, per_step
    assert len(np.unique(on_cpu)) > 1  # the footage exercises more than one class


def test_edge_demo_runs_on_the_gpu_accelerator(gpu_exports, tmp_path):
    path, _ = gpu_exports["stt_gpu_edge_float16.tflite"]
    out = tmp_path / "overlay.mp4"
    result = subprocess.run([sys.executable, "-m", "stt_edge_demo", "--model", path, "--video", VIDEO, "--max-frames", "3",
                             "--out", str(out), "--no-display", "--accelerator", "gpu"],
                            env={**ENV, "PYTHONPATH": ROOT}, capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fully accelerated" in result.stdout and "3 frames" in result.stdout, result.stdout
    assert out.is_file()


# Measured 99.33% (worst step 97.05%) with the float classifier and the STT block float, 99.07% (97.99%) with the
# block's 1x1 convolutions int8 too (the default; another model trained the same way), 98.39% (97.06%) with the fixture model trained
# under ONEDNN_MAX_CPU_ISA=AVX2 on one core: the briefly trained model differs from CPU to CPU. The bug this
# guards against (strided 1x1 shortcuts) gave 79-80%. See docs/gpu_accelerator.md.
INT8_MIN_AGREEMENT = 0.98
FLOAT_DECODER_MIN_AGREEMENT = 0.994  # --int8-float-head decoder: 99.46-99.61% measured (the target is 99.5%)


def _gpu_vs_cpu(path):
    from ai_edge_litert.interpreter import Interpreter

    gpu = litert_gpu.GpuModel(path)  # GPU only: raises if any op is refused
    assert gpu.fully_accelerated and not gpu.op_split and not gpu.validation_errors, gpu.log[-2000:]
    cpu = Interpreter(model_path=path, num_threads=2).get_signature_runner()
    frames = video_frames(*SIZE)
    on_gpu = stream_labels(gpu, frames, gpu.input_details)
    on_cpu = stream_labels(cpu, frames, gpu.input_details)
    assert len(np.unique(on_cpu)) > 1
    per_step = (on_gpu == on_cpu).reshape(len(frames), -1).mean(-1)
    print(f"{os.path.basename(path)}: labels agree {100 * per_step.mean():.3f}% over {len(frames)} steps "
          f"(worst step {100 * per_step.min():.2f}%)")
    return per_step


def test_int8_model_runs_fully_on_the_gpu_with_the_cpu_labels(exported):
    """The int8 model (dense_masked-form graph, int8 encoder/decoder, float STT, float classifier and logits)
    compiles GPU-only and keeps the CPU's labels: before strided 1x1 convolutions were traced as
    slice + 1x1 (export/gpu_step.py), the accelerator computed ResNet's int8 shortcuts wrongly and
    agreed on 79-80%; with int8 logits (float_head=0) 99.06%. What remains is the accelerator's int8
    rounding (one quantization step on <= 3% of values per op) upstream of the classifier.
    The model is the shared export's stt_int8.tflite (tests/conftest.py: the default int8 settings,
    calibrated on 3 segments of 6 frames)."""
    folder, report = exported
    assert report["files"]["stt_int8.tflite"]["form"] == "dense_masked"
    per_step = _gpu_vs_cpu(os.path.join(folder, "stt_int8.tflite"))
    assert per_step.mean() >= INT8_MIN_AGREEMENT and per_step.min() >= 0.95, per_step


@pytest.mark.slow
def test_int8_model_with_a_float_decoder_is_at_the_target(trained_model_path, tmp_path):
    """float_head="decoder", the GPU setting (the whole decoder and STT block float, +70% size on the tiny model):
    at issue 25's 99.5%, not reliably above it: measured 99.61% and 99.57% on two models trained the same way
    and 99.46% on a third (a later run of the test's own training). Held to 99.4%; the default int8
    setting gives 99.07-99.33%."""
    import stt_keras
    from stt_keras.export import calibration, step as step_lib, tflite
    from stt_keras.export.cli import int8_block_subscopes
    from stt_keras.export.gpu_step import STT_SCOPE

    model = stt_keras.load_model(trained_model_path, compile=False)
    fn = step_lib.make_step_function(model, *SIZE, "dense_masked")
    state_shape = fn.get_concrete_function().structured_input_signature[0][1].shape.as_list()
    dataset = calibration.representative_dataset(fn, *SIZE, state_shape, 3, 6, np.float32)
    model_bytes, _ = tflite.convert(tflite.frozen_function(fn), "int8", dataset, keep_float_scope=STT_SCOPE,
                                    float_head="decoder", quantized_subscopes=int8_block_subscopes("decoder"))
    path = tmp_path / "stt_int8_float_decoder.tflite"
    path.write_bytes(model_bytes)
    per_step = _gpu_vs_cpu(str(path))
    assert per_step.mean() >= FLOAT_DECODER_MIN_AGREEMENT and per_step.min() >= 0.95, per_step
