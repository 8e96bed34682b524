"""Cost of the STT on SegFormer: the streaming step of STT-SegFormer vs SegFormer per frame.

Side by side in one process (batch 1, Keras graph mode, random weights of the
KerasHub B0 architecture, so no download is needed), for each MiT stage the STT
can sit on (--stages): the per-frame SegFormer-B0 (one encoder + decoder pass)
and the STT model's `stream_step` (one encoder pass, the STT over the cached
projected keys of the previous frames, the same decoder). Both models share the
encoder and decoder weights. Target (issue 21): step / per frame <= 1.15x.

With --tflite-int8, the per-frame model and the streaming step of the last --stages entry are
converted to full-int8 LiteRT models as `stt-export` builds them (the gpu form: the STT block float32
but for its 1x1 convolutions, calibrated on 2 x 3 synthetic frames) and timed with 2 threads in
--rounds interleaved rounds of --repeats runs each (median per round; each ratio within a round, then
median [min, max]), with the same step with the block as identity (the block's share: 1 - that / step;
the key/value projection and the state shift stay in it). --tilings adds steps whose windowed attention
uses other query tilings (TILExGROUP: t x t query tiles, GROUP tiles per group; 8x9 is the form before
`dense_masked.attention_tiling`, at 256 x 512) beside the default ("auto"). Each is timed twice: wall
time, then this process's CPU time (all its threads; other jobs' load moves it less than wall time).

Run: python benchmarks/segformer_cost.py [--height 256 --width 512] [--stages 3 4] [--size b0] [--num-heads 4]
     [--tflite-int8 [--tilings auto 8x9] [--rounds 9]]
"""

