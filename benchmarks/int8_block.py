"""Which ops of the STT block int8 export may quantize, measured op group by op group.

The block's ops sit under `dense_masked.SCOPE`; its sub-scopes are the op groups: `keys` (the
key/value projection: it writes the state), `query` (the query projection), `attention` (window
gathers, q.k, softmax, .v), `output` (W^O), `ffn` (the two FFN convolutions), `norm` (LayerNorms),
`select` (NSM score, change term, bisection top-k mask). For each variant in --variants (a `+` list
of groups quantized, `none` = the whole block float32), the GPU-form step of --model (or a --preset
with random weights) is converted to int8 with the exporter's settings otherwise (float classifier,
calibration 3 synthetic sequences x 6 frames), and reported:

  - labels vs Keras (the float32 gpu-form step, each streaming its own state) and mIoU against the
    ground truth, both over stt-eval's held-out synthetic video (seed 1000, --sequences x 30 frames
    at the model size), with the Keras float32 mIoU beside it;
  - XNNPACK latency (--threads), the variants interleaved in --rounds rounds of --repeats steps,
    the ratio to the first variant per round: median [min, max];
  - the file size.

    .venv/bin/python benchmarks/int8_block.py --model run/last.keras --size 64x128
    .venv/bin/python benchmarks/int8_block.py --preset stt_psp18 --size 256x512 --sequences 0   # latency only
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

GROUPS = ("keys", "query", "attention", "output", "ffn", "norm", "select")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="a trained .keras file (agreement and mIoU need trained weights)")
    p.add_argument("--preset", default=None, help="instead of --model: a preset with random weights (latency)")
    p.add_argument("--size", default="64x128")
    p.add_argument("--variants", default="none,query+output+ffn",
                   help=f"comma list of `+` lists of groups quantized ({', '.join(GROUPS)}) or none")
    p.add_argument("--sequences", type=int, default=6, help="held-out synthetic sequences of 30 frames (0: skip)")
    p.add_argument("--calibration", default="3x6", metavar="SEQxFRAMES",
                   help="int8 calibration: synthetic sequences x frames (latency only: fewer is faster to convert)")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--save", default=None, help="folder to write the int8 models to")
    args = p.parse_args()
    if (args.model is None) == (args.preset is None):
        p.error("give exactly one of --model and --preset")
    size = tuple(int(v) for v in args.size.split("x"))
    calibration_frames = tuple(int(v) for v in args.calibration.split("x"))
    variants = {}
    for text in args.variants.split(","):
        groups = () if text == "none" else tuple(text.split("+"))
        unknown = [g for g in groups if g not in GROUPS]
        if unknown:
            p.error(f"--variants: unknown group(s) {unknown}; groups: {', '.join(GROUPS)}")
        variants[text] = groups

    import tensorflow as tf

    import stt_keras
    from stt_keras.export import calibration, parity, step as step_lib, tflite
    from stt_keras.export.gpu_step import STT_SCOPE

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    if args.model:
        model = stt_keras.load_model(args.model, compile=False)
    else:
        from stt_keras.models import STTSegmenter

        tf.keras.utils.set_random_seed(0)
        model = STTSegmenter.from_preset(args.preset, num_classes=19)
        model(np.zeros((1, model.num_key_frames + 1, *size, 3), np.uint8))
    fn = step_lib.make_step_function(model, *size, "gpu")
    state_shape = list(model.state_shape(*size, packed=True))
    frozen = tflite.frozen_function(fn)

    models = {}
    for name, groups in variants.items():
        dataset = calibration.representative_dataset(fn, *size, state_shape, *calibration_frames, np.float32)
        start = time.time()
        model_bytes, settings = tflite.convert(frozen, "int8", dataset, keep_float_scope=STT_SCOPE,
                                               quantized_subscopes=groups)
        models[name] = model_bytes
        print(f"{name}: {len(model_bytes) / 1e6:.3f} MB, converted in {time.time() - start:.0f} s; "
              f"{settings.get('quantized_in_float_scope', 'block float32')}; "
              f"float ops {tflite.float_ops_in_quantized(model_bytes)}", flush=True)
        if args.save:
            os.makedirs(args.save, exist_ok=True)
            with open(os.path.join(args.save, f"stt_int8_{name.replace('+', '_')}.tflite"), "wb") as f:
                f.write(model_bytes)

    if args.sequences:
        sequences = calibration.synthetic_frames(*size, args.sequences, 30, calibration.EVALUATION_SEED)
        keras_step = lambda **kw: {k: v.numpy() for k, v in fn(**kw).items()}  # noqa: E731
        reference = parity.stream(keras_step, sequences, state_shape, np.float32)
        for name, model_bytes in models.items():
            candidate = parity.stream(parity.TFLiteStep(model_bytes, args.threads), sequences, state_shape, np.float32)
            report = parity.compare(reference, candidate, sequences, model.num_classes)
            print(f"{name}: labels vs Keras {100 * report['label_agreement']:.3f}%, mIoU {100 * report['miou']:.2f} "
                  f"(Keras float32 {100 * report['miou_reference']:.2f}, drop {report['miou_drop_points']:.2f} points) "
                  f"over {args.sequences} x 30 held-out synthetic frames", flush=True)

    runners = {name: parity.TFLiteStep(b, args.threads) for name, b in models.items()}
    frames = calibration.synthetic_frames(*size, 1, 3, calibration.EVALUATION_SEED)[0][0]
    first = next(iter(runners.values()))
    state = np.zeros(state_shape, np.float32)
    for t, frame in enumerate(frames[:-1]):  # a real state
        state = np.asarray(first(frame=frame[None].astype(np.float32), state=state,
                                 reset=np.array([float(t == 0)], np.float32))["next_state"])
    inputs = {"frame": frames[-1][None].astype(np.float32), "state": state, "reset": np.zeros([1], np.float32)}
    rounds = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, runner in runners.items():
            runner(**inputs)
            times = []
            for _ in range(args.repeats):
                start = time.perf_counter()
                runner(**inputs)
                times.append(time.perf_counter() - start)
            rounds[name].append(statistics.median(times))
    base = next(iter(variants))
    print(f"\nXNNPACK, {args.threads} threads, {args.rounds} rounds x {args.repeats} steps (median per round); "
          f"ratio to {base}: median [min, max] over rounds; load average {os.getloadavg()}")
    for name in runners:
        ratios = [t / b for t, b in zip(rounds[name], rounds[base])]
        print(f"  {name:32s} {1000 * statistics.median(rounds[name]):8.2f} ms  ratio {statistics.median(ratios):.3f} "
              f"[{min(ratios):.3f}, {max(ratios):.3f}]  {len(models[name]) / 1e6:.3f} MB")


if __name__ == "__main__":
    sys.exit(main())
