"""stt-export: step forms, SavedModel signatures, TFLite op lists and parity, ONNX, atomic writes."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import onnx
import pytest
import tensorflow as tf
from onnx import TensorProto, helper

import stt_keras
from stt_keras.utils.errors import UserError
from stt_keras.export import atomic, calibration, cli, gpu_step, onnx_export, parity, step as step_lib, tflite
from stt_keras.layers import dense_masked
from stt_keras.models import STTSegmenter
from tolerances import assert_float32_close, assert_labels_match_logits, model_ops_depth

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
SIZE = (64, 128)


@pytest.fixture(scope="module")
def tiny_model():
    tf.keras.utils.set_random_seed(3)
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=7, top_ratio=0.5)  # NSM + top-k mask in play
    model(np.zeros((1, 4, *SIZE, 3), np.uint8))
    return model


# ------------------------------------------------------------ the two forms
def test_gpu_convolutions_keep_the_function(tiny_model):
    """Input-channel slices of wide convolutions (what keeps STT-PSP18's weights inside the GPU's
    8192-texel textures) and strided 1x1 convolutions as slice + 1x1 compute the same function. (The dense-masked STT pieces are tested
    against the library and the NumPy reference in tests/test_stt_layers.py.)"""
    clip = np.random.default_rng(5).integers(0, 256, (1, 4, *SIZE, 3)).astype(np.uint8)
    before = tiny_model(clip).numpy()
    strided = [layer.name for layer in tiny_model._flatten_layers() if type(layer) is keras.layers.Conv2D
               and layer.kernel.shape[:2] == (1, 1) and tuple(layer.strides) != (1, 1)]
    assert strided  # ResNet's downsampling shortcuts
    with gpu_step.gpu_convolutions(tiny_model) as patched:
        assert patched == strided  # no weights above 8192 texels at the tiny size
        np.testing.assert_allclose(tiny_model(clip).numpy(), before, rtol=1e-4, atol=1e-4)
    with gpu_step.gpu_convolutions(tiny_model, limit=600) as patched:
        assert len(patched) >= 3 + len(strided)  # 3x3 convolutions with more than 66 input channels
        during = tiny_model(clip).numpy()
    np.testing.assert_allclose(during, before, rtol=1e-4, atol=1e-4)
    assert not any("convolution_op" in vars(layer) for layer in tiny_model._flatten_layers())


@pytest.mark.parametrize("overrides", [{}, dict(norm_first=True, residual_gate=True, nsm_temperature=0.1, change_weight=1.0, top_ratio=0.5),
                                       dict(top_ratio=1.0)],
                         ids=["top50", "variants", "top100"])
def test_step_forms_match_stream_step(tiny_model, overrides):
    if overrides:  # every option of the block goes through both exported forms
        tf.keras.utils.set_random_seed(4)
        tiny_model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=7, **overrides)
        tiny_model(np.zeros((1, 4, *SIZE, 3), np.uint8))
        for v in tiny_model.stt.weights:  # norm_first starts at zero: make every term count
            v.assign(v.numpy() + np.random.default_rng(5).normal(0, 0.05, v.shape).astype(np.float32))
    default = step_lib.make_step_function(tiny_model, *SIZE, "default")
    gpu = step_lib.make_step_function(tiny_model, *SIZE, "dense_masked")
    shape = default.get_concrete_function().structured_input_signature[0][1].shape
    assert tuple(shape) == tiny_model.state_shape(*SIZE, packed=True)  # the exported state is the library's
    state_d = state_g = np.zeros(shape, np.float32)
    state_5d = None
    rng = np.random.default_rng(1)
    depth = model_ops_depth(tiny_model)  # eager (native kernels) against traced portable graphs: rounding only
    for t in range(4):
        frame = rng.integers(0, 256, (1, *SIZE, 3)).astype(np.uint8)
        reset = np.array([1.0 if t == 0 else 0.0], np.float32)
        if state_5d is None:
            state_5d = tiny_model.initial_state(1, *SIZE)
        logits, state_5d = tiny_model.stream_step(frame, state_5d, t == 0)
        out_d = default(frame, state_d, reset)
        out_g = gpu(frame.astype(np.float32), state_g, reset)
        assert_float32_close(out_d["logits"], logits, depth, err_msg="default logits")
        assert_float32_close(out_g["logits"], logits, depth, err_msg="gpu logits")  # convolutions as matmuls
        np.testing.assert_array_equal(out_d["labels"], np.argmax(out_d["logits"], -1))  # one graph: exact
        assert_labels_match_logits(out_d["labels"], logits, depth, err_msg="default labels")
        assert_float32_close(out_d["next_state"], dense_masked.pack_frames(state_5d), depth, err_msg="default state")
        assert_float32_close(out_g["next_state"], out_d["next_state"], depth, err_msg="gpu state")
        state_d, state_g = out_d["next_state"].numpy(), out_g["next_state"].numpy()


def non_finite_state(shape):
    """A state no step should read: NaN, +inf and -inf in turn."""
    state = np.full(shape, np.nan, np.float32)
    state.reshape(-1)[1::3] = np.inf
    state.reshape(-1)[2::3] = -np.inf
    return state


def test_reset_ignores_a_non_finite_state(tiny_model):
    """With reset the incoming state is not read (the metadata says so): a NaN/inf state gives exactly the
    outputs of a zero state, in both Keras implementations, both layouts and both traced step forms."""
    frame = np.random.default_rng(6).integers(0, 256, (1, *SIZE, 3)).astype(np.uint8)
    for implementation in ("sparse", "dense_masked"):
        for packed in (False, True):
            zeros = tiny_model.initial_state(1, *SIZE, packed=packed)
            bad = non_finite_state(zeros.shape)
            for reset in (True, tf.constant([1.0])):
                expected = [t.numpy() for t in tiny_model.stream_step(frame, zeros, reset, implementation=implementation)]
                got = [t.numpy() for t in tiny_model.stream_step(frame, bad, reset, implementation=implementation)]
                assert all(np.isfinite(t).all() for t in got), (implementation, packed)
                for a, b in zip(got, expected):
                    np.testing.assert_array_equal(a, b)
            # Without reset the state is read: the NaN shows (the test can fail).
            logits, _ = tiny_model.stream_step(frame, bad, False, implementation=implementation)
            assert not np.isfinite(logits.numpy()).all()
    shape = tiny_model.state_shape(*SIZE, packed=True)
    for form in step_lib.FORMS:
        fn = step_lib.make_step_function(tiny_model, *SIZE, form)
        f = frame.astype(step_lib.frame_dtype(form).as_numpy_dtype)
        expected = fn(f, np.zeros(shape, np.float32), np.ones([1], np.float32))
        got = fn(f, non_finite_state(shape), np.ones([1], np.float32))
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{form} {name}")


def test_every_exported_step_ignores_a_non_finite_state_on_reset(exported):
    """SavedModel signatures (float32 and float16 state), every .tflite (default, dense_masked form float32/float16/int8,
    both interfaces) and every .onnx step: a NaN/inf state with reset=1 gives the zero state's outputs."""
    out, report = exported
    frame = np.random.default_rng(7).integers(0, 256, (1, *SIZE, 3)).astype(np.uint8)
    loaded = tf.saved_model.load(os.path.join(out, "saved_model", "1"))
    for name in ("step", "step_float16"):
        fn = loaded.signatures[name]
        spec = fn.structured_input_signature[1]["state"]
        run = lambda state: {k: v.numpy() for k, v in fn(frame=tf.constant(frame), state=tf.constant(state),
                                                          reset=tf.constant([1.0])).items()}
        expected, got = run(np.zeros(spec.shape, spec.dtype.as_numpy_dtype)), run(
            non_finite_state(spec.shape).astype(spec.dtype.as_numpy_dtype))
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{name} {key}")
    checked = []
    for filename in sorted(report["files"]):
        path = os.path.join(out, filename)
        if filename.endswith(".tflite"):
            session = parity.TFLiteStep(path)
        elif filename.endswith(".onnx"):
            session = parity.OnnxStep(path)
        else:
            continue
        inputs, _ = session.io_details()
        if "state" not in inputs:
            continue
        state_shape = [int(d) for d in inputs["state"][0]]
        f = frame.astype(np.dtype(inputs["frame"][1]))
        expected = session(frame=f, state=np.zeros(state_shape, np.float32), reset=np.ones([1], np.float32))
        got = session(frame=f, state=non_finite_state(state_shape), reset=np.ones([1], np.float32))
        for key in expected:
            assert np.isfinite(np.asarray(got[key], np.float64)).all(), (filename, key)
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{filename} {key}")
        checked.append(filename)
    assert {"stt_float32.tflite", "stt_gpu_float32.tflite", "stt_gpu_float16.tflite", "stt_int8.tflite",
            "stt_step.onnx", "stt_gpu_step.onnx"} <= set(checked), checked