import argparse
import contextlib
import os
import statistics
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
    parser.add_argument("--num-heads", type=int, default=None, help="the STT's attention heads (default: the preset's)")
    parser.add_argument("--implementation", default="sparse", choices=["sparse", "dense_masked"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--tflite-int8", action="store_true", help="also time int8 LiteRT models of both")
    parser.add_argument("--tilings", nargs="+", default=["auto"], metavar="TILING",
                        help="--tflite-int8: attention tilings of the step, 'auto' or TILExGROUP (e.g. 8x9)")
    parser.add_argument("--rounds", type=int, default=9, help="--tflite-int8: interleaved rounds")
    parser.add_argument("--threads", type=int, default=2, help="--tflite-int8: LiteRT threads")
    args = parser.parse_args()
    tilings = []
    for tiling in args.tilings:
        try:
            tilings.append(None if tiling == "auto" else tuple(int(v) for v in tiling.split("x")))
        except ValueError:
            parser.error(f"--tilings: {tiling!r} is neither 'auto' nor TILExGROUP (e.g. 8x9)")
        if tilings[-1] is not None and (len(tilings[-1]) != 2 or tilings[-1][0] not in (4, 8) or tilings[-1][1] < 1):
            parser.error(f"--tilings: {tiling!r}: TILE is 4 or 8, GROUP a positive number of tiles")
    if min(args.repeats, args.rounds, args.threads, 1 if args.num_heads is None else args.num_heads) < 1:
        parser.error("--repeats, --rounds, --threads and --num-heads must be positive")

    h, w = args.height, args.width
    base = STTSegmenter.from_preset(f"segformer_{args.size}", image_segmenter_weights=None)
    frame = tf.constant(np.random.default_rng(0).integers(0, 256, (1, h, w, 3)).astype("uint8"))
    base(frame)
    runs = {"per-frame": tf.function(lambda f: base(f))}
    inputs = {"per-frame": (frame,)}
    for stage in args.stages:
        heads = {} if args.num_heads is None else {"num_heads": args.num_heads}
        stt = STTSegmenter.from_preset(f"stt_segformer_{args.size}", image_segmenter_weights=None,
                                       features_stage=stage, **heads)
        stt.encoder.set_weights(base.encoder.get_weights())
        stt.decoder.set_weights(base.decoder.get_weights())
        for gate in (v for v in stt.stt.weights if "gate" in v.path):  # a trained block's gates are not 0
            gate.assign(np.random.default_rng(1).uniform(0.5, 1.0, gate.shape).astype("float32"))
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
    print(f"{os.cpu_count()} cores, input {h}x{w}, batch 1, SegFormer-{args.size.upper()}, STT {args.implementation}, "
          f"{stt.stt.num_heads} heads; "
          f"median of {args.repeats} interleaved rounds")
    base_times = np.array(times.pop("per-frame"))
    print(f"  per-frame SegFormer-{args.size.upper()}              {np.median(base_times) * 1e3:8.1f} ms")
    for name, values in times.items():
        ratio = np.median(np.array(values) / base_times)
        print(f"  stream_step, STT on {name:16s} {np.median(values) * 1e3:8.1f} ms   ratio {ratio:.2f}x", flush=True)
    if args.tflite_int8:
        tflite_int8(base, stt, h, w, args.repeats, args.rounds, tilings, args.threads)


@contextlib.contextmanager
def attention_tiling(tiling):
    """While active, `dense_masked.windowed_attention` uses `tiling` (tile, tiles per group); None: its own."""
    from stt_keras.layers import dense_masked

    saved = dense_masked.attention_tiling
    if tiling is not None:
        dense_masked.attention_tiling = lambda radii, d_r, num_heads, h=None, w=None: tiling
    try:
        yield
    finally:
        dense_masked.attention_tiling = saved


def tflite_int8(base, stt, h, w, repeats, rounds, tilings, threads=2):
    """Per-frame and streaming-step int8 LiteRT models of the same weights (stt-export's settings), interleaved."""
    from stt_keras.export import calibration, gpu_step, parity, step as step_lib, tflite
    from edge_cost import block_as_identity
    from stt_keras.layers import dense_masked
    from timing import interleaved_rounds

    frames = calibration.synthetic_frames(h, w, 1, 3, calibration.EVALUATION_SEED)[0][0]
    state_shape = stt.state_shape(h, w, packed=True)
    d_r = stt.stt.reduced_channels
    variants = [("per-frame", base, contextlib.nullcontext())]
    for tiling in tilings:
        chosen = tiling or dense_masked.attention_tiling(stt.stt.radii, d_r, stt.stt.num_heads)
        label = f"stream_step, {chosen[0]}x{chosen[0]} tiles, {chosen[1]} a group{'' if tiling else ' (auto)'}"
        variants.append((label, stt, attention_tiling(tiling)))
    variants.append(("step, block as identity", stt, block_as_identity(stt)))
    runs, sizes = {}, {}
    for name, model, context in variants:
        with context:
            fn = step_lib.make_step_function(model, h, w, "dense_masked")
            fn.get_concrete_function()  # traced now, under the context
            streaming = model is stt
            dataset = calibration.representative_dataset(fn, h, w, state_shape if streaming else None, 2, 3, np.float32)
            model_bytes, _ = tflite.convert(tflite.frozen_function(fn), "int8", dataset,
                                            keep_float_scope=gpu_step.STT_SCOPE if streaming else None,
                                            quantized_subscopes=gpu_step.STT_QUANTIZED if streaming else ())
        runner = parity.TFLiteStep(model_bytes, threads)
        inputs = {"frame": frames[-1][None].astype(np.float32)}
        if streaming:  # a real state: the previous frames streamed through this model
            state = np.zeros(state_shape, np.float32)
            for t, frame in enumerate(frames[:-1]):
                state = runner(frame=frame[None].astype(np.float32), state=state,
                               reset=np.array([1.0 if t == 0 else 0.0], np.float32))["next_state"]
            inputs.update(state=state, reset=np.zeros([1], np.float32))
        runs[name] = (lambda runner=runner, inputs=inputs: runner(**inputs))
        sizes[name] = len(model_bytes)
    for clock, what in ((time.perf_counter, "wall time"), (time.process_time, "CPU time of this process")):
        load = os.getloadavg()[0]
        times = interleaved_rounds(runs, rounds, repeats, clock=clock)
        print(f"  LiteRT int8, {threads} threads, {what}, {rounds} interleaved rounds of {repeats} (median per round; "
              f"ratios within a round: median [min, max]); load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
        base_times = times["per-frame"]
        identity = times["step, block as identity"]
        for name, values in times.items():
            ratio = [v / b for v, b in zip(values, base_times)]
            line = (f"    {name:42s} {statistics.median(values) * 1e3:8.1f} ms  {sizes[name] / 1e6:5.2f} MB  ratio "
                    f"{statistics.median(ratio):.2f}x [{min(ratio):.2f}, {max(ratio):.2f}]")
            if name.startswith("stream_step"):
                share = [1 - i / v for v, i in zip(values, identity)]
                line += f"  block {100 * statistics.median(share):.0f}% [{100 * min(share):.0f}, {100 * max(share):.0f}]"
            print(line, flush=True)


if __name__ == "__main__":
    main()
