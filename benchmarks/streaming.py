"""Per-frame latency of streaming STT vs the per-frame baseline vs the naive clip re-run.

Side by side in one process, at 512 x 1024 (Cityscapes half resolution, batch 1):
  baseline   psp18: one encoder + decoder pass per frame
  streaming  stt_psp18 StreamingSegmenter step: one encoder pass, STT over the
             cached projected keys of the 7 previous frames, decoder
  naive      stt_psp18 on the whole clip every frame: 8 encoder passes + STT + decoder
All three have the same encoder and decoder weights; each gets the faster of graph
and XLA compilation. Target (issue 3): streaming <= 1.2x baseline.

Run: python benchmarks/streaming.py [--height 512 --width 1024] [--preset stt_psp18]
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from timing import timeit  # noqa: E402
from stt_keras.models import STTSegmenter  # noqa: E402




def best_of(make_fn, args, repeats):
    results = []
    for jit in (False, True):
        fn = tf.function(make_fn(), jit_compile=jit)
        t = timeit(lambda: tf.nest.map_structure(lambda x: x.numpy(), fn(*args)), repeats)
        results.append((t, "xla" if jit else "graph"))
    return min(results)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--height", type=int, default=512)
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--preset", default="stt_psp18")
    parser.add_argument("--baseline", default="psp18")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-naive", action="store_true")
    args = parser.parse_args()

    h, w = args.height, args.width
    stt = STTSegmenter.from_preset(args.preset, num_classes=19)
    base = STTSegmenter.from_preset(args.baseline, num_classes=19)
    t = stt.num_key_frames
    rng = np.random.default_rng(0)
    clip = tf.constant(rng.integers(0, 256, (1, t + 1, h, w, 3)).astype("uint8"))
    frame = clip[:, -1]
    stt(clip)
    base(frame)
    base.encoder.set_weights(stt.encoder.get_weights())
    base.decoder.set_weights(stt.decoder.get_weights())
    state = stt.initial_state(1, h, w)
    _, state = stt.stream_step(frame, state, tf.constant(True))

    print(f"{os.cpu_count()} cores, input {h}x{w}, T={t}, batch 1; ms per frame (median of {args.repeats})")
    rows = [
        ("baseline " + args.baseline, lambda: (lambda f: base(f)), (frame,)),
        ("streaming " + args.preset, lambda: (lambda f, s: stt.stream_step(f, s, tf.constant(False))), (frame, state)),
    ]
    if not args.skip_naive:
        rows.append(("naive " + args.preset + " (re-encode clip)", lambda: (lambda c: stt(c)), (clip,)))
    times = {}
    for name, make_fn, fn_args in rows:
        seconds, how = best_of(make_fn, fn_args, args.repeats)
        times[name.split()[0]] = seconds
        print(f"  {name:42s} {seconds * 1e3:9.1f} ms  ({how})", flush=True)
    print(f"streaming / baseline: {times['streaming'] / times['baseline']:.2f}x (target <= 1.2x)")
    if "naive" in times:
        print(f"naive / baseline:     {times['naive'] / times['baseline']:.2f}x")


if __name__ == "__main__":
    main()