def test_one_streaming_loop_carries_the_state_for_parity_and_calibration(tiny_model):
    fn = step_lib.make_step_function(tiny_model, *SIZE, "default")
    shape = tiny_model.state_shape(*SIZE, packed=True)
    frames = np.random.default_rng(3).integers(0, 256, (4, *SIZE, 3)).astype(np.uint8)
    (labels, logits), = parity.stream(fn, [(frames, None)], shape)
    inputs = list(calibration.stream_inputs(fn, [(frames, None)], state_shape=shape))
    assert len(inputs) == len(frames)
    state = tiny_model.initial_state(1, *SIZE, packed=True)
    depth = model_ops_depth(tiny_model)
    for t, frame in enumerate(frames):
        expected, state_next = tiny_model.stream_step(frame[None], state, t == 0)
        np.testing.assert_array_equal(inputs[t]["frame"], frame[None])
        np.testing.assert_array_equal(inputs[t]["reset"], [1.0 if t == 0 else 0.0])
        if t:  # the state each step gets is the previous step's next_state (the first one is ignored)
            assert_float32_close(inputs[t]["state"], state, depth)
        assert_float32_close(logits[t], expected[0], depth)
        np.testing.assert_array_equal(labels[t], np.argmax(logits[t], -1))
        state = state_next

    def never(**_):
        raise AssertionError("a per-frame model's calibration inputs need no step run")

    per_frame = list(calibration.stream_inputs(never, [(frames, None)], state_shape=None))
    assert [sorted(i) for i in per_frame] == [["frame"]] * len(frames)
    with pytest.raises(ValueError, match="pass it"):
        next(parity.stream_sequence(None, frames, shape))


