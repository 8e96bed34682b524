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
from stt_edge_demo.stream import Stream

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


def _sha256(path):
    import hashlib

    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _metadata(output, model_path=None):
    outputs = {"next_state": {"shape": STATE, "dtype": "float32"}}
    outputs.update({"labels": {"shape": [1, H, W], "dtype": "int32"}} if output == "labels"
                   else {"logits": {"shape": [1, H, W, 4], "dtype": "float32"}})
    return {"format": "stt-keras-step/1", "input_size": [H, W], "num_key_frames": 1,
            "classes": ["a", "b", "c", "d"], "palette": PALETTE,
            "inputs": {"frame": {"shape": [1, H, W, 3], "dtype": "uint8"}, "state": {"shape": STATE, "dtype": "float32"},
                       "reset": {"shape": [1], "dtype": "float32"}},
            "outputs": outputs, **({"sha256": _sha256(model_path)} if model_path else {})}


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    paths = {}
    for output in ("labels", "logits"):
        step = _fake_step(output)
        converter = tf.lite.TFLiteConverter.from_concrete_functions([step.get_concrete_function()], tf.Module())
        path = str(folder / f"fake_{output}.tflite")
        with open(path, "wb") as f:
            f.write(converter.convert())
        json.dump(_metadata(output, path), open(path.replace(".tflite", ".json"), "w"))
        paths[output] = path
    import tf2onnx

    onnx_path = str(folder / "fake_onnx.onnx")
    step = _fake_step("labels")
    tf2onnx.convert.from_function(step, input_signature=step.input_signature, opset=17, output_path=onnx_path)
    json.dump(_metadata("labels", onnx_path), open(onnx_path.replace(".onnx", ".json"), "w"))
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
    legend_h, legend_w = overlay.legend_size(["a", "b", "c", "d"], *frame.shape[:2])
    assert (frame[:legend_h, :legend_w] != PALETTE[0][::-1]).any()  # something was drawn there


def test_state_is_carried_between_frames(models):
    meta = load_metadata(models["labels"])
    runner = LiteRTRunner(models["labels"], meta, threads=2)
    state = runner.initial_state() + 100.0  # garbage: the first frame must ignore it
    frame = np.zeros((H, W, 3), np.uint8)
    for n in range(1, 5):
        _, state = runner(frame, state, reset=n == 1)
        np.testing.assert_array_equal(state, np.full(STATE, float(n)))


def test_stream_carries_the_state_and_resets(models):
    frame = np.zeros((H, W, 3), np.uint8)
    with Stream.open(models["labels"]) as stream:
        assert stream.streaming and stream.meta["classes"] == ["a", "b", "c", "d"]
        stream.state += 100.0  # garbage: the first frame must ignore it
        for n in range(1, 4):
            assert stream.step(frame, return_labels=True).shape == (H, W)
            np.testing.assert_array_equal(stream.state, np.full(STATE, float(n)))
        stream.reset()
        np.testing.assert_array_equal(stream.step_inputs(frame)["reset"], [1.0])  # nothing ran
        np.testing.assert_array_equal(stream.state, np.full(STATE, 3.0))
        assert stream.step(frame[None], return_labels=True).shape == (1, H, W)  # the batch rank is kept
        np.testing.assert_array_equal(stream.state, np.full(STATE, 1.0))
        with pytest.raises(ValueError, match="labels only"):
            stream.step(frame)
        with pytest.raises(ValueError, match=r"model takes \[32, 48, 3\]"):
            stream.step(np.zeros((H + 1, W, 3), np.uint8), return_labels=True)
        np.testing.assert_array_equal(stream.state, np.full(STATE, 1.0))  # refused frames do not step
    with pytest.raises(ValueError, match="closed"):
        stream.step(frame, return_labels=True)


