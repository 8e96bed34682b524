"""Post-training quantization (PTQ) against quantization-aware fine-tuning (QAT), at the same total steps.

Per seed in --seeds: a base model is trained as the tests' int8 fixture is (stt_psp_tiny, --top-ratio 0.5,
4 synthetic sequences at --size, batch 2, --base-steps steps). Two arms continue it for --steps more
steps with the same settings (`stt-train --init-from base`, the block's form kept): `float` as before,
`qat` with `--quantization-aware`. Each arm's last model is exported the way `stt-export` does by default
(dense_masked form, int8, float classifier, the block's 1x1 convolutions int8, 3 x 6 calibration
frames) and measured:

  - mIoU of the Keras float32 model and of its int8 file, and their label agreement, over stt-eval's
    held-out synthetic video (seed 1000, --sequences x 30 frames), each streaming its own state;
  - over --vtest-steps steps of street footage (vtest.avi), state carried: int8 (CPU, XNNPACK) labels
    vs Keras, and int8 on LiteRT's GPU accelerator vs int8 on the CPU (tests/test_gpu_accelerator.py's
    measure; needs the software Vulkan device: apt-get install chromium opencv-doc).

With --after STEPS, QAT as it is usually done instead: after the model is trained. Two more arms
start from each seed's `float` arm (base + --steps float steps) and train STEPS more at --after-lr:
`float_then_float` without and `float_then_qat` with `--quantization-aware` (the same steps, so
the extra steps are not what is compared).

Per arm the mean and the [min, max] over seeds; runs/ is reused (a finished training is not redone).

    .venv/bin/python benchmarks/quantization_aware.py --seeds 0 1 2 --out /tmp/qat
    .venv/bin/python benchmarks/quantization_aware.py --seeds 0 1 2 --out /tmp/qat --after 50 --after-lr 0.001
"""

import argparse
import json
import os
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))

ARMS = ("float", "qat")
AFTER_ARMS = ("float_then_float", "float_then_qat")


def train(out, seed, size, steps, init_from=None, quantization_aware=False, lr=None):
    """stt-train as the tests' int8 fixture (its settings), into `out`; the path of its last model."""
    last = os.path.join(out, "last.keras")
    if os.path.exists(os.path.join(out, "done")):
        return last
    args = ["--preset", "stt_psp_tiny", "--batch-size", "2", "--synthetic-sequences", "4", "--synthetic-size", size,
            "--val-batches", "1", "--verbose", "2", "--steps", str(steps), "--checkpoint-every", str(steps),
            "--out", out, "--top-ratio", "0.5", "--seed", str(seed)]
    if init_from:  # the block keeps its (post-norm) form, so its weights are copied too
        args += ["--init-from", init_from, "--no-norm-first"]
    if quantization_aware:
        args.append("--quantization-aware")
    if lr is not None:
        args += ["--lr", str(lr)]
    result = subprocess.run([sys.executable, "-m", "stt_keras.training.train", *args], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"stt-train failed ({out}):\n{result.stderr[-3000:]}")
    open(os.path.join(out, "done"), "w").close()
    return last