def test_pack_unpack_state_round_trip():
    from stt_keras import streaming

    x = np.random.default_rng(2).normal(size=(1, 3, 4, 5, 6)).astype(np.float32)
    packed = streaming.pack_frames(tf.constant(x))
    assert packed.shape == (1, 4, 5, 18)
    np.testing.assert_array_equal(packed[0, 1, 2, 6:12], x[0, 1, 1, 2])  # frame 1 is the second channel block
    np.testing.assert_array_equal(streaming.unpack_frames(packed, 3), x)
    # The layout's home is the streaming module; the old import path is the same functions.
    assert (dense_masked.pack_frames, dense_masked.unpack_frames) == (streaming.pack_frames, streaming.unpack_frames)


# ------------------------------------------------------------ the CLI export
def test_export_writes_every_model_with_metadata(exported):
    out, report = exported
    expected = ["stt_float32", "stt_float16", "stt_dynamic_range", "stt_gpu_float32", "stt_gpu_float16",
                "stt_gpu_dynamic_range", "stt_int8"]
    for name in expected:
        path = os.path.join(out, name + ".tflite")
        tflite.check_ops(open(path, "rb").read())  # no Flex / variable ops / unfolded BN
        meta = json.load(open(os.path.join(out, name + ".json")))
        assert meta["input_size"] == list(SIZE) and meta["num_key_frames"] == 3
        assert meta["classes"][0] == "road" and len(meta["palette"]) == 7
        assert meta["inputs"]["state"]["shape"] == [1, 8, 16, 3 * 64]
        assert set(meta["outputs"]) >= {"logits", "next_state"}
        assert meta["converter"]["supported_ops"][0].startswith("TFLITE_BUILTINS")
    for name in ("stt_step", "stt_gpu_step"):
        assert os.path.isfile(os.path.join(out, name + ".onnx")) and os.path.isfile(os.path.join(out, name + ".json"))
    assert os.path.isfile(os.path.join(out, "saved_model", "1", "saved_model.pb"))
    assert "stt_int8.tflite" in open(os.path.join(out, "export_report.md")).read()
    assert not [n for n in os.listdir(os.path.dirname(out)) if ".partial-" in n or ".old-" in n]


