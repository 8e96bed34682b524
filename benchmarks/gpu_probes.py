"""Probes of LiteRT's GPU accelerator behind docs/gpu_accelerator.md (correctness, no timing claims).

    # int8 strided 1x1 convolution: wrong on the accelerator; slice + stride-1 1x1: exact
    .venv/bin/python benchmarks/gpu_probes.py conv1x1
    # an exported int8 (or float) step on the GPU vs the CPU over 30 vtest.avi steps, with the CPU
    # logits' top-2 margins of the disagreeing pixels (in quantization steps for an int8 model)
    .venv/bin/python benchmarks/gpu_probes.py stream exports/x/stt_int8.tflite --size 64x128
    # the accelerator's wait for a step's outputs: chains of N 3x3 convolutions (SwiftShader: ~10-20 s each)
    .venv/bin/python benchmarks/gpu_probes.py timeout 5 14

Needs the software Vulkan device (apt-get install chromium opencv-doc), see docs/gpu_accelerator.md.
"""

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from stt_edge_demo import litert_gpu  # noqa: E402
from stt_keras.utils.sizes import parse_size  # noqa: E402  (the shared HxW parser; loads TensorFlow)


def _convert(fn, x, int8):
    import tensorflow as tf

    spec = tf.TensorSpec(x.shape, tf.float32, name="x")
    concrete = tf.function(lambda v: {"y": fn(v)}, input_signature=[spec]).get_concrete_function()
    converter = tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf.Module())
    if int8:
        rng = np.random.default_rng(1)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ({"x": rng.normal(size=x.shape).astype(np.float32)} for _ in range(20))
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()


def conv1x1():
    import tensorflow as tf
    from ai_edge_litert.interpreter import Interpreter

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 16, 32, 64)).astype(np.float32)
    w1 = rng.normal(size=(1, 1, 64, 64)).astype(np.float32) * 0.2
    w3 = rng.normal(size=(3, 3, 64, 64)).astype(np.float32) * 0.1
    cases = [("1x1 stride 2", lambda v: tf.nn.conv2d(v, w1, 2, "VALID")),
             ("1x1 stride 1", lambda v: tf.nn.conv2d(v, w1, 1, "VALID")),
             ("slice ::2 + 1x1 stride 1", lambda v: tf.nn.conv2d(v[:, ::2, ::2, :], w1, 1, "VALID")),
             ("3x3 stride 2", lambda v: tf.nn.conv2d(v, w3, 2, "SAME"))]
    for int8 in (False, True):
        for name, fn in cases:
            model = _convert(fn, x, int8)
            cpu = Interpreter(model_content=model).get_signature_runner()(x=x)["y"]
            gpu = litert_gpu.GpuModel(model)(x=x)["y"]
            print(f"{'int8' if int8 else 'float32':7s} {name:26s} max|GPU - CPU| {np.abs(gpu - cpu).max():.4f} "
                  f"(outputs up to {np.abs(cpu).max():.2f})", flush=True)


def stream(path, size, steps):
    from ai_edge_litert.interpreter import Interpreter

    import test_gpu_accelerator as gpu_tests

    frames = gpu_tests.video_frames(*size, steps)
    gpu = litert_gpu.GpuModel(path)
    print(f"{path}: fully accelerated {gpu.fully_accelerated}, validation errors {len(gpu.validation_errors)}")
    cpu = Interpreter(model_path=path, num_threads=2).get_signature_runner()
    inputs = gpu.input_details
    state_g = state_c = np.zeros(inputs["state"]["shape"], np.float32)
    step_size, agree, margins, margins_off = None, [], [], []
    for t, frame in enumerate(frames):
        feed = dict(frame=frame[None].astype(inputs["frame"]["dtype"]), reset=np.array([1.0 if t == 0 else 0.0], np.float32))
        out_g, out_c = gpu(state=state_g, **feed), cpu(state=state_c, **feed)
        logits_g, logits_c = np.asarray(out_g["logits"])[0], np.asarray(out_c["logits"])[0]
        if step_size is None:
            values = np.unique(logits_c)
            step_size = float(np.min(np.diff(values))) if len(values) > 1 else 1.0
        top2 = np.sort(logits_c, -1)[..., -2:]
        margin = (top2[..., 1] - top2[..., 0]) / step_size
        differ = logits_g.argmax(-1) != logits_c.argmax(-1)
        agree.append(1.0 - differ.mean())
        margins.append(margin.ravel())
        margins_off.append(margin[differ])
        state_g, state_c = np.asarray(out_g["next_state"]), np.asarray(out_c["next_state"])
    margins, margins_off = np.concatenate(margins), np.concatenate(margins_off)
    print(f"labels agree {100 * np.mean(agree):.3f}% over {steps} steps (worst step {100 * np.min(agree):.2f}%); "
          f"smallest logit step {step_size:.4g}")
    for k in (0, 1, 2):
        print(f"  CPU top-2 margin <= {k} steps: {100 * np.mean(margins <= k + 1e-3):.2f}% of pixels, "
              f"{100 * np.mean(margins_off <= k + 1e-3) if len(margins_off) else 0:.1f}% of disagreeing pixels")


def timeout(counts):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 128, 256, 128)).astype(np.float32)
    for n in counts:
        weights = [rng.normal(size=(3, 3, 128, 128)).astype(np.float32) * 0.03 for _ in range(n)]

        def fn(v, weights=weights):
            for w in weights:
                v = tf.nn.relu(tf.nn.conv2d(v, w, 1, "SAME"))
            return v

        model = litert_gpu.GpuModel(_convert(fn, x, False))
        start = time.time()
        try:
            model(x=x)
            print(f"{n} convolutions: outputs read after {time.time() - start:.1f} s", flush=True)
        except Exception as error:  # the accelerator's TensorBufferWrapper error
            print(f"{n} convolutions: failed after {time.time() - start:.1f} s: {str(error).splitlines()[-1]}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="probe", required=True)
    sub.add_parser("conv1x1")
    s = sub.add_parser("stream")
    s.add_argument("model")
    s.add_argument("--size", default="64x128", type=parse_size)
    s.add_argument("--steps", type=int, default=30)
    t = sub.add_parser("timeout")
    t.add_argument("counts", type=int, nargs="+")
    args = parser.parse_args(argv)
    reason = litert_gpu.software_vulkan_env()
    if reason:
        sys.exit(f"gpu_probes: {reason}")
    if args.probe == "conv1x1":
        conv1x1()
    elif args.probe == "stream":
        stream(args.model, args.size, args.steps)
    else:
        timeout(args.counts)


if __name__ == "__main__":
    main()
