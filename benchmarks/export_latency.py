"""Per-frame latency of the exported streaming step: Keras vs TFLite (XNNPACK) vs ONNX Runtime.

Side by side in one process, batch 1, 2 CPU threads everywhere (LiteRT's
num_threads=None means 1 thread, so it is set explicitly), at 512 x 1024 by
default with stt_psp18 (random weights: latency does not depend on them):

  keras            the library's stream_step as a tf.function (TF, float32)
  tflite <form> <q>  the converted step, form default|dense_masked, q float32|float16|dynamic_range|int8
  onnx <form>      tf2onnx + onnxruntime (CPU provider)

Every model streams a few synthetic frames first (state carried), then the
median of --repeats steps is reported with the model's size. Target (issue 5):
TFLite int8 at most half the Keras float32 time.

Run: python benchmarks/export_latency.py [--preset stt_psp18 --height 512 --width 1024 --repeats 5]
"""

import argparse
import json
import os
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from stt_keras_cli import load_library_module  # noqa: E402  (TensorFlow-free)

load_library_module("devices", "devices.py").cpu_only_without_cuda_driver()  # no CUDA probe without a driver

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from timing import timeit  # noqa: E402
from stt_keras.export import calibration, gpu_step, onnx_export, parity, step as step_lib, tflite  # noqa: E402
from stt_keras.layers import dense_masked  # noqa: E402
from stt_keras.models import STTSegmenter  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="stt_psp18")
    p.add_argument("--num-classes", type=int, default=19)
    p.add_argument("--height", type=int, default=512)
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--only", default="", help="comma list of row names to run (default: all)")
    p.add_argument("--json", default=None, help="also write the rows here")
    args = p.parse_args()
    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.keras.utils.set_random_seed(0)
    size = (args.height, args.width)

    model = STTSegmenter.from_preset(args.preset, num_classes=args.num_classes)
    model(np.zeros((1, model.num_key_frames + 1, *size, 3), np.uint8))
    frames = calibration.synthetic_frames(*size, 1, 3, calibration.EVALUATION_SEED)[0][0]
    only = {name.strip() for name in args.only.split(",") if name.strip()}
    rows = []

    def measure(name, step, frame_dtype, size_bytes):
        if only and name not in only:
            return
        state = np.zeros(state_shape, np.float32)
        for t, frame in enumerate(frames):  # stream a few frames: warm-up with a real state
            state = np.asarray(step(frame=frame[None].astype(frame_dtype), state=state,
                                    reset=np.array([float(t == 0)], np.float32))["next_state"])
        inputs = {"frame": frames[-1][None].astype(frame_dtype), "state": state, "reset": np.zeros([1], np.float32)}
        seconds = timeit(lambda: step(**inputs), args.repeats, warmup=1)
        rows.append({"name": name, "ms": 1000 * seconds, "mb": None if size_bytes is None else size_bytes / 1e6})
        print(f"{name:32s} {1000 * seconds:9.1f} ms   {'' if size_bytes is None else f'{size_bytes / 1e6:7.1f} MB'}", flush=True)

    fns = {form: step_lib.make_step_function(model, *size, form) for form in step_lib.FORMS}
    state_shape = list(model.state_shape(*size, packed=True))

    def keras_step(fn):
        return lambda **kw: {k: v.numpy() for k, v in fn(**kw).items()}

    measure("keras default", keras_step(fns["default"]), np.uint8, None)
    measure("keras dense_masked-form", keras_step(fns["dense_masked"]), np.float32, None)

    plan = [("default", "float32"), ("default", "float16"), ("default", "dynamic_range"),
            ("dense_masked", "float32"), ("dense_masked", "float16"), ("dense_masked", "dynamic_range"),
            ("dense_masked", "int8")]
    for form, quantization in plan:
        name = f"tflite {form} {quantization}"
        if only and name not in only:
            continue
        frame_dtype = np.float32 if form == "dense_masked" else np.uint8
        dataset = None
        if quantization == "int8":
            dataset = calibration.representative_dataset(fns[form], *size, state_shape, 2, 3, frame_dtype)
        model_bytes, _ = tflite.convert(tflite.frozen_function(fns[form]), quantization, dataset,
                                        keep_float_scope=gpu_step.STT_SCOPE)
        measure(name, parity.TFLiteStep(model_bytes, args.threads), frame_dtype, len(model_bytes))

    # Where the int8 step's time goes: the encoder alone (float32 vs int8) and the STT
    # block alone (float32, as it stays inside the int8 model).
    features_spec, _ = model._encode(tf.zeros([1, *size, 3]), False)
    feature_shape = features_spec.shape.as_list()

    @tf.function(input_signature=[tf.TensorSpec([1, *size, 3], tf.float32, name="frame")])
    def encoder_only(frame):
        return {"features": model._encode(frame, False)[0]}

    @tf.function(input_signature=[tf.TensorSpec(feature_shape, tf.float32, name="features"),
                                  tf.TensorSpec(state_shape, tf.float32, name="state")])
    def stt_only(features, state):
        with tf.name_scope(gpu_step.STT_SCOPE):
            return {"mixed": dense_masked.attend(model.stt, features, state)}

    frame_f = frames[-1][None].astype(np.float32)
    rng = np.random.default_rng(0)
    parts = [("tflite part: encoder float32", encoder_only, "float32", {"frame": frame_f}),
             ("tflite part: encoder int8", encoder_only, "int8", {"frame": frame_f}),
             ("tflite part: STT block float32", stt_only, "float32",
              {"features": rng.normal(size=feature_shape).astype(np.float32),
               "state": rng.normal(size=state_shape).astype(np.float32)})]
    for name, fn, quantization, inputs in parts:
        if only and name not in only:
            continue
        dataset = (lambda inputs=inputs: iter([inputs])) if quantization == "int8" else None
        model_bytes, _ = tflite.convert(tflite.frozen_function(fn), quantization, dataset)
        runner = parity.TFLiteStep(model_bytes, args.threads)
        seconds = timeit(lambda: runner(**inputs), args.repeats, warmup=1)
        rows.append({"name": name, "ms": 1000 * seconds, "mb": len(model_bytes) / 1e6})
        print(f"{name:32s} {1000 * seconds:9.1f} ms   {len(model_bytes) / 1e6:7.1f} MB", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        for form in step_lib.FORMS:
            name = f"onnx {form}"
            if only and name not in only:
                continue
            path = os.path.join(tmp, f"{form}.onnx")
            onnx_export.export(fns[form], step_lib.input_signature(model, *size, form), path)
            frame_dtype = np.float32 if form == "dense_masked" else np.uint8
            measure(name, parity.OnnxStep(path, args.threads), frame_dtype, os.path.getsize(path))

    base = next((r["ms"] for r in rows if r["name"] == "keras default"), None)
    print(f"\n{args.preset} at {args.height}x{args.width}, {args.threads} threads; ratio = time / keras default")
    for r in rows:
        ratio = f"{r['ms'] / base:5.2f}x" if base else ""
        print(f"  {r['name']:32s} {r['ms']:9.1f} ms  {ratio}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"preset": args.preset, "size": list(size), "threads": args.threads, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