def test_gpu_form_has_no_loops_topk_or_scatter(exported):
    out, _ = exported
    for name in ("stt_gpu_float32", "stt_gpu_float16", "stt_int8"):
        ops = {op for op, _ in tflite.read_ops(open(os.path.join(out, name + ".tflite"), "rb").read())}
        assert not ops & {"WHILE", "TOPK_V2", "SCATTER_ND", "GATHER_ND", "ARG_MAX"}, (name, ops)
    ops = {op for op, _ in tflite.read_ops(open(os.path.join(out, "stt_float32.tflite"), "rb").read())}
    assert {"TOPK_V2", "SCATTER_ND"} <= ops  # the default form really is the other one


def test_report_records_the_gpu_accelerator(exported):
    """The real accelerator's verdict on the dense_masked-form float models (tests/test_gpu_accelerator.py holds
    it to targets); without a Vulkan device the report says it did not check, and why."""
    out, report = exported
    status = report["gpu_accelerator"]
    for name in ("stt_gpu_float32.tflite", "stt_gpu_float16.tflite"):
        gpu = report["files"][name]["gpu_accelerator"]
        if status["checked"]:
            assert gpu["fully_accelerated"] and gpu["ops_on_cpu"] == 0, (name, gpu)
            assert gpu["label_agreement_with_cpu"] >= 0.995, (name, gpu)
            assert json.load(open(os.path.join(out, name.replace(".tflite", ".json"))))["gpu_accelerator"] == gpu
        else:
            assert gpu is None and status["reason"] in open(os.path.join(out, "export_report.md")).read()
    assert "gpu_accelerator" not in report["files"]["stt_float32.tflite"]  # the default form is not for GPUs


def test_labels_on_device_equal_argmax_with_ties():
    logits = np.random.default_rng(4).normal(size=(1, 5, 6, 9)).astype(np.float32)
    logits[0, 1, :, 3] = logits[0, 1, :, 6] = 7.0
    logits[0, 2, :, :] = 0.0  # all tied: class 0
    got = step_lib.labels_on_device(tf.constant(logits)).numpy()
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, logits.argmax(-1))


