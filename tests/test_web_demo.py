"""The web demo: the exported edge model in headless Chromium (LiteRT.js on WebGPU/SwiftShader and on Wasm)
gives the Python LiteRT edge demo's labels, frame by frame, and nothing leaves 127.0.0.1.

Frames: a synthetic clip (lossless FFV1) decoded and letterboxed by the Python edge demo's own code
(OpenCV, edge_demo/overlay.py) and sent to the page raw, so both sides see the very same pixels (a
browser's video decoder and canvas scaler would differ by a grey level here and there). The page runs
them with its state carried and posts its labels back to the in-process server.

Needs Chromium (apt-get install chromium) and LiteRT.js in edge_demo/web/node_modules (`npm ci`
there, run by the server when npm is present). Without them the browser tests skip and say why.
SwiftShader emulates a GPU on the CPU: correctness only, no speed.
"""

import os
import shutil
import subprocess
import sys
import threading
import urllib.error
import urllib.request

import numpy as np
import pytest

from stt_edge_demo.runners import load_metadata, load_runner
from stt_edge_demo.stream import Stream
from stt_edge_demo.web import headless, server, webmodel

FRAMES = 20
SIZE = (64, 128)
MIN_AGREEMENT = 0.99  # per frame
MIN_MEAN_AGREEMENT = 0.995  # over the FRAMES frames
MODELS = ("stt_gpu_edge_float16.tflite", "stt_edge_int8.tflite")
LOCAL_SCHEMES = ("data:", "blob:")  # in-page URLs: the video file picked, the empty favicon


RUNTIME_MISSING = None
if not os.path.isdir(os.path.join(server.LITERT_DIR, "wasm")) and shutil.which("npm") is None:
    RUNTIME_MISSING = "LiteRT.js is not in edge_demo/web/node_modules and npm is missing (apt-get install nodejs npm)"
REASON = RUNTIME_MISSING or (None if headless.find_chromium() else "Chromium not found (apt-get install chromium)")
if REASON:
    print(f"\ntests/test_web_demo.py: browser tests skipped: {REASON}", file=sys.stderr)
needs_browser = pytest.mark.skipif(REASON is not None, reason=REASON or "")


@pytest.fixture(scope="module", autouse=True)
def runtime():
    """LiteRT.js installed from the lock file (`npm ci`, once) when npm is there."""
    if RUNTIME_MISSING is None:
        server.ensure_runtime()


@pytest.fixture(scope="module")
def web_exports(edge_exported, tmp_path_factory):
    """The dense_masked-form edge exports a phone runs: float16 (GPU) and int8 (CPU), at 64x128: the shared edge
    export's folder (tests/conftest.py, report and manifest included) without its other model."""
    source, report = edge_exported
    others = [name[:-len(".tflite")] for name in report["files"] if name not in MODELS]
    out = tmp_path_factory.mktemp("web_exports") / "stt"
    out.mkdir()
    for name in os.listdir(source):
        if os.path.isfile(os.path.join(source, name)) and name.rsplit(".", 1)[0] not in others:
            shutil.copy(os.path.join(source, name), out / name)
    assert sorted(n for n in os.listdir(out) if n.endswith(".tflite")) == sorted(MODELS)
    return str(out)


@pytest.fixture(scope="module")
def frames(tmp_path_factory):
    """The first FRAMES frames of a held-out synthetic clip as `python -m stt_edge_demo` sees them."""
    from stt_keras.data.synthetic import write_video

    path = str(tmp_path_factory.mktemp("clip") / "clip.mkv")
    write_video(path, frames=FRAMES, height=96, width=160, seed=1000)  # 5:3, letterboxed into 64x128
    return headless.video_frames(path, *SIZE, FRAMES)


@pytest.fixture(scope="module")
def frames_box(frames):
    """The content box of the letterboxed frames: 96x160 -> 64x107 at left 10 (bars of 10 and 11 columns)."""
    from stt_edge_demo import overlay

    box = overlay.letterbox(np.zeros((96, 160, 3), np.uint8), *SIZE)[1]
    assert box == (0, 10, 64, 107) and not frames[:, :, :10].any()
    return box


def python_edge_labels(model_path, frames):
    """Labels [N, H, W] of the Python edge demo's LiteRT stream (CPU, XNNPACK) on `frames`."""
    with Stream.open(model_path) as stream:
        return stream.segment(frames)