def test_stream_equals_the_stateless_runner_loop(models):
    """Stream.segment == the runner called with the state carried by hand; logits as the model gives them."""
    frames = np.random.default_rng(1).integers(0, 256, (4, H, W, 3)).astype(np.uint8)
    runner = LiteRTRunner(models["logits"], load_metadata(models["logits"]))
    state, expected = runner.initial_state(), []
    for t, frame in enumerate(frames):
        labels, state = runner(frame, state, reset=t == 0)
        expected.append(labels)
    stream = Stream(runner)
    np.testing.assert_array_equal(stream.segment(frames), np.stack(expected))
    np.testing.assert_array_equal(stream.state, state)
    logits = stream.step(frames[0])
    assert logits.dtype == np.float32 and logits.shape == (H, W, 4)
    np.testing.assert_array_equal(logits.argmax(-1), expected[0])
    with pytest.raises(ValueError, match="metadata"):
        Stream(runner, state_shape=STATE)
    with pytest.raises(ValueError, match="no frames"):
        stream.segment([])


def test_a_per_frame_step_is_a_stream_without_state():
    seen = []

    def step(**inputs):
        seen.append(sorted(inputs))
        return {"logits": np.arange(24, dtype=np.float32).reshape(1, 2, 3, 4)}

    stream = Stream(step)
    assert not stream.streaming and stream.state is None
    assert stream.step(np.zeros((2, 3, 3), np.uint8)).shape == (2, 3, 4)
    np.testing.assert_array_equal(stream.step(np.zeros((2, 3, 3), np.uint8), return_labels=True), np.full((2, 3), 3))
    assert seen == [["frame"]] * 2
    with pytest.raises(TypeError, match="callable"):
        Stream("not a step")


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
    meta = _metadata("labels", str(wrong))
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
    """The exported dense_masked-form ONNX step through the app: the same labels as its float32 TFLite step."""
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


# ------------------------------------------------------------------ nothing the user owns is destroyed
def _digest(path):
    import hashlib

    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_outputs_that_would_destroy_an_input_are_refused_before_reading(models, tmp_path, capsys, monkeypatch):
    video = _blocks_video(tmp_path / "in.avi", frames=3)
    model = models["labels"]
    (tmp_path / "sub").mkdir()
    os.symlink(video, tmp_path / "link.avi")
    (tmp_path / "afile").write_text("mine")
    monkeypatch.chdir(tmp_path)
    before = {p: _digest(p) for p in (video, model, model.replace(".tflite", ".json"), str(tmp_path / "afile"))}
    cases = [
        (["--out", video], "is --video"),
        (["--out", "in.avi"], "is --video"),                             # relative spelling
        (["--out", "sub/../in.avi"], "is --video"),
        (["--out", str(tmp_path / "link.avi")], "is --video"),           # through a symlink
        (["--csv", video], "is --video"),
        (["--csv", model], "is --model"),
        (["--csv", model.replace(".tflite", ".json")], "the model's metadata"),
        (["--out", str(tmp_path / "in.csv"), "--csv", "in.avi"], "is --video"),
        (["--csv", str(tmp_path / "sub")], "is a folder"),
        (["--out", str(tmp_path / "sub")], "is a folder"),
        (["--out", str(tmp_path / "afile" / "o.mkv")], "afile is a file, not a folder"),
        (["--out", str(tmp_path / "afile" / "deeper" / "o.mkv")], "afile is a file, not a folder"),
        (["--out", str(tmp_path / "missing" / "o.mkv")], "does not exist"),
        (["--csv", str(tmp_path / "missing" / "f.csv")], "does not exist"),
        (["--out", "o.mkv", "--csv", "o.mkv"], "are the same file"),
        (["--max-frames", "-1"], "--max-frames must be at least 1"),
        (["--threads", "0"], "--threads must be at least 1"),
    ]
    for extra, message in cases:
        code = app.main(["--model", model, "--video", video, "--no-display", *extra])
        err = capsys.readouterr().err
        assert code == 2, (extra, err)
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, (extra, err)
    # Refused before anything was read or written: the inputs are intact, no output was created.
    assert before == {p: _digest(p) for p in before}
    assert sorted(os.listdir(tmp_path)) == ["afile", "in.avi", "link.avi", "sub"]
    assert os.listdir(tmp_path / "sub") == []


