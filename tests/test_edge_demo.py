"""edge_demo: runs without TensorFlow, carries the state, draws the labels the model produced, fails cleanly."""

import csv
import json
import os
import re
import subprocess
import sys

import cv2
import numpy as np
import pytest
import tensorflow as tf

from stt_edge_demo import app, overlay
from stt_edge_demo.runners import LiteRTRunner, load_metadata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
PALETTE = [[200, 30, 30], [30, 200, 30], [30, 30, 200], [220, 220, 40]]
H, W, STATE = 32, 48, [1, 4, 6, 8]


def _fake_step(output="labels"):
    """The exported step's contract with known behaviour: label = R // 64, next_state = state * (1 - reset) + 1."""

    @tf.function(input_signature=[tf.TensorSpec([1, H, W, 3], tf.uint8, name="frame"),
                                  tf.TensorSpec(STATE, tf.float32, name="state"),
                                  tf.TensorSpec([1], tf.float32, name="reset")])
    def step(frame, state, reset):
        labels = tf.minimum(tf.cast(frame[..., 0], tf.int32) // 64, 3)
        result = {"next_state": state * (1.0 - reset[0]) + 1.0}
        if output == "labels":
            result["labels"] = labels
        else:
            result["logits"] = tf.one_hot(labels, 4, dtype=tf.float32)
        return result

    return step


def _metadata(output):
    outputs = {"next_state": {"shape": STATE, "dtype": "float32"}}
    outputs.update({"labels": {"shape": [1, H, W], "dtype": "int32"}} if output == "labels"
                   else {"logits": {"shape": [1, H, W, 4], "dtype": "float32"}})
    return {"format": "stt-keras-step/1", "input_size": [H, W], "num_key_frames": 1,
            "classes": ["a", "b", "c", "d"], "palette": PALETTE,
            "inputs": {"frame": {"shape": [1, H, W, 3], "dtype": "uint8"}, "state": {"shape": STATE, "dtype": "float32"},
                       "reset": {"shape": [1], "dtype": "float32"}},
            "outputs": outputs}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for output in ("labels", "logits"):
        step = _fake_step(output)
        converter = tf.lite.TFLiteConverter.from_concrete_functions([step.get_concrete_function()], tf.Module())
        path = str(folder / f"fake_{output}.tflite")
        open(path, "wb").write(converter.convert())
        json.dump(_metadata(output), open(path.replace(".tflite", ".json"), "w"))
        paths[output] = path
    import tf2onnx

    onnx_path = str(folder / "fake_labels.onnx")
    step = _fake_step("labels")
    tf2onnx.convert.from_function(step, input_signature=step.input_signature, opset=17, output_path=onnx_path)
    json.dump(_metadata("labels"), open(onnx_path.replace(".onnx", ".json"), "w"))
    paths["onnx"] = onnx_path
    return paths


def _write_video(path, frames, fourcc="FFV1", fps=10):
    """Writes BGR frames (all of one size) to `path`; returns it as a str."""
    h, w = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (w, h))
    for frame in frames:
        writer.write(frame)
    writer.release()
    return str(path)


def _random_video(path, size, frames, seed):
    """`frames` random BGR frames of `size` (h, w) and the video file that holds them."""
    rng = np.random.default_rng(seed)
    images = [rng.integers(0, 256, (*size, 3)).astype(np.uint8) for _ in range(frames)]
    return images, _write_video(path, images)


