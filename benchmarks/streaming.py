"""Per-frame latency of the Keras streaming STT step against its per-frame baseline, side by side.

For each pair (default: `stt_psp18` vs `psp18`, `stt_bise18` vs `bise18`) and each size (default:
256 x 512 and 512 x 1024), batch 1, float32, Keras graph mode (`tf.function`), one process:
  baseline   the per-frame model: one encoder + decoder pass
  step       `StreamingSegmenter`'s step (`stream_step` with a Python `reset`): one encoder pass, the STT
             over the cached projected keys of the T previous frames, the decoder, the state shifted
  step_tensor  the same with `reset` a tensor (one graph that branches on it)
  block      the STT block alone on the same features and state (`stt.attend`)
  rest       the step without the block (encoder, key projection, state shift, decoder): what the
             step costs besides the block
  naive      (--naive) the STT model on the whole clip every frame: T + 1 encoder passes
The STT and baseline share the encoder and decoder weights (random: the architecture is what costs).
The rows run interleaved, `--rounds` times; each ratio is the median over rounds of the ratio in
the same round, which a machine shared with other jobs moves far less than the times. Every time is
given as wall-clock and as this process's CPU time (all its threads; steadier under contention).
Target (issue 25): step / baseline <= 1.15x.

Run: python benchmarks/streaming.py [--pairs stt_psp18:psp18,stt_bise18:bise18] [--sizes 256x512,512x1024]
     [--rounds 5] [--naive]
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
from stt_keras import kernels  # noqa: E402
from stt_keras.models import STTSegmenter  # noqa: E402


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(line for line in f if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return "unknown"
    return ",".join(x for x in ("avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "amx_tile") if x in flags)


def run(fn, args):
    """(wall, CPU) seconds of one call, its first output (the logits) read into NumPy as a caller reads them.

    A step's state stays a tensor, as `StreamingSegmenter` keeps it: reading the state into NumPy too
    (7 x 64 x 128 x 256 floats at 512 x 1024) added ~85 ms of page faults to every step on a 2-core VM,
    a cost the stream itself does not have.
    """
    wall, cpu = time.perf_counter(), time.process_time()
    tf.nest.flatten(fn(*args))[0].numpy()
    return time.perf_counter() - wall, time.process_time() - cpu


def measure(preset, baseline, h, w, rounds, naive):
    stt = STTSegmenter.from_preset(preset, num_classes=19)
    base = STTSegmenter.from_preset(baseline, num_classes=19)
    t = stt.num_key_frames
    clip = tf.constant(np.random.default_rng(0).integers(0, 256, (1, t + 1, h, w, 3)).astype("uint8"))
    frame = clip[:, -1]
    stt(clip)
    base(frame)
    base.encoder.set_weights(stt.encoder.get_weights())
    base.decoder.set_weights(stt.decoder.get_weights())
    state = stt.initial_state(1, h, w)
    for i in range(3):  # a state of distinct frames, as in a stream
        _, state = stt.stream_step(clip[:, i], state, tf.constant(i == 0))
    features = tf.cast(stt._encode(frame, False)[0], tf.float32)

    def rest(f, s):  # the step without the block
        features, skips = stt._encode(f, False)
        current = stt.stt.project_keys(features)[:, None]
        logits = tf.cast(stt.decoder(features, skips, output_size=(h, w), training=False), tf.float32)
        return logits, tf.concat([s[:, 1:], current], axis=1)

    rows = {
        "baseline": (tf.function(lambda f: base(f)), (frame,)),
        "step": (tf.function(lambda f, s: stt.stream_step(f, s, False)), (frame, state)),  # as StreamingSegmenter
        "step_tensor": (tf.function(lambda f, s: stt.stream_step(f, s, tf.constant(False))), (frame, state)),
        "block": (tf.function(lambda x, s: stt.stt.attend(x, s)), (features, state)),
        "rest": (tf.function(rest), (frame, state)),
    }
    if naive:
        rows["naive"] = (tf.function(lambda c: stt(c)), (clip,))
    for fn, args in rows.values():  # trace and warm up
        run(fn, args)
        run(fn, args)
    times = {name: [] for name in rows}
    for _ in range(rounds):
        for name, (fn, args) in rows.items():
            times[name].append(run(fn, args))
    return {name: np.array(v) for name, v in times.items()}  # [rounds, (wall, cpu)]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", default="stt_psp18:psp18,stt_bise18:bise18", help="STT:baseline presets")
    parser.add_argument("--sizes", default="256x512,512x1024")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--naive", action="store_true", help="also the clip re-run (slow)")
    args = parser.parse_args()
    try:
        pairs = [tuple(p.split(":")) for p in args.pairs.split(",")]
        sizes = [tuple(int(v) for v in s.lower().split("x")) for s in args.sizes.split(",")]
        assert all(len(p) == 2 for p in pairs) and all(len(s) == 2 and min(s) > 0 for s in sizes) and args.rounds > 0
    except (ValueError, AssertionError):
        parser.error("--pairs is STT:BASELINE[,...], --sizes HxW[,...], --rounds a positive integer")

    print(f"{os.cpu_count()} cores ({cpu_flags()}), load average {os.getloadavg()[0]:.1f}, batch 1, float32, graph mode, "
          f"native kernels: {kernels.use_native()}; median over {args.rounds} interleaved rounds")
    for preset, baseline in pairs:
        for h, w in sizes:
            t = measure(preset, baseline, h, w, args.rounds, args.naive)
            ratio = lambda name, k: np.median(t[name][:, k] / t["baseline"][:, k])  # noqa: E731
            share = lambda k: np.median(t["block"][:, k] / t["step"][:, k])  # noqa: E731
            print(f"{preset} vs {baseline}, {h}x{w}:")
            for name in t:
                wall, cpu = np.median(t[name], axis=0) * 1e3
                extra = f"  {ratio(name, 0):.3f}x wall, {ratio(name, 1):.3f}x CPU" if name in ("step", "step_tensor", "rest", "naive") else ""
                print(f"  {name:9s} {wall:8.1f} ms wall {cpu:8.1f} ms CPU{extra}")
            print(f"  step / baseline: {ratio('step', 0):.3f}x wall, {ratio('step', 1):.3f}x CPU (target <= 1.15x); "
                  f"block share of the step: {100 * share(0):.1f}% wall, {100 * share(1):.1f}% CPU; "
                  f"load average now {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