def test_per_frame_model_exports_with_both_interfaces(frame_exported, tmp_path):
    """psp_tiny (no STT): TFLite and ONNX, full and edge interfaces, int8 too; metadata names the I/O order.
    The export is the shared one of tests/conftest.py (float16 too, for tests/test_gpu_accelerator.py)."""
    out, report = frame_exported
    assert sorted(report["files"]) == sorted(
        [f"frame{edge}_{q}.tflite" for edge in ("", "_edge") for q in ("float32", "float16", "int8")]
        + ["frame_step.onnx", "frame_edge_step.onnx"])
    for name, entry in report["files"].items():
        assert entry["parity"]["label_agreement"] >= (0.97 if "int8" in name else 0.995 if "float16" in name else 0.999), (
            name, entry["parity"])
        meta = json.load(open(os.path.join(out, name.rsplit(".", 1)[0] + ".json")))
        assert meta["streaming"] is False and meta["input_order"] == ["frame"] and "state_layout" not in meta
        assert meta["inputs"]["frame"] == {"shape": [1, *SIZE, 3], "dtype": "uint8"}
        if "_edge" in name:
            assert meta["interface"] == "edge" and meta["output_order"] == ["labels"]
            assert meta["outputs"]["labels"] == {"shape": [1, *SIZE], "dtype": "int32"}
        else:
            assert meta["output_order"] == ["labels", "logits"]
        assert set(meta["meaning"]) == {*meta["input_order"], *meta["output_order"]}
    edge = tflite.run(os.path.join(out, "frame_edge_float32.tflite"),
                      {"frame": np.random.default_rng(0).integers(0, 256, (1, *SIZE, 3)).astype(np.uint8)})
    assert set(edge) == {"labels"} and edge["labels"].dtype == np.int32

    # edge_demo runs a per-frame model (no state) in both runtimes
    import cv2

    from stt_edge_demo import app

    video = str(tmp_path / "in.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10, (96, 48))
    for i in range(3):
        writer.write(np.full((48, 96, 3), 40 * i, np.uint8))
    writer.release()
    for name in ("frame_edge_float32.tflite", "frame_step.onnx"):
        code = app.main(["--model", os.path.join(out, name), "--video", video, "--no-display",
                         "--csv", str(tmp_path / "f.csv")])
        assert code == 0, name


def test_edge_interface_of_the_stt_step(tiny_model):
    """Edge interface: uint8 frame in, int32 labels == argmax of the full interface's logits, no logits."""
    full = step_lib.make_step_function(tiny_model, *SIZE, "dense_masked")
    edge = step_lib.make_step_function(tiny_model, *SIZE, "dense_masked", "edge")
    inputs, outputs = step_lib.io_order(edge)
    assert inputs == ["frame", "state", "reset"] and outputs == ["labels", "next_state"]
    assert edge.input_signature[0].dtype == tf.uint8 and full.input_signature[0].dtype == tf.float32
    frame = np.random.default_rng(3).integers(0, 256, (1, *SIZE, 3)).astype(np.uint8)
    state = np.zeros(edge.input_signature[1].shape, np.float32)
    reset = np.ones([1], np.float32)
    a, b = full(frame.astype(np.float32), state, reset), edge(frame, state, reset)
    depth = model_ops_depth(tiny_model)  # two traced graphs: the same ops, maybe fused otherwise
    assert_labels_match_logits(b["labels"], a["logits"], depth)
    assert_float32_close(b["next_state"], a["next_state"], depth)


def test_parity_meets_the_targets(exported):
    _, report = exported
    files = report["files"]
    for name in ("stt_float32.tflite", "stt_gpu_float32.tflite", "stt_step.onnx", "stt_gpu_step.onnx"):
        p = files[name]["parity"]
        assert p["label_agreement"] >= 0.999, (name, p)
        assert p["logits_max_abs_diff"] <= 1e-4 * max(1.0, p["logits_max_abs"]), (name, p)
    int8 = files["stt_int8.tflite"]["parity"]
    assert int8["label_agreement"] >= 0.98, int8
    assert int8["miou_drop_points"] <= 1.0, int8
    # The convolutions are int8, the STT block's 1x1 convolutions (key/value and query projections,
    # W^O, FFN) too: the one float convolution is the classifier. The attention stays float32.
    model = open(os.path.join(exported[0], "stt_int8.tflite"), "rb").read()
    assert tflite.tensor_types(model).get("INT8", 0) > 50
    assert files["stt_int8.tflite"]["float_ops"].get("CONV_2D") == 1, files["stt_int8.tflite"]["float_ops"]
    assert "BATCH_MATMUL" in files["stt_int8.tflite"]["float_ops"]


def test_onnx_tensorrt_limits(exported):
    _, report = exported
    assert report["files"]["stt_gpu_step.onnx"]["tensorrt_issues"] == []
    assert any("Loop" in issue for issue in report["files"]["stt_step.onnx"]["tensorrt_issues"])

    def topk_model(k, reduction=None):
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8192])
        v = helper.make_tensor_value_info("v", TensorProto.FLOAT, None)
        k_const = helper.make_node("Constant", [], ["k"], value=helper.make_tensor("kv", TensorProto.INT64, [1], [k]))
        nodes = [k_const, helper.make_node("TopK", ["x", "k"], ["v", "i"])]
        if reduction:
            nodes.append(helper.make_node("ScatterND", ["x", "i2", "u"], ["s"], reduction=reduction))
        return helper.make_model(helper.make_graph(nodes, "g", [x], [v]))

    assert onnx_export.tensorrt_issues(topk_model(3840)) == []
    assert "K=4096 > 3840" in onnx_export.tensorrt_issues(topk_model(4096))[0]
    assert any("reduction=add" in i for i in onnx_export.tensorrt_issues(topk_model(10, "add")))