def test_no_csv_without_csv_or_out(models, tmp_path, monkeypatch, capsys):
    video = _blocks_video(tmp_path / "in.avi", frames=3)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    assert app.main(["--model", models["labels"], "--video", video, "--no-display"]) == 0
    assert os.listdir(work) == []  # the README's default: no CSV
    assert "per-frame CSV" not in capsys.readouterr().out
    assert app.main(["--model", models["labels"], "--video", video, "--no-display", "--csv", "frames.csv"]) == 0
    assert os.listdir(work) == ["frames.csv"] and len(list(csv.DictReader(open(work / "frames.csv")))) == 3


# ------------------------------------------------------------------ integrity and metadata
def test_a_metadata_without_sha256_is_refused_unless_allowed(models, tmp_path, capsys):
    video = _blocks_video(tmp_path / "in.avi", frames=3)
    for kind in ("labels", "onnx"):
        source = models[kind]
        suffix = os.path.splitext(source)[1]
        model = tmp_path / f"unverified_{kind}{suffix}"
        data = bytearray(open(source, "rb").read())
        model.write_bytes(bytes(data))
        meta = json.load(open(os.path.splitext(source)[0] + ".json"))
        del meta["sha256"]
        json.dump(meta, open(tmp_path / f"unverified_{kind}.json", "w"))
        assert app.main(["--model", str(model), "--video", video, "--no-display"]) == 2
        err = capsys.readouterr().err
        assert "records no sha256" in err and "--allow-unverified" in err and len(err.strip().splitlines()) == 1
        assert app.main(["--model", str(model), "--video", video, "--no-display", "--allow-unverified"]) == 0
        assert "is not verified" in capsys.readouterr().err
    # A tampered file with its hash recorded is refused, with or without the opt-out.
    tampered = tmp_path / "tampered.tflite"
    data = bytearray(open(models["labels"], "rb").read())
    data[-10] ^= 0xFF
    tampered.write_bytes(bytes(data))
    json.dump(_metadata("labels", models["labels"]), open(tmp_path / "tampered.json", "w"))
    for extra in ([], ["--allow-unverified"]):
        assert app.main(["--model", str(tampered), "--video", video, "--no-display", *extra]) == 2
        assert "does not match the SHA-256" in capsys.readouterr().err


