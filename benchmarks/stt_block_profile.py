"""Where the STT block's time goes in LiteRT (XNNPACK, CPU): the block cut into its op groups.

The LiteRT Python API has no per-op profiler, so the block of --preset (random weights, seed 0) at
--size is cut into sub-models, each one op group of the exported dense_masked-form block (`dense_masked`,
the code `stt-export` traces) on inputs of the block's real shapes, converted float32 (the block's
float part stays float32 in the int8 export too) and timed side by side in one process:

  query      LayerNorm (pre-norm only) and W^Q, 1x1 convolution
  attention  windowed attention over the packed key/value state: window tiling, q.k, softmax, .v
  post       W^O, LayerNorms, FFN (1x1 convolutions)
  nsm        the NSM selection score (and the change term, if the preset has one)
  top_mask   the bisection top-k mask on the scores
  blend      mask * out + (1 - mask) * features
  block      the whole block (`dense_masked.attend`), for the sum's check

With --step, the whole int8 streaming step (`stt-export --quantizations int8`'s settings) and the
same step with the block as identity are timed in the same rounds.
Groups are timed interleaved in --rounds rounds of --repeats invocations (median per round);
each group's share of the `block` sub-model is taken within a round: median [min, max].

    nice -n 10 python benchmarks/stt_block_profile.py --preset stt_psp18 --size 256x512 --step
"""

import argparse
import os
import statistics
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

GROUPS = ("query", "attention", "post", "nsm", "top_mask", "blend", "block")


