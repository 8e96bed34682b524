"""Does temporal context help? STT vs its per-frame baseline vs all-keys STT on the synthetic video.

Trains, with the same budget and seed, `stt_psp_tiny`, `psp_tiny` and `stt_psp_tiny`
with key_selection="all", then evaluates each on held-out synthetic sequences
(mIoU over every frame, TC with DIS flow, frames/s), and prints a Markdown table.

Run: python benchmarks/synthetic_accuracy.py [--steps 400] [--out runs/synthetic_accuracy]
(about 25 minutes on 2 cores with the defaults)
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from stt_keras import load_model  # noqa: E402
from training import train as train_lib  # noqa: E402
from training.evaluate import evaluate, synthetic_sequences  # noqa: E402

VARIANTS = [
    ("STT (sparse windows, top 50%)", "stt_psp_tiny", {}),
    ("per-frame baseline", "psp_tiny", {}),
    ("STT, all keys (vanilla)", "stt_psp_tiny", {"key_selection": "all"}),
]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--size", default="128x256")
    p.add_argument("--crop", default="128x128")
    p.add_argument("--sequences", type=int, default=24)
    p.add_argument("--eval-sequences", type=int, default=6)
    p.add_argument("--out", default="runs/synthetic_accuracy")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    rows = []
    for name, preset, overrides in VARIANTS:
        out = os.path.join(args.out, preset + ("_" + "_".join(f"{k}-{v}" for k, v in overrides.items()) if overrides else ""))
        argv = ["--preset", preset, "--out", out, "--steps", str(args.steps), "--checkpoint-every", str(max(1, args.steps // 4)),
                "--batch-size", str(args.batch_size), "--synthetic-size", args.size, "--crop", args.crop,
                "--synthetic-sequences", str(args.sequences), "--seed", str(args.seed), "--val-batches", "4", "--verbose", "2"]
        train_args = train_lib.build_parser().parse_args(argv)
        if overrides:
            train_args.stt_overrides = overrides
        start = time.perf_counter()
        train_lib.train(train_args)
        train_seconds = time.perf_counter() - start
        model = load_model(os.path.join(out, "last.keras"), compile=False)
        size = tuple(int(v) for v in args.size.split("x"))
        results = evaluate(model, synthetic_sequences(args.eval_sequences, size=size), model.num_classes)
        results.update(name=name, preset=preset, overrides=overrides, train_seconds=train_seconds)
        rows.append(results)
        with open(os.path.join(args.out, "results.json"), "w") as f:
            json.dump(rows, f, indent=2)
    print(f"\nsynthetic video, {args.steps} steps x batch {args.batch_size}, crop {args.crop}, "
          f"eval on {args.eval_sequences} held-out sequences of 30 frames at {args.size}\n")
    print("| model | mIoU | TC (DIS) | TC masked | frames/s | train min |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['name']} | {100 * r['miou']:.1f} | {100 * r['tc']:.1f} | {100 * r['tc_occlusion_masked']:.1f} "
              f"| {r['frames_per_second']:.1f} | {r['train_seconds'] / 60:.1f} |")


if __name__ == "__main__":
    main()