# ------------------------------------------------------------------ the page in Chromium
@needs_browser
@pytest.mark.parametrize("backend", ["webgpu", "wasm"])
@pytest.mark.parametrize("name", MODELS)
def test_page_labels_match_the_python_edge_demo(web_exports, frames, frames_box, name, backend, tmp_path):
    shot = str(tmp_path / "page.png")
    result = headless.run_page(web_exports, frames, backend, name, screenshot=shot, timeout=300, box=frames_box,
                               probe="Promise.all([fetch('http://example.com/leak').then(() => 'fetched', (e) => 'refused: ' + e),"
                                     " [document.getElementById('view').width, document.getElementById('view').height]])")
    # The page shows the frame's content only: the letterbox bars are cut off, never coloured.
    result["probe"], shown = result["probe"]
    assert shown == [frames_box[3], frames_box[2]], shown
    reference = python_edge_labels(os.path.join(web_exports, name), frames)
    page = result["labels"].astype(np.int32)
    per_frame = (page == reference).reshape(FRAMES, -1).mean(-1)
    summary = result["summary"]
    print(f"{name} on {summary['backend']}: labels agree with Python LiteRT {100 * per_frame.mean():.3f}% over "
          f"{FRAMES} frames (worst frame {100 * per_frame.min():.2f}%); ops accelerator/CPU {result['op_split']}; "
          f"{np.mean(summary['msPerFrame'][1:]):.0f} ms per frame (SwiftShader/headless, not a speed measure)")
    assert summary["frames"] == FRAMES and summary["model"] == name and summary["accelerator"] == backend
    assert per_frame.min() >= MIN_AGREEMENT and per_frame.mean() >= MIN_MEAN_AGREEMENT, per_frame
    assert len(np.unique(reference)) >= 3  # the clip exercises several classes, not one flat label
    if backend == "webgpu":
        assert "swiftshader" in summary["adapter"].lower(), summary
        # The whole graph runs on WebGPU: no op on the CPU (Wasm), and the page says so.
        assert summary["fullyAccelerated"] is True and result["op_split"] is None, (summary, result["op_split"])
        assert "CPU" not in summary["backend"], summary
    else:
        assert summary["backend"].startswith("Wasm") and result["op_split"] is None
    # Nothing left 127.0.0.1: every request of the page went to the demo server ...
    fetched = [u for u in result["requests"] if not u.startswith(LOCAL_SCHEMES)]
    origin = f"http://127.0.0.1:{fetched[0].split(':')[2].split('/')[0]}/"
    assert not [u for u in fetched if not u.startswith(origin)], result["requests"]
    assert {path.split("?")[0] for _, _, path, _ in result["served"]} >= {"/", "/main.js", f"/models/{name.replace('.tflite', '.json')}"}
    assert all(client == "127.0.0.1" for client, *_ in result["served"])
    # ... the page's own attempt to reach the internet was refused by its Content-Security-Policy and
    # never reached the proxy, which saw only the browser process's own service requests (refused too).
    assert result["probe"].startswith("refused"), result["probe"]
    asked = [line.split(" ")[1] for line in result["proxy"]]
    assert not [a for a in asked if not any(host in a for host in headless.BROWSER_SERVICE_HOSTS)], result["proxy"]
    import cv2

    image = cv2.imread(shot)
    assert image is not None and image.shape[:2] == (600, 960) and image.std() > 5
    if name == MODELS[0] and backend == "webgpu" and os.environ.get("WEB_DEMO_SCREENSHOT"):
        shutil.copy(shot, os.environ["WEB_DEMO_SCREENSHOT"])  # e.g. for a report