def group_functions(stt, h, w):
    """{group: (tf.function with an input signature and dict outputs, {input name: array})} at feature size h x w."""
    import tensorflow as tf

    from stt_keras.layers import block, dense_masked as dm

    d_r = stt.reduced_channels
    d = stt.weights_of("query")[0].shape[0]
    packed_channels = stt.num_key_frames * 2 * d_r
    rng = np.random.default_rng(0)
    arrays = {
        "features": rng.standard_normal((1, h, w, d)).astype(np.float32),
        "packed": rng.standard_normal((1, h, w, packed_channels)).astype(np.float32),
        "queries": rng.standard_normal((1, h, w, d_r)).astype(np.float32),
        "attended": rng.standard_normal((1, h, w, d_r)).astype(np.float32),
        "scores": rng.standard_normal((1, h, w, 1)).astype(np.float32),
        "mask": (rng.random((1, h, w, 1)) < 0.5).astype(np.float32),
        "out": rng.standard_normal((1, h, w, d)).astype(np.float32),
    }

    def spec(name):
        return tf.TensorSpec(arrays[name].shape, tf.float32, name=name)

    def norm(x, gamma, beta):
        return dm.layer_norm(x, gamma, beta, stt.layer_norm_epsilon)

    bodies = {
        "query": (("features",), lambda features: block.project_queries(stt, features, dm.dense, norm)),
        "attention": (("queries", "packed"),
                      lambda queries, packed: dm.windowed_attention(queries, packed, stt.radii, stt.num_heads)),
        "post": (("features", "attended"),
                 lambda features, attended: block.post_attention(stt, features, attended, dm.dense, norm)),
        "nsm": (("features", "packed"), lambda features, packed: dm.selection_scores(stt, features, packed)),
        "top_mask": (("scores",), lambda scores: dm.top_mask(scores, stt.top_ratio)),
        "blend": (("mask", "out", "features"), lambda mask, out, features: mask * out + (1.0 - mask) * features),
        "block": (("features", "packed"), lambda features, packed: dm.attend(stt, features, packed)),
    }
    out = {}
    for group, (names, body) in bodies.items():
        fn = tf.function(lambda *args, body=body: {"y": body(*args)}, input_signature=[spec(n) for n in names],
                         autograph=False)
        out[group] = (fn, {n: arrays[n] for n in names})
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="stt_psp18")
    p.add_argument("--size", default="256x512", help="HxW of the frame (the block runs at the features' size)")
    p.add_argument("--groups", default=",".join(GROUPS), help=f"comma list of {', '.join(GROUPS)}")
    p.add_argument("--step", action="store_true", help="also time the int8 step and the step with the block as identity")
    p.add_argument("--calibration", default="1x2", metavar="SEQxFRAMES", help="int8 calibration of --step")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    groups = [g.strip() for g in args.groups.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        p.error(f"--groups: unknown {unknown}; choose from {list(GROUPS)}")
    try:
        size = tuple(int(v) for v in args.size.split("x"))
        calibration_frames = tuple(int(v) for v in args.calibration.split("x"))
    except ValueError:
        p.error("--size is HxW, --calibration SEQxFRAMES")
    if len(size) != 2 or min(size) < 32 or len(calibration_frames) != 2 or min(calibration_frames) < 1:
        p.error("--size is HxW (at least 32x32), --calibration SEQxFRAMES")
    if args.rounds < 1 or args.repeats < 1 or args.threads < 1:
        p.error("--rounds, --repeats and --threads must be positive")

    from stt_keras.models.stt.stt_presets import PRESETS

    if PRESETS.get(args.preset, {}).get("stt") is None:
        p.error(f"--preset {args.preset!r} is not a preset with an STT block; choose from "
                f"{sorted(name for name, recipe in PRESETS.items() if recipe.get('stt'))}")

    import tensorflow as tf

    from edge_cost import build, cpu_features, make_runner, prepared_inputs, summary, time_rounds
    from stt_edge_demo.runners import LiteRTSession
    from stt_keras.export import calibration, tflite

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    features = cpu_features()
    print(f"CPU: {features}; {args.threads} threads; load average at start {os.getloadavg()}", flush=True)
    model = build(args.preset, size)
    h, w = model.state_shape(*size, packed=True)[1:3]
    runners = {}
    functions = group_functions(model.stt, h, w)
    for group in groups:
        fn, inputs = functions[group]
        model_bytes, _ = tflite.convert(tflite.frozen_function(fn), "float32")
        session = LiteRTSession(model_bytes, args.threads)
        runners[group] = (session, inputs)
        print(f"{group:10s} ops {tflite.op_histogram(model_bytes)}", flush=True)
    if args.step:
        frames = calibration.synthetic_frames(*size, 1, 4, calibration.EVALUATION_SEED)[0][0]
        for name, identity in (("int8_step", False), ("int8_no_block", True)):
            step, dtype, state_shape, nbytes = make_runner("tflite_int8", model, size, args.threads, None, name,
                                                           identity, calibration_frames)
            runners[name] = (step, prepared_inputs(step, dtype, state_shape, frames))
    load = os.getloadavg()[0]
    times = time_rounds({name: (runner, inputs) for name, (runner, inputs) in runners.items()}, args.rounds, args.repeats)
    print(f"\n{args.preset} at {size[0]}x{size[1]} (block at {h}x{w}), LiteRT XNNPACK, {args.threads} threads, "
          f"{args.rounds} rounds x {args.repeats} (median per round); load average {load:.1f} -> {os.getloadavg()[0]:.1f}")
    base = "block" if "block" in times else None
    for name, values in times.items():
        line = f"  {name:14s} {1000 * statistics.median(values):8.1f} ms"
        if base and name in GROUPS:
            share = summary([v / b for v, b in zip(values, times[base])])
            line += f"  of block {100 * share['median']:5.1f}% [{100 * share['min']:.1f}, {100 * share['max']:.1f}]"
        print(line)
    if args.step and "int8_step" in times:
        share = summary([1 - n / s for s, n in zip(times["int8_step"], times["int8_no_block"])])
        print(f"  block's share of the int8 step {100 * share['median']:.0f}% [{100 * share['min']:.0f}, {100 * share['max']:.0f}]")
    print(f"CPU: {features}")


if __name__ == "__main__":
    sys.exit(main())
