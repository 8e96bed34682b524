"""Cost of the STT on SegFormer: the streaming step of STT-SegFormer vs SegFormer per frame.

Side by side in one process (batch 1, Keras graph mode, random weights of the
KerasHub B0 architecture, so no download is needed), for each MiT stage the STT
can sit on (--stages): the per-frame SegFormer-B0 (one encoder + decoder pass)
and the STT model's `stream_step` (one encoder pass, the STT over the cached
projected keys of the previous frames, the same decoder). Both models share the
encoder and decoder weights. Target (issue 21): step / per frame <= 1.15x.

With --tflite-int8, the same pair converted to full-int8 LiteRT models (the gpu form: the STT
block kept float32, as stt-export does; calibrated on 2 x 3 synthetic frames) is timed the same
way with 2 threads.

Run: python benchmarks/segformer_cost.py [--height 256 --width 512] [--stages 3 4] [--size b0] [--tflite-int8]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from stt_keras_cli import load_library_module  # noqa: E402  (TensorFlow-free)

load_library_module("devices", "devices.py").cpu_only_without_cuda_driver()  # no CUDA probe without a driver

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from stt_keras.models import STTSegmenter  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--size", default="b0", choices=["b0", "b1"])
    parser.add_argument("--stages", type=int, nargs="+", default=[3, 4])
    parser.add_argument("--implementation", default="sparse", choices=["sparse", "dense_masked"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tflite-int8", action="store_true", help="also time int8 LiteRT models of both")
    args = parser.parse_args()

    h, w = args.height, args.width
    base = STTSegmenter.from_preset(f"segformer_{args.size}", image_segmenter_weights=None)
    frame = tf.constant(np.random.default_rng(0).integers(0, 256, (1, h, w, 3)).astype("uint8"))
    base(frame)
    runs = {"per-frame": tf.function(lambda f: base(f))}
    inputs = {"per-frame": (frame,)}
    for stage in args.stages:
        stt = STTSegmenter.from_preset(f"stt_segformer_{args.size}", image_segmenter_weights=None,
                                       features_stage=stage)
        stt.encoder.set_weights(base.encoder.get_weights())
        stt.decoder.set_weights(base.decoder.get_weights())
        state = stt.initial_state(1, h, w, packed=args.implementation == "dense_masked")
        _, state = stt.stream_step(frame, state, tf.constant(True), implementation=args.implementation)
        name = f"stage {stage} ({'x'.join(map(str, stt.state_shape(h, w)[2:4]))}x{stt.encoder.hidden_dims[stage - 1]})"
        runs[name] = tf.function(
            lambda f, s, stt=stt: stt.stream_step(f, s, tf.constant(False), implementation=args.implementation)[0])
        inputs[name] = (frame, state)
    for name, fn in runs.items():  # trace and warm up
        fn(*inputs[name]).numpy()
    # Interleaved: every round times each run once, and each step's ratio is taken against
    # the per-frame time of the same round, so load changes on a shared machine cancel out.
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn(*inputs[name]).numpy()
            times[name].append(time.perf_counter() - start)
    print(f"{os.cpu_count()} cores, input {h}x{w}, batch 1, SegFormer-{args.size.upper()}, STT {args.implementation}; "
          f"median of {args.repeats} interleaved rounds")
    base_times = np.array(times.pop("per-frame"))
    print(f"  per-frame SegFormer-{args.size.upper()}              {np.median(base_times) * 1e3:8.1f} ms")
    for name, values in times.items():
        ratio = np.median(np.array(values) / base_times)
        print(f"  stream_step, STT on {name:16s} {np.median(values) * 1e3:8.1f} ms   ratio {ratio:.2f}x", flush=True)
    if args.tflite_int8:
        tflite_int8(base, stt, h, w, args.repeats)


def tflite_int8(base, stt, h, w, repeats, threads=2):
    """Per-frame and streaming-step int8 LiteRT models of the same weights, timed interleaved."""
    from stt_keras.export import calibration, gpu_step, parity, step as step_lib, tflite

    frames = calibration.synthetic_frames(h, w, 1, 3, calibration.EVALUATION_SEED)[0][0]
    runners, inputs = {}, {}
    for name, model in (("per-frame", base), ("stream_step", stt)):
        fn = step_lib.make_step_function(model, h, w, "gpu")
        state_shape = stt.state_shape(h, w, packed=True) if model is stt else None
        dataset = calibration.representative_dataset(fn, h, w, state_shape, 2, 3, np.float32)
        model_bytes, _ = tflite.convert(tflite.frozen_function(fn), "int8", dataset,
                                        keep_float_scope=gpu_step.STT_SCOPE)
        runners[name] = parity.TFLiteStep(model_bytes, threads)
        frame = frames[-1][None].astype(np.float32)
        inputs[name] = {"frame": frame}
        if model is stt:
            inputs[name].update(state=np.zeros(state_shape, np.float32), reset=np.zeros([1], np.float32))
        runners[name](**inputs[name])
    times = {name: [] for name in runners}
    for _ in range(repeats):
        for name, runner in runners.items():
            start = time.perf_counter()
            runner(**inputs[name])
            times[name].append(time.perf_counter() - start)
    base_times = np.array(times["per-frame"])
    print(f"  LiteRT int8 ({threads} threads): per-frame {np.median(base_times) * 1e3:.1f} ms, stream_step "
          f"{np.median(times['stream_step']) * 1e3:.1f} ms, ratio "
          f"{np.median(np.array(times['stream_step']) / base_times):.2f}x", flush=True)


if __name__ == "__main__":
    main()