@needs_browser
def test_a_video_file_chosen_in_the_page_runs(web_exports, tmp_path):
    """The user's path: a WebM file picked in the page's file input, decoded by the browser and
    letterboxed by its canvas (no exact parity possible: other decoder, other scaler, frames skipped
    when the model is slower than playback)."""
    import cv2

    from stt_keras.data.synthetic import SyntheticVideo

    path = str(tmp_path / "clip.webm")
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"VP80"), 10, (160, 96))
    if not writer.isOpened():
        pytest.skip("this OpenCV cannot write WebM (VP8)")
    images, _ = SyntheticVideo(1, 30, 96, 160, seed=1000).sequence(0)
    for image in images:
        writer.write(cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    writer.release()
    result = headless.run_page(web_exports, None, "wasm", MODELS[1], video=path, count=8, timeout=120)
    summary = result["summary"]
    assert summary["source"] == "video" and summary["frames"] == 8 and summary["size"] == "160x96"
    assert summary["resets"] == 1  # the first frame only: one resolution
    assert len(summary["labels"]) >= 3, summary  # the road scene's classes, not one flat label
    assert result["labels"] is None
    assert not [u for u in result["requests"] if not u.startswith(("http://127.0.0.1:", *LOCAL_SCHEMES))]


@needs_browser
def test_page_reports_a_model_it_cannot_run(web_exports, frames, tmp_path):
    """The page fails with a clear message (not a hang) when the model does not fit the metadata."""
    import json

    folder = tmp_path / "bad"
    folder.mkdir()
    for suffix in (".tflite", ".json"):
        shutil.copy(os.path.join(web_exports, "stt_edge_int8" + suffix), folder / ("stt_edge_int8" + suffix))
    meta = json.loads((folder / "stt_edge_int8.json").read_text())
    meta["inputs"]["state"]["shape"][-1] += 1
    (folder / "stt_edge_int8.json").write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match=r'model input "state" is \[.*\] float32 but the metadata says'):
        headless.run_page(str(folder), frames, "wasm", timeout=120)


@needs_browser
def test_page_refuses_webgpu_for_a_model_webgpu_cannot_build(web_exports, frames, tmp_path):
    """A default-form model asked for on WebGPU: the page names the problem (no LiteRT traceback)."""
    import json

    folder = tmp_path / "default_form"
    folder.mkdir()
    for suffix in (".tflite", ".json"):
        shutil.copy(os.path.join(web_exports, "stt_edge_int8" + suffix), folder / ("stt_edge_int8" + suffix))
    meta = json.loads((folder / "stt_edge_int8.json").read_text())
    meta["form"] = "default"  # the file's SHA-256 still matches: only the metadata says so
    (folder / "stt_edge_int8.json").write_text(json.dumps(meta))
    with pytest.raises(RuntimeError, match="'default' graph form, WebGPU needs the dense_masked form.*choose Wasm"):
        headless.run_page(str(folder), frames, "webgpu", timeout=120)


@needs_browser
@pytest.mark.slow  # about 3 minutes: a tiny STT-SegFormer exported, then two page runs
def test_an_stt_segformer_runs_in_the_page_as_in_python(frames, frames_box, tmp_path):
    """A KerasHub SegFormer with the STT on MiT stage 1 (what `STTSegmenter.from_image_segmenter` builds),
    its block moved off the identity so the past counts: the float16 gpu form fully on WebGPU and the int8
    model on Wasm (what a phone runs on its GPU and on its CPU) give Python LiteRT's labels."""
    from test_image_segmenters import TINY, keras_hub_segformer

    from stt_keras.export import cli as export_cli
    from stt_keras.models import STTSegmenter

    model = STTSegmenter.from_image_segmenter(keras_hub_segformer(TINY, (64, 64)))
    assert model.encoder.features_stage == 1
    rng = np.random.default_rng(0)
    model.stt.set_weights([w + 0.05 * rng.normal(size=w.shape).astype("float32") for w in model.stt.get_weights()])
    model.save(str(tmp_path / "stt_segformer.keras"))
    out = str(tmp_path / "export")
    export_cli.run_export(export_cli.build_parser().parse_args(
        ["--model", str(tmp_path / "stt_segformer.keras"), "--out", out, "--size", "x".join(map(str, SIZE)),
         "--formats", "tflite", "--forms", "dense_masked", "--interfaces", "edge", "--quantizations", "float16,int8",
         "--gpu-check", "off", "--parity-sequences", "1", "--parity-frames", "4", "--calibration-sequences", "2",
         "--calibration-frames", "4"]))
    for name, backend in [("stt_gpu_edge_float16.tflite", "webgpu"), ("stt_edge_int8.tflite", "wasm")]:
        result = headless.run_page(out, frames, backend, name, timeout=300, box=frames_box)
        reference = python_edge_labels(os.path.join(out, name), frames)
        per_frame = (result["labels"].astype(np.int32) == reference).reshape(FRAMES, -1).mean(-1)
        assert per_frame.min() >= MIN_AGREEMENT and per_frame.mean() >= MIN_MEAN_AGREEMENT, (name, per_frame)
        assert len(np.unique(reference)) >= 3, name
        if backend == "webgpu":
            assert result["summary"]["fullyAccelerated"] is True and result["op_split"] is None, result["summary"]