def _blocks_video(path, frames=12, size=(48, 72), fourcc="MJPG"):
    """Four vertical bands with red = 10, 80, 150, 220 (labels 0..3 under the fake model)."""
    h, w = size
    image = np.zeros((h, w, 3), np.uint8)
    for band, red in enumerate((10, 80, 150, 220)):
        image[:, band * w // 4:(band + 1) * w // 4, 2] = red  # BGR: red is channel 2
    return _write_video(path, [image] * frames, fourcc)


def _read_all(path):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    return frames


def test_runs_a_video_and_writes_overlay_and_csv(models, tmp_path, capsys):
    video = _blocks_video(tmp_path / "in.avi")
    out = str(tmp_path / "overlay.mkv")
    code = app.main(["--model", models["labels"], "--video", video, "--out", out, "--no-display", "--alpha", "1.0",
                     "--no-legend"])
    assert code == 0
    frames = _read_all(out)
    assert len(frames) == 12 and frames[0].shape == (48, 72, 3)
    rows = list(csv.DictReader(open(str(tmp_path / "overlay.csv"))))
    assert len(rows) == 12 and all(float(r["latency_ms"]) > 0 for r in rows)
    assert "12 frames" in capsys.readouterr().out
    # The overlay shows the palette colour of the label the model computed for each band (band centres).
    for band in range(4):
        pixel = frames[5][24, band * 18 + 9]
        np.testing.assert_array_equal(pixel, PALETTE[band][::-1])


def test_logits_model_and_legend(models, tmp_path):
    video = _blocks_video(tmp_path / "in.avi", frames=3)
    out = str(tmp_path / "o.mkv")
    assert app.main(["--model", models["logits"], "--video", video, "--out", out, "--no-display", "--alpha", "1.0"]) == 0
    frame = _read_all(out)[0]
    np.testing.assert_array_equal(frame[40, 3 * 18 + 9], PALETTE[3][::-1])  # below the legend
    legend_h, legend_w = overlay.legend_size(4)
    assert (frame[:legend_h, :legend_w] != PALETTE[0][::-1]).any()  # something was drawn there


def test_state_is_carried_between_frames(models):
    meta = load_metadata(models["labels"])
    runner = LiteRTRunner(models["labels"], meta, threads=2)
    state = runner.initial_state() + 100.0  # garbage: the first frame must ignore it
    frame = np.zeros((H, W, 3), np.uint8)
    for n in range(1, 5):
        _, state = runner(frame, state, reset=n == 1)
        np.testing.assert_array_equal(state, np.full(STATE, float(n)))


def test_onnx_runtime_gives_the_same_labels(models):
    from stt_edge_demo.runners import OnnxRunner

    frame = np.random.default_rng(0).integers(0, 256, (H, W, 3)).astype(np.uint8)
    lite = LiteRTRunner(models["labels"], load_metadata(models["labels"]))
    onnx_runner = OnnxRunner(models["onnx"], load_metadata(models["onnx"]))
    a, sa = lite(frame, lite.initial_state(), True)
    b, sb = onnx_runner(frame, onnx_runner.initial_state(), True)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(sa, sb)
    assert "CPUExecutionProvider" in onnx_runner.providers


def test_never_imports_tensorflow_or_stt_keras(models, tmp_path):
    poison = tmp_path / "poison"
    for package in ("tensorflow", "stt_keras", "keras"):
        (poison / package).mkdir(parents=True)
        (poison / package / "__init__.py").write_text(f"raise ImportError('{package} is forbidden in edge_demo')\n")
    video = _blocks_video(tmp_path / "in.avi", frames=4)
    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(poison), ROOT])}
    result = subprocess.run([sys.executable, "-m", "stt_edge_demo", "--model", models["labels"], "--video", video,
                             "--out", str(tmp_path / "o.mp4"), "--no-display"], env=env, capture_output=True, text=True,
                            cwd=str(tmp_path))
    assert result.returncode == 0, result.stderr[-2000:]
    assert "4 frames" in result.stdout
    for name in os.listdir(os.path.join(ROOT, "edge_demo")):
        if name.endswith(".py"):
            text = open(os.path.join(ROOT, "edge_demo", name)).read()
            assert not re.search(r"^\s*(import|from)\s+(tensorflow|stt_keras|keras|training|export)\b", text, re.M), name


@pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")  # no half-made LiteRT Delegate
def test_bad_inputs_fail_cleanly(models, tmp_path, capsys):
    code = app.main(["--model", models["labels"], "--video", str(tmp_path / "missing.mp4"), "--no-display"])
    assert code == 2 and "missing.mp4" in capsys.readouterr().err

    (tmp_path / "not_a_video.mp4").write_bytes(b"this is text, not a video")
    assert app.main(["--model", models["labels"], "--video", str(tmp_path / "not_a_video.mp4"), "--no-display"]) == 2

    assert app.main(["--model", models["labels"], "--camera", "99", "--no-display"]) == 2
    assert "camera 99" in capsys.readouterr().err

    bare = tmp_path / "bare.tflite"
    bare.write_bytes(open(models["labels"], "rb").read())
    video = _blocks_video(tmp_path / "in.avi", frames=3)
    assert app.main(["--model", str(bare), "--video", video, "--no-display"]) == 2
    assert "bare.json" in capsys.readouterr().err

    wrong = tmp_path / "wrong.tflite"
    wrong.write_bytes(open(models["labels"], "rb").read())
    meta = _metadata("labels")
    meta["inputs"]["state"]["shape"] = [1, 4, 6, 16]
    json.dump(meta, open(tmp_path / "wrong.json", "w"))
    assert app.main(["--model", str(wrong), "--video", video, "--no-display"]) == 2
    assert "'state'" in capsys.readouterr().err

    assert app.main(["--model", models["labels"], "--video", video, "--no-display", "--delegate",
                     str(tmp_path / "nope.so")]) == 2
    assert "nope.so" in capsys.readouterr().err
    assert app.main(["--model", models["labels"], "--video", video, "--no-display", "--delegate", "libm.so.6"]) == 2
    assert "not a LiteRT external delegate" in capsys.readouterr().err


def test_truncated_video_keeps_what_was_processed(models, tmp_path, capsys):
    video = _blocks_video(tmp_path / "full.avi", frames=30)
    data = open(video, "rb").read()
    truncated = tmp_path / "truncated.avi"
    truncated.write_bytes(data[: int(len(data) * 0.6)])
    out = tmp_path / "o.mkv"
    code = app.main(["--model", models["labels"], "--video", str(truncated), "--out", str(out), "--no-display"])
    err = capsys.readouterr().err
    assert code == 3, err
    assert "ended early" in err
    written = _read_all(out)
    rows = list(csv.DictReader(open(str(tmp_path / "o.csv"))))
    assert 0 < len(written) == len(rows) < 30


def test_real_exported_int8_model(exported, tmp_path):
    """The tiny STT exported by stt-export: the overlay equals the palette of LiteRT's own labels."""
    folder, _ = exported
    model = os.path.join(folder, "stt_int8.tflite")
    meta = load_metadata(model)
    frames, video = _random_video(tmp_path / "in.mkv", meta["input_size"], 4, seed=5)
    out = tmp_path / "o.mkv"
    assert app.main(["--model", model, "--video", video, "--out", str(out), "--no-display", "--alpha", "1.0",
                     "--no-legend"]) == 0
    runner = LiteRTRunner(model, meta)
    state = runner.initial_state()
    for t, (frame_bgr, drawn) in enumerate(zip(frames, _read_all(out))):
        labels, state = runner(cv2.cvtColor(frame_bgr, cv2.COLOR_BGR2RGB), state, reset=t == 0)
        np.testing.assert_array_equal(drawn, overlay.colorize(labels, meta["palette"]))


def test_real_exported_onnx_model_matches_litert(exported, tmp_path):
    """The exported gpu-form ONNX step through the app: the same labels as the gpu-form float32 TFLite step."""
    from stt_edge_demo.runners import OnnxRunner

    folder, _ = exported
    onnx_model = os.path.join(folder, "stt_gpu_step.onnx")
    lite_model = os.path.join(folder, "stt_gpu_float32.tflite")
    meta = load_metadata(onnx_model)
    frames, video = _random_video(tmp_path / "in.mkv", meta["input_size"], 3, seed=6)
    assert app.main(["--model", onnx_model, "--video", video, "--out", str(tmp_path / "o.mkv"), "--no-display"]) == 0
    onnx_runner, lite_runner = OnnxRunner(onnx_model, meta), LiteRTRunner(lite_model, load_metadata(lite_model))
    state_o, state_l = onnx_runner.initial_state(), lite_runner.initial_state()
    for t, frame in enumerate(frames):
        rgb = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        labels_o, state_o = onnx_runner(rgb, state_o, reset=t == 0)
        labels_l, state_l = lite_runner(rgb, state_l, reset=t == 0)
        assert np.mean(labels_o == labels_l) >= 0.999
    assert len(_read_all(tmp_path / "o.mkv")) == 3
