"""Which ops of the STT block int8 export may quantize, measured op group by op group.

The block's ops sit under `dense_masked.SCOPE`; its sub-scopes are the op groups: `keys` (the
key/value projection: it writes the state), `query` (the query projection), `attention` (window
gathers, q.k, softmax, .v), `output` (W^O), `ffn` (the two FFN convolutions), `norm` (LayerNorms),
`select` (NSM score, change term, bisection top-k mask). For each variant in --variants (a `+` list
of groups quantized, `none` = the whole block float32), the dense_masked-form step of --model (or a --preset
with random weights) is converted to int8 with the exporter's settings otherwise (float classifier,
calibration 3 synthetic sequences x 6 frames), and reported:

  - labels vs Keras (the float32 dense_masked-form step, each streaming its own state) and mIoU against the
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
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

from int8_common import GpuStep, add_model_arguments, check_model_arguments, interleaved_latency, ratios_to  # noqa: E402

GROUPS = ("keys", "query", "attention", "output", "ffn", "norm", "select")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, repeats=5)
    p.add_argument("--variants", default="none,query+output+ffn",
                   help=f"comma list of `+` lists of groups quantized ({', '.join(GROUPS)}) or none")
    p.add_argument("--sequences", type=int, default=6, help="held-out synthetic sequences of 30 frames (0: skip)")
    p.add_argument("--calibration", default="3x6", metavar="SEQxFRAMES",
                   help="int8 calibration: synthetic sequences x frames (latency only: fewer is faster to convert)")
    args = p.parse_args()
    size = check_model_arguments(p, args)
    calibration_frames = tuple(int(v) for v in args.calibration.split("x"))
    variants = {}
    for text in args.variants.split(","):
        groups = () if text == "none" else tuple(text.split("+"))
        unknown = [g for g in groups if g not in GROUPS]
        if unknown:
            p.error(f"--variants: unknown group(s) {unknown}; groups: {', '.join(GROUPS)}")
        variants[text] = groups

    from stt_keras.export import calibration, parity

    step = GpuStep(args, size)
    state_shape = step.state_shape
    models = {name: step.convert_int8(name, calibration_frames, show_block=True, quantized_subscopes=groups,
                                      save_as=args.save and os.path.join(
                                          args.save, f"stt_int8_{name.replace('+', '_')}.tflite"))
              for name, groups in variants.items()}

    if args.sequences:
        sequences = calibration.synthetic_frames(*size, args.sequences, 30, calibration.EVALUATION_SEED)
        reference = parity.stream(step.reference, sequences, state_shape, np.float32)
        for name, model_bytes in models.items():
            candidate = parity.stream(parity.TFLiteStep(model_bytes, args.threads), sequences, state_shape, np.float32)
            report = parity.compare(reference, candidate, sequences, step.model.num_classes)
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
    rounds = interleaved_latency(runners, inputs, args.rounds, args.repeats)
    base = next(iter(variants))
    print(f"\nXNNPACK, {args.threads} threads, {args.rounds} rounds x {args.repeats} steps (median per round); "
          f"ratio to {base}: median [min, max] over rounds; load average {os.getloadavg()}")
    for name, (median, low, high) in ratios_to(rounds, base).items():
        print(f"  {name:32s} {1000 * np.median(rounds[name]):8.2f} ms  ratio {median:.3f} "
              f"[{low:.3f}, {high:.3f}]  {len(models[name]) / 1e6:.3f} MB")


if __name__ == "__main__":
    sys.exit(main())