# ------------------------------------------------------------------ the server and the model copy (no browser)
def test_exported_gpu_form_has_no_gathers(web_exports):
    """The dense_masked form cuts its tiles without GATHER (dense_masked.py): the server's WebGPU copy is the file itself."""
    from stt_edge_demo.web.webmodel import schema

    for name in MODELS:
        data = open(os.path.join(web_exports, name), "rb").read()
        model = schema.ModelT.InitFromPackedBuf(bytearray(data), 0)
        codes = {max(model.operatorCodes[op.opcodeIndex].builtinCode, model.operatorCodes[op.opcodeIndex].deprecatedBuiltinCode)
                 for op in model.subgraphs[0].operators}
        assert schema.BuiltinOperator.GATHER not in codes and schema.BuiltinOperator.GATHER_ND not in codes, name
        assert webmodel.gather_indices_2d(data) == (data, 0)


def test_webgpu_copy_of_a_model_with_gathers_computes_the_same_outputs(tmp_path):
    """A model with 1-D-index gathers (which LiteRT.js 2.5.3's WebGPU cannot build) gets a [1, n]-index copy on
    WebGPU: the same function (Python LiteRT, both files); a gather not followed by RESHAPE is left alone."""
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    from stt_edge_demo.web.webmodel import schema

    index = np.random.default_rng(0).integers(0, 40, 24).astype(np.int32)

    @tf.function(input_signature=[tf.TensorSpec([40, 6], tf.float32, name="table")])
    def fn(table):
        tiles = tf.reshape(tf.gather(table * 2.0, index), [4, 6, 6])  # cut by a gather, then a reshape (changed)
        return {"tiles": tf.reduce_sum(tiles, axis=1), "rows": tf.gather(table, index[:5]) * 3.0}  # then a MUL (left alone)

    data = tf.lite.TFLiteConverter.from_concrete_functions([fn.get_concrete_function()], fn).convert()
    copy, changed = webmodel.gather_indices_2d(data)
    assert changed == 1, changed
    model = schema.ModelT.InitFromPackedBuf(bytearray(copy), 0)
    shapes = sorted(list(model.subgraphs[0].tensors[op.inputs[1]].shape) for op in model.subgraphs[0].operators
                    if model.operatorCodes[op.opcodeIndex].builtinCode == schema.BuiltinOperator.GATHER)
    assert shapes == [[1, 24], [5]], shapes
    table = np.random.default_rng(1).normal(size=(40, 6)).astype(np.float32)

    def run(content):
        interpreter = Interpreter(model_content=content)
        interpreter.allocate_tensors()
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], table)
        interpreter.invoke()
        by_shape = {tuple(d["shape"]): interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
        return {"tiles": by_shape[(4, 6)], "rows": by_shape[(5, 6)]}

    outputs = [run(content) for content in (data, copy)]
    for key in ("tiles", "rows"):
        np.testing.assert_array_equal(outputs[0][key], outputs[1][key])
    np.testing.assert_allclose(outputs[0]["tiles"], (table * 2.0)[index].reshape(4, 6, 6).sum(1), rtol=1e-5)
    assert webmodel.gather_indices_2d(copy) == (copy, 0)  # nothing left to change


@pytest.fixture
def running_server(web_exports, tmp_path):
    if RUNTIME_MISSING:
        pytest.skip(RUNTIME_MISSING)
    demo = server.DemoServer(web_exports, port=0, quiet=True)
    threading.Thread(target=demo.serve_forever, daemon=True).start()
    yield demo, f"http://127.0.0.1:{demo.server_address[1]}"
    demo.shutdown()
    demo.server_close()


def _get(url, method="GET", data=None):
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method, data=data)) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_server_serves_the_page_model_and_runtime_only(running_server, web_exports):
    import base64
    import hashlib
    import json
    import re

    demo, base = running_server
    status, headers, page = _get(base + "/")
    assert status == 200 and b"<canvas" in page
    csp = headers["Content-Security-Policy"]
    assert "default-src 'none'" in csp and "connect-src 'self'" in csp and "script-src 'self' 'wasm-unsafe-eval'" in csp
    importmap = re.search(rb'<script type="importmap">(.*?)</script>', page, re.S).group(1)
    assert f"'sha256-{base64.b64encode(hashlib.sha256(importmap).digest()).decode()}'" in csp
    assert "http" not in csp and "*" not in csp  # no other origin, no wildcard
    catalog = json.loads(_get(base + "/models.json")[2])
    assert catalog["default"] == "stt_gpu_edge_float16.tflite" and sorted(catalog["models"]) == sorted(MODELS)
    assert catalog["webgpu_gathers_on_cpu"] == {name: 0 for name in MODELS}  # the dense_masked form has no gathers
    assert catalog["webgpu_problems"] == {}  # both are dense_masked-form edge models
    model = _get(base + "/models/stt_edge_int8.tflite")
    assert model[0] == 200 and model[2] == open(os.path.join(web_exports, "stt_edge_int8.tflite"), "rb").read()
    status, headers, _ = _get(base + "/wasm/litert_wasm_internal.wasm", method="HEAD")
    assert status == 200 and headers["Content-Type"] == "application/wasm"
    for bad in ("/../server.py", "/models/../stt_edge_int8.tflite", "/export_report.json", "/models/export_report.json",
                "/%2e%2e/server.py", "/vendor/core/../../package.json", "/frames.bin"):
        assert _get(base + bad)[0] == 404, bad
    assert _get(base + "/report/summary", method="POST", data=b"{}")[0] == 405  # only a test server collects reports
    assert all(client == "127.0.0.1" for client, *_ in demo.log)


