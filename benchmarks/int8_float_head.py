"""The int8 export with and without a float head (`export.tflite.convert(..., float_head=N)`).

For each N in --float-heads (0: everything int8 but the STT scope, as before; 1: the classifier
conv and the logits' upsampling float; 2: also the conv that feeds the classifier), converts the
dense_masked-form step of --model at --size to int8 (same calibration as the tests: 3 synthetic sequences x
6 frames) and reports:

  - size of the .tflite,
  - labels vs Keras (the float dense_masked-form step) over --steps vtest.avi steps, each model streaming
    its own state, and on the export's synthetic parity sequences,
  - labels GPU accelerator vs CPU (XNNPACK) over the same vtest.avi steps (needs the software
    Vulkan device: apt-get install chromium opencv-doc; --gpu off skips it),
  - XNNPACK latency: the models run side by side in one process, interleaved in --rounds rounds
    of --repeats steps each; per round the median of every model and its ratio to N=0; the
    report gives the ratios' median and min-max over the rounds (a shared machine moves the
    absolute times; the ratio within a round is what to compare).

    .venv/bin/python benchmarks/int8_float_head.py --model run/last.keras --size 64x128
    .venv/bin/python benchmarks/int8_float_head.py --preset stt_psp18 --size 256x512 --gpu off --steps 0  # latency only
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

from int8_common import GpuStep, add_model_arguments, check_model_arguments, interleaved_latency, ratios_to  # noqa: E402
from stt_edge_demo import litert_gpu  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(p, repeats=10)
    p.add_argument("--float-heads", default="0,1,2")
    p.add_argument("--steps", type=int, default=30, help="vtest.avi steps for the agreement (0: skip)")
    p.add_argument("--gpu", choices=("auto", "off"), default="auto")
    args = p.parse_args()
    size = check_model_arguments(p, args)
    heads = [v if v == "decoder" else int(v) for v in args.float_heads.split(",")]

    gpu_reason = litert_gpu.software_vulkan_env() if args.gpu == "auto" else "--gpu off"
    from stt_keras.export import calibration, parity
    from stt_keras.export.cli import int8_block_subscopes

    step = GpuStep(args, size)
    state_shape = step.state_shape
    models = {n: step.convert_int8(f"float_head={n}", float_head=n,
                                   quantized_subscopes=int8_block_subscopes(n),  # as stt-export
                                   save_as=args.save and os.path.join(args.save, f"stt_int8_head{n}.tflite"))
              for n in heads}

    # Agreement with Keras on the export's synthetic parity sequences (1 x 4 frames) and on vtest.avi.
    sequences = calibration.synthetic_frames(*size, 1, 4, calibration.EVALUATION_SEED)
    reference = parity.stream(step.reference, sequences, state_shape, np.float32)
    if args.steps:
        import test_gpu_accelerator as gpu_tests

        frames = gpu_tests.video_frames(*size, args.steps)
        details = {"frame": {"dtype": np.float32}, "state": {"shape": state_shape}}
        keras_labels = gpu_tests.stream_labels(step.reference, frames, details)
    for n, model_bytes in models.items():
        cpu = parity.TFLiteStep(model_bytes, args.threads)
        synthetic = parity.compare(reference, parity.stream(cpu, sequences, state_shape, np.float32), sequences,
                                   step.model.num_classes)["label_agreement"]
        line = f"float_head={n}: labels vs Keras: synthetic parity {100 * synthetic:.3f}%"
        if args.steps:
            on_cpu = gpu_tests.stream_labels(cpu, frames, details)
            line += f", vtest {100 * np.mean(on_cpu == keras_labels):.3f}% over {len(frames)} steps"
            if gpu_reason is None:
                gpu = litert_gpu.GpuModel(model_bytes)
                on_gpu = gpu_tests.stream_labels(gpu, frames, gpu.input_details)
                per_step = (on_gpu == on_cpu).reshape(len(frames), -1).mean(-1)
                line += (f"; GPU vs CPU {100 * per_step.mean():.3f}% (worst step {100 * per_step.min():.2f}%), "
                         f"fully accelerated {gpu.fully_accelerated and not gpu.op_split}")
            else:
                line += f"; GPU not checked: {gpu_reason}"
        print(line, flush=True)

    # XNNPACK latency, interleaved rounds.
    runners = {n: parity.TFLiteStep(b, args.threads) for n, b in models.items()}
    rng = np.random.default_rng(0)
    frame = rng.uniform(0, 255, (1, *size, 3)).astype(np.float32)
    inputs = {"frame": frame, "state": np.zeros(state_shape, np.float32), "reset": np.ones([1], np.float32)}
    for runner in runners.values():  # a real state: one step from reset
        runner(**inputs)
    inputs["state"] = np.asarray(runners[heads[0]](**inputs)["next_state"])
    inputs["reset"] = np.zeros([1], np.float32)
    rounds = interleaved_latency(runners, inputs, args.rounds, args.repeats)
    base = heads[0]
    print(f"\nXNNPACK, {args.threads} threads, {args.rounds} rounds x {args.repeats} steps (median per round); "
          f"ratio to float_head={base}: median [min, max] over rounds")
    for n, (median, low, high) in ratios_to(rounds, base).items():
        print(f"  float_head={n}: {1000 * np.median(rounds[n]):8.2f} ms (rounds "
              f"{1000 * min(rounds[n]):.2f}-{1000 * max(rounds[n]):.2f})  ratio {median:.3f} "
              f"[{low:.3f}, {high:.3f}]  {len(models[n]) / 1e6:.3f} MB")


if __name__ == "__main__":
    main()