def test_saved_model_cli_show_and_run(exported, tmp_path):
    out, _ = exported
    directory = os.path.join(out, "saved_model", "1")
    # The saved_model_cli console script's own module, run by this interpreter (a venv may lack the script).
    cli_tool = [sys.executable, "-m", "tensorflow.python.tools.saved_model_cli"]
    shown = subprocess.run([*cli_tool, "show", "--dir", directory, "--all"], env=ENV, capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr[-2000:]
    for text in ("signature_def['serving_default']", "signature_def['step']", "clip", "probabilities", "next_state"):
        assert text in shown.stdout, text

    meta = json.load(open(os.path.join(out, "stt_float32.json")))
    frame = np.random.default_rng(4).integers(0, 256, (1, *SIZE, 3)).astype(np.uint8)
    state = np.zeros(meta["inputs"]["state"]["shape"], np.float32)
    reset = np.ones([1], np.float32)
    for name, value in (("frame", frame), ("state", state), ("reset", reset)):
        np.save(tmp_path / f"{name}.npy", value)
    inputs = ";".join(f"{n}={tmp_path / (n + '.npy')}" for n in ("frame", "state", "reset"))
    ran = subprocess.run([*cli_tool, "run", "--dir", directory, "--tag_set", "serve", "--signature_def", "step",
                          "--inputs", inputs, "--outdir", str(tmp_path / "out")], env=ENV, capture_output=True, text=True)
    assert ran.returncode == 0, ran.stderr[-2000:]
    labels = np.load(tmp_path / "out" / "labels.npy")
    model = stt_keras.load_model(meta_model_path(out), compile=False)
    logits, _ = model.stream_step(frame, model.initial_state(1, *SIZE), True)
    assert_labels_match_logits(labels, logits, model_ops_depth(model))  # another process, another graph


def meta_model_path(out):
    return json.load(open(os.path.join(out, "export_report.json")))["model"]


# ------------------------------------------------------------ op checks, atomicity
def test_check_ops_rejects_variables_and_flex(tmp_path):
    class WithVariable(tf.Module):
        def __init__(self):
            self.v = tf.Variable(tf.ones([4]))

        @tf.function(input_signature=[tf.TensorSpec([1, 4], tf.float32)])
        def __call__(self, x):
            self.v.assign_add(x[0])
            return x * self.v

    module = WithVariable()
    tf.saved_model.save(module, str(tmp_path / "sm"))
    converter = tf.lite.TFLiteConverter.from_saved_model(str(tmp_path / "sm"))
    with pytest.raises(ValueError, match="VAR_HANDLE|ASSIGN_VARIABLE|READ_VARIABLE"):
        tflite.check_ops(converter.convert())

    @tf.function(input_signature=[tf.TensorSpec([2, 2], tf.float32)])
    def flex(x):
        return tf.linalg.det(x)[None]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([flex.get_concrete_function()], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    with pytest.raises(ValueError, match="Flex"):
        tflite.check_ops(converter.convert())


def test_failed_export_leaves_destination_untouched(trained_model_path, tmp_path, monkeypatch):
    out = tmp_path / "exports" / "model"
    out.mkdir(parents=True)
    (out / "previous.txt").write_text("the last good export")
    atomic.write_manifest(str(out))  # an earlier export: the only kind of folder stt-export replaces

    def broken(*args, **kwargs):
        raise RuntimeError("converter crashed")

    monkeypatch.setattr(tflite, "convert", broken)
    args = cli.build_parser().parse_args(["--model", trained_model_path, "--out", str(out), "--size", "64x128",
                                          "--formats", "savedmodel,tflite", "--forms", "default"])
    with pytest.raises(RuntimeError, match="converter crashed"):
        cli.run_export(args)
    assert sorted(os.listdir(out)) == ["export_manifest.json", "previous.txt"]
    assert sorted(os.listdir(out.parent)) == ["model"]  # no partial folder left behind


def test_atomic_directory_replaces_on_success(tmp_path):
    target = tmp_path / "x"
    target.mkdir()
    (target / "old").write_text("1")
    with atomic.atomic_directory(str(target)) as tmp:
        open(os.path.join(tmp, "new"), "w").write("2")
        assert not (target / "new").exists()  # nothing visible before the end
    assert sorted(os.listdir(target)) == ["new"]


def test_cli_rejects_bad_arguments(trained_model_path, tmp_path):
    for argv, message in ((["--size", "64by128"], "--size"), (["--forms", "cuda"], "--forms"),
                          (["--quantizations", "int4"], "--quantizations"), (["--interfaces", "tiny"], "--interfaces")):
        args = cli.build_parser().parse_args(["--model", trained_model_path, "--out", str(tmp_path / "o"), *argv])
        with pytest.raises(UserError, match=message):
            cli.run_export(args)
    args = cli.build_parser().parse_args(["--model", str(tmp_path / "missing.keras"), "--out", str(tmp_path / "o")])
    with pytest.raises(UserError, match="not found"):
        cli.run_export(args)