def test_metadata_that_does_not_fit_the_model_is_one_line(models, tmp_path, capsys):
    video = _blocks_video(tmp_path / "in.avi", frames=3)

    def changed(name, output, change):
        source = models[output]
        model = tmp_path / f"{name}.tflite"
        model.write_bytes(open(source, "rb").read())
        meta = json.loads(json.dumps(_metadata(output, source)))  # a copy: PALETTE stays as it is
        change(meta)
        json.dump(meta, open(tmp_path / f"{name}.json", "w"))
        return str(model)

    cases = {
        "two_names": ("labels", lambda m: m.update(classes=["a", "b"], palette=PALETTE[:2]),
                      "but its metadata names 2 classes"),
        "two_names_logits": ("logits", lambda m: m.update(classes=["a", "b"], palette=PALETTE[:2]),
                             "names 2 classes but the logits output has [4]"),
        "one_colour": ("labels", lambda m: m.update(palette=PALETTE[:1]), "the palette has 1 colours for 4 classes"),
        "no_classes": ("labels", lambda m: m.update(classes=[], palette=[]), "classes must be a list of 1 to 256 names"),
        "size_0x0": ("labels", lambda m: m.update(input_size=[0, 0]), "input_size must be [height, width] of positive"),
        "colour_300": ("labels", lambda m: m["palette"].__setitem__(1, [300, 0, 0]), "palette colour 1 is [300, 0, 0]"),
        "colour_text": ("labels", lambda m: m["palette"].__setitem__(1, "red"), "palette colour 1 is 'red'"),
        "size_other": ("labels", lambda m: m.update(input_size=[64, 64]), "input_size [64, 64] but the frame input"),
        "classes_text": ("labels", lambda m: m.update(classes="abcd"), "classes must be a list"),
    }
    for name, (output, change, message) in cases.items():
        out = tmp_path / f"{name}.mkv"
        code = app.main(["--model", changed(name, output, change), "--video", video, "--no-display", "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, (name, err)


# ------------------------------------------------------------------ the overlay
@pytest.mark.parametrize("size,count", [((96, 160), 4), ((96, 160), 7), ((240, 320), 7), ((480, 640), 7),
                                        ((1080, 1920), 7)])
def test_legend_scales_with_the_frame(size, count):
    """The legend is a narrow column in the top-left corner: at most 30% of the frame's width and 80%
    of its height, scaled with the frame (readable sizes only); when the rows do not fit, the fps only."""
    classes = ["road", "sidewalk", "building", "vegetation", "sky", "person", "car"][:count]
    palette = [[40 * i, 255 - 30 * i, 100] for i in range(count)]
    h, w = size
    image = np.full((h, w, 3), 77, np.uint8)
    overlay.draw_legend(image, classes, palette, fps=29.9)
    ys, xs = np.nonzero((image != 77).any(-1))
    assert len(xs), "nothing drawn"
    assert xs.max() + 1 <= 0.3 * w and ys.max() + 1 <= 0.8 * h, (size, xs.max(), ys.max())
    legend_h, legend_w = overlay.legend_size(classes, h, w)
    assert xs.max() < legend_w and ys.max() < legend_h
    boxes = overlay.legend_boxes(classes, h, w)
    assert len(boxes) == (0 if size == (96, 160) and count == 7 else count)
    for (x0, y0, x1, y1), colour in zip(boxes, palette):  # every class drawn has its box in its palette colour
        assert (image[y0:y1 + 1, x0:x1 + 1] == colour[::-1]).all(), colour
    if w >= 640:
        assert boxes[0][2] - boxes[0][0] >= 14  # full size from 640 pixels wide on


def test_overlay_has_no_letterbox_bars(models, tmp_path):
    """A 3:1 video into a 2:3 model (bars above and below the content inside the model): the overlay is
    drawn at the video's own size, every row of each band in that band's colour, top and bottom rows too."""
    video = _blocks_video(tmp_path / "wide.avi", frames=2, size=(40, 120))
    out = str(tmp_path / "o.mkv")
    assert app.main(["--model", models["labels"], "--video", video, "--out", out, "--no-display", "--alpha", "1.0",
                     "--no-legend"]) == 0
    frame = _read_all(out)[0]
    assert frame.shape == (40, 120, 3)
    for band in range(4):
        column = frame[:, band * 30 + 15]
        assert (column == PALETTE[band][::-1]).all(), (band, column[[0, -1]])


def test_a_stop_signal_between_a_frame_and_its_csv_row_waits_for_the_pair():
    """SIGTERM (or Ctrl-C) that lands while a frame's video write and CSV row are made takes effect right after
    both: a stopped run never has a written frame without its row (seen once as 316 frames and 315 rows)."""
    import os
    import signal

    from stt_edge_demo import app

    ctrl_c = signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a terminal, even in a background job
    stops = app._StopSignals()
    stops.install()
    try:
        done = []
        with pytest.raises(app.Terminated):
            with stops.held():
                os.kill(os.getpid(), signal.SIGTERM)  # delivered here, in the middle of the pair
                done.append("frame")
                done.append("row")
        assert done == ["frame", "row"]
        with pytest.raises(KeyboardInterrupt):  # outside a pair, at once
            os.kill(os.getpid(), signal.SIGINT)
            for _ in range(1000):  # the handler runs at the next bytecode boundary
                pass
    finally:
        stops.restore()
        signal.signal(signal.SIGINT, ctrl_c)
    assert signal.getsignal(signal.SIGTERM) != stops._handle