def measure(model_path, size, sequences, vtest_steps, threads=2):
    """The arm's numbers (module docstring)."""
    from int8_common import GpuStep
    from stt_edge_demo import litert_gpu
    from stt_keras.export import calibration, parity
    from stt_keras.export.cli import int8_block_subscopes

    step = GpuStep(argparse.Namespace(model=model_path, preset=None, threads=threads), size)
    model_bytes = step.convert_int8(os.path.basename(os.path.dirname(model_path)), float_head=1,
                                    quantized_subscopes=int8_block_subscopes(1))
    cpu = parity.TFLiteStep(model_bytes, threads)
    held_out = calibration.synthetic_frames(*size, sequences, 30, calibration.EVALUATION_SEED)
    report = parity.compare(parity.stream(step.reference, held_out, step.state_shape, np.float32),
                            parity.stream(cpu, held_out, step.state_shape, np.float32), held_out,
                            step.model.num_classes)
    result = {"miou_float32": 100 * report["miou_reference"], "miou_int8": 100 * report["miou"],
              "int8_vs_keras_synthetic": 100 * report["label_agreement"]}
    if vtest_steps:
        import test_gpu_accelerator as gpu_tests

        frames = gpu_tests.video_frames(*size, vtest_steps)
        details = {"frame": {"dtype": np.float32}, "state": {"shape": step.state_shape}}
        on_cpu = gpu_tests.stream_labels(cpu, frames, details)
        result["int8_vs_keras_vtest"] = 100 * float(np.mean(on_cpu == gpu_tests.stream_labels(step.reference, frames,
                                                                                              details)))
        reason = litert_gpu.software_vulkan_env()
        if reason is None:
            gpu = litert_gpu.GpuModel(model_bytes)
            per_step = (gpu_tests.stream_labels(gpu, frames, gpu.input_details) == on_cpu).reshape(len(frames), -1)
            result["gpu_vs_cpu"] = 100 * float(per_step.mean())
            result["gpu_vs_cpu_worst_step"] = 100 * float(per_step.mean(-1).min())
        else:
            print(f"GPU not checked: {reason}", flush=True)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--size", default="64x128", help="frame size HxW (training and measures)")
    p.add_argument("--base-steps", type=int, default=100, help="the base model's steps (the fixture's: 100)")
    p.add_argument("--steps", type=int, default=100, help="each arm's steps after the base")
    p.add_argument("--sequences", type=int, default=6, help="held-out synthetic sequences of 30 frames")
    p.add_argument("--vtest-steps", type=int, default=30, help="street footage steps (0: skip)")
    p.add_argument("--after", type=int, default=0, metavar="STEPS", help="also QAT after training (docstring)")
    p.add_argument("--after-lr", type=float, default=0.001, help="--after arms' learning rate")
    p.add_argument("--out", required=True, help="folder for the runs and results.json")
    args = p.parse_args()
    if min(args.base_steps, args.steps, args.sequences) < 1 or args.after < 0:
        p.error("--base-steps, --steps and --sequences must be at least 1, --after at least 0")
    size = tuple(int(v) for v in args.size.split("x"))

    path = os.path.join(args.out, "results.json")
    results = json.load(open(path)) if os.path.exists(path) else {}
    for seed in args.seeds:
        folder = os.path.join(args.out, f"seed{seed}")
        base = train(os.path.join(folder, "base"), seed, args.size, args.base_steps)
        arms = {arm: (base, args.steps, arm == "qat", None) for arm in ARMS}
        if args.after:
            after = os.path.join(folder, "float", "last.keras")
            arms.update({arm: (after, args.after, arm.endswith("qat"), args.after_lr) for arm in AFTER_ARMS})
        for arm, (init, steps, qat, lr) in arms.items():
            key = f"{seed}/{arm}"
            model = train(os.path.join(folder, arm), seed, args.size, steps, init, qat, lr)
            if key not in results:
                results[key] = measure(model, size, args.sequences, args.vtest_steps)
                os.makedirs(args.out, exist_ok=True)
                json.dump(results, open(path, "w"), indent=1)
            print(key, {k: round(v, 3) for k, v in results[key].items()}, flush=True)

    print(f"\n{len(args.seeds)} seeds ({args.seeds}); mean [min, max] over seeds")
    for metric in next(iter(results.values())):
        cells = []
        for arm in ARMS + (AFTER_ARMS if args.after else ()):
            values = [results[f"{s}/{arm}"][metric] for s in args.seeds if metric in results.get(f"{s}/{arm}", {})]
            cells.append(f"{arm} {np.mean(values):.3f} [{min(values):.3f}, {max(values):.3f}]" if values else f"{arm} -")
        print(f"  {metric:26s} " + "   ".join(cells))


if __name__ == "__main__":
    main()