def test_a_class_count_other_than_the_models_is_refused(web_exports, tmp_path):
    """The edge interface outputs labels only: the class count of its on-device ARG_MAX is read from the
    graph and checked against the metadata's class names before any frame."""
    import json

    from stt_edge_demo.runners import ModelError

    source = os.path.join(web_exports, "stt_edge_int8.tflite")
    model = tmp_path / "stt_edge_int8.tflite"
    model.write_bytes(open(source, "rb").read())
    meta = load_metadata(source)
    classes = len(meta["classes"])
    meta.update(classes=meta["classes"][:2], palette=meta["palette"][:2])
    (tmp_path / "stt_edge_int8.json").write_text(json.dumps(meta))
    with pytest.raises(ModelError, match=f"computes its labels over {classes} classes but its metadata .* names 2"):
        load_runner(str(model))
    assert load_runner(source)[0].num_classes == classes


def test_the_web_demo_needs_no_tensorflow():
    """Like edge_demo: the server and the browser driver import no TensorFlow, Keras or project training code."""
    import re

    folder = os.path.dirname(server.__file__)
    for name in sorted(os.listdir(folder)):
        if name.endswith(".py"):
            text = open(os.path.join(folder, name)).read()
            assert not re.search(r"^\s*(import|from)\s+(tensorflow|stt_keras|keras|training|export)\b", text, re.M), name


def test_server_refuses_what_it_cannot_serve(web_exports, tmp_path):
    with pytest.raises(server.ServerError, match="model not found"):
        server.find_models(str(tmp_path / "missing"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(server.ServerError, match="no usable model.*--interfaces edge"):
        server.find_models(str(tmp_path / "empty"))
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    for suffix in (".tflite", ".json"):
        shutil.copy(os.path.join(web_exports, "stt_edge_int8" + suffix), damaged / ("stt_edge_int8" + suffix))
    with open(damaged / "stt_edge_int8.tflite", "ab") as f:
        f.write(b"x")
    with pytest.raises(server.ServerError, match="does not match the SHA-256"):
        server.find_models(str(damaged))
    folder, names, default, _ = server.find_models(os.path.join(web_exports, "stt_edge_int8.tflite"))
    assert (names, default) == (["stt_edge_int8.tflite"], "stt_edge_int8.tflite")
    result = subprocess.run([sys.executable, "-m", "stt_edge_demo.web", "--model", str(tmp_path / "empty")],
                            capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 2 and "edge_demo.web: error: no usable model" in result.stderr
    result = subprocess.run([sys.executable, "-m", "stt_edge_demo.web", "--model", web_exports, "--cert", "cert.pem"],
                            capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
    assert result.returncode == 2 and "--cert and --key go together" in result.stderr


def test_a_browser_that_exits_at_start_is_named_not_a_broken_pipe(tmp_path):
    """Chromium gone before its first command: ChromiumExited with its exit status and last stderr lines."""
    fake = tmp_path / "chromium"
    fake.write_text("#!/bin/sh\necho 'fake chromium: cannot start' >&2\nexit 7\n")
    fake.chmod(0o755)
    browser = headless.DevTools(str(fake), [])
    try:
        with pytest.raises(headless.ChromiumExited, match=r"status 7\) before answering Target.createTarget.*cannot start"):
            browser.process.wait(timeout=10)
            browser.send("Target.createTarget", {"url": "about:blank"}, timeout=10)
    finally:
        browser.close()
