"""stt-export at frame sizes that are not multiples of anything: every format, both step forms, with parity.

The PSP head pools its features into 1, 2, 3 and 6 bins and resizes each pool back
to the feature size. At a feature size that is not a multiple of the bins (a 96x160
frame has 12x20 features: 20 / 3), tf2onnx wrote the resize with a float scale whose
floor fell one pixel short, and ONNX Runtime refused the model
(export/onnx_export.py, `resize_to_sizes`). These tests export such sizes and stream
frames through every exported file and the SavedModel `step` signature against Keras.
"""

import json
import os

import numpy as np
import onnx
import pytest
import tensorflow as tf

from stt_keras.export import cli, onnx_export
from stt_keras.models import STTSegmenter


@pytest.fixture(scope="module")
def random_model_path(tmp_path_factory):
    """stt_psp_tiny with random weights (parity compares logits, which do not need training)."""
    tf.keras.utils.set_random_seed(3)
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=4)
    model(np.zeros((1, 4, 64, 64, 3), np.uint8))
    path = str(tmp_path_factory.mktemp("model") / "random.keras")
    model.save(path)
    return path


def test_onnx_resize_gets_the_exact_size_tensorflow_used(tmp_path):
    """A 3 -> 20 bilinear resize (scale 20 / 3, not a float32): ONNX Runtime loads it and matches TensorFlow."""
    import onnxruntime as ort
    import tf2onnx

    spec = [tf.TensorSpec([1, 3, 3, 2], tf.float32, name="x"), tf.TensorSpec([1, 5, 20, 2], tf.float32, name="f")]

    @tf.function(input_signature=spec)
    def fn(x, f):  # as in the PSP head: the resized pool is concatenated with the features
        return {"y": tf.concat([f, tf.image.resize(x, (5, 20), method="bilinear")], axis=-1)}

    raw, _ = tf2onnx.convert.from_function(fn, input_signature=spec, opset=onnx_export.OPSET)
    onnx.save(raw, str(tmp_path / "raw.onnx"))
    with pytest.raises(Exception, match="Inferred=19 Declared=20|Inferred=4 Declared=5"):  # floor(3 * float32(20 / 3)) = 19
        ort.InferenceSession(str(tmp_path / "raw.onnx"))
    path = tmp_path / "resize.onnx"
    model = onnx_export.export(fn, spec, path)
    resize = [n for n in model.graph.node if n.op_type == "Resize"]
    assert len(resize) == 1 and resize[0].input[2] == "" and resize[0].input[3]
    assert not [i for i in model.graph.initializer if i.name.startswith("scales")]  # no unused initializer left
    x = np.random.default_rng(0).normal(size=(1, 3, 3, 2)).astype(np.float32)
    f = np.random.default_rng(1).normal(size=(1, 5, 20, 2)).astype(np.float32)
    got = ort.InferenceSession(str(path)).run(None, {"x": x, "f": f})[0]
    np.testing.assert_allclose(got, fn(x, f)["y"].numpy(), atol=1e-5)


def _export(model_path, out, size, quantizations="float32", parity_frames=3):
    args = cli.build_parser().parse_args(
        ["--model", model_path, "--out", str(out), "--size", size, "--quantizations", quantizations,
         "--gpu-check", "off", "--parity-sequences", "1", "--parity-frames", str(parity_frames),
         "--calibration-sequences", "1", "--calibration-frames", "2"])
    return cli.run_export(args)


def _check_export(model_path, out, size, report):
    h, w = (int(v) for v in size.split("x"))
    expected = {"stt_float32.tflite", "stt_gpu_float32.tflite", "stt_step.onnx", "stt_gpu_step.onnx"}
    assert expected <= set(report["files"])
    for name, entry in report["files"].items():
        parity = entry["parity"]
        if "int8" in name:
            continue  # quantized: not a function-preserving check
        # float16 weights round the logits (random weights: many near-tied labels); float32 keeps the function.
        tolerance, agreement = (1e-2, 0.99) if "float16" in name else (1e-3, 0.999)
        assert parity["logits_max_abs_diff"] < tolerance * max(1.0, parity["logits_max_abs"]), (size, name, parity)
        assert parity["label_agreement"] > agreement, (size, name, parity)
        meta = json.load(open(os.path.join(out, name.rsplit(".", 1)[0] + ".json")))
        assert meta["input_size"] == [h, w] and meta["inputs"]["frame"]["shape"] == [1, h, w, 3]
    # The SavedModel `step` signature against the Keras model's own streaming step.
    import stt_keras

    model = stt_keras.load_model(model_path, compile=False)
    step = tf.saved_model.load(os.path.join(out, "saved_model", "1")).signatures["step"]
    rng = np.random.default_rng(7)
    packed = np.zeros(model.state_shape(h, w, packed=True), np.float32)
    state = model.initial_state(1, h, w)
    for t in range(3):
        frame = rng.integers(0, 256, (1, h, w, 3)).astype(np.uint8)
        logits, state = model.stream_step(frame, state, t == 0)
        out_sm = step(frame=tf.constant(frame), state=tf.constant(packed), reset=tf.constant([1.0 if t == 0 else 0.0]))
        packed = out_sm["next_state"].numpy()
        assert out_sm["logits"].shape == (1, h, w, model.num_classes)
        np.testing.assert_allclose(out_sm["logits"].numpy(), np.asarray(logits), atol=1e-4)


def test_export_at_an_odd_size_every_format_and_form(random_model_path, tmp_path):
    """37x61: features 5x8, 5 / 3 bins (the ONNX failure before resize_to_sizes), nothing a multiple of 8."""
    out = tmp_path / "odd"
    report = _export(random_model_path, out, "37x61")
    _check_export(random_model_path, out, "37x61", report)


@pytest.mark.slow
@pytest.mark.parametrize("size", ["96x160", "24x40", "100x150", "50x130", "72x72"])
def test_export_size_grid(random_model_path, tmp_path, size):
    """The size of the issue (96x160: 12x20 features) and others: every format, both forms, float and int8."""
    out = tmp_path / size
    report = _export(random_model_path, out, size, quantizations="float32,float16,int8")
    assert "stt_int8.tflite" in report["files"] and "stt_gpu_float16.tflite" in report["files"]
    _check_export(random_model_path, out, size, report)
