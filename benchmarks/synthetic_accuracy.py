"""Does temporal context help? STT vs its per-frame baseline vs all-keys STT on the synthetic video.

Trains, with the same budget and seed, `stt_psp_tiny`, `psp_tiny` and `stt_psp_tiny`
with key_selection="all", then evaluates each on held-out synthetic sequences
(mIoU over every frame, TC with DIS flow, frames/s), and prints a Markdown table.

Run: python benchmarks/synthetic_accuracy.py [--steps 400] [--out runs/synthetic_accuracy]
         [--seeds 0 1 2] [--variants stt base stt_all stt_res stt_res_all]
(about 8 minutes per variant and seed on 2 cores; results.json keeps finished runs, so an
interrupted benchmark resumes)
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

# (key, table name, preset, STT overrides). "residual" is not in the paper: the STT output is added
# to the selected points (zero-initialised expansion, so training starts from the per-frame
# model) instead of replacing them.
VARIANTS = [
    ("stt", "STT (sparse windows, top 50%)", "stt_psp_tiny", {}),
    ("base", "per-frame baseline", "psp_tiny", {}),
    ("stt_all", "STT, all keys (vanilla)", "stt_psp_tiny", {"key_selection": "all"}),
    ("stt_res", "STT residual (sparse)", "stt_psp_tiny", {"residual": True}),
    ("stt_res_all", "STT residual, all keys", "stt_psp_tiny", {"residual": True, "key_selection": "all"}),
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
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="several seeds: mean and spread per variant")
    p.add_argument("--variants", nargs="+", default=["stt", "base", "stt_all"],
                   choices=[v[0] for v in VARIANTS])
    args = p.parse_args()
    seeds = args.seeds or [args.seed]
    rows = []
    results_path = os.path.join(args.out, "results.json")
    if os.path.exists(results_path):  # a re-run skips what is already measured
        rows = json.load(open(results_path))
    for seed in seeds:
        for key, name, preset, overrides in [v for v in VARIANTS if v[0] in args.variants]:
            if any(r["key"] == key and r["seed"] == seed and r["steps"] == args.steps for r in rows):
                continue
            rows.append(run_variant(args, seed, key, name, preset, overrides))
            os.makedirs(args.out, exist_ok=True)
            with open(results_path, "w") as f:
                json.dump(rows, f, indent=2)
    print(f"\nsynthetic video, {args.steps} steps x batch {args.batch_size}, crop {args.crop}, "
          f"eval on {args.eval_sequences} held-out sequences of 30 frames at {args.size}, seeds {seeds}\n")
    print("| model | mIoU | TC (DIS) | TC masked | frames/s | train min | mIoU per seed |")
    print("|---|---|---|---|---|---|---|")
    for key, name, _, _ in VARIANTS:
        mine = [r for r in rows if r["key"] == key and r["seed"] in seeds and r["steps"] == args.steps]
        if not mine:
            continue
        mean = lambda field: sum(r[field] for r in mine) / len(mine)  # noqa: E731
        per_seed = " / ".join(f"{100 * r['miou']:.1f}" for r in sorted(mine, key=lambda r: r["seed"]))
        print(f"| {name} | {100 * mean('miou'):.1f} | {100 * mean('tc'):.1f} | {100 * mean('tc_occlusion_masked'):.1f} "
              f"| {mean('frames_per_second'):.1f} | {mean('train_seconds') / 60:.1f} | {per_seed} |")


def run_variant(args, seed, key, name, preset, overrides):
    out = os.path.join(args.out, f"seed{seed}", key)
    argv = ["--preset", preset, "--out", out, "--steps", str(args.steps), "--checkpoint-every", str(max(1, args.steps // 4)),
            "--batch-size", str(args.batch_size), "--synthetic-size", args.size, "--crop", args.crop,
            "--synthetic-sequences", str(args.sequences), "--seed", str(seed), "--val-batches", "4", "--verbose", "2"]
    train_args = train_lib.build_parser().parse_args(argv)
    train_args.stt_overrides = dict(overrides)
    start = time.perf_counter()
    train_lib.train(train_args)
    train_seconds = time.perf_counter() - start
    model = load_model(os.path.join(out, "last.keras"), compile=False)
    size = tuple(int(v) for v in args.size.split("x"))
    results = evaluate(model, synthetic_sequences(args.eval_sequences, size=size), model.num_classes)
    results.update(key=key, name=name, preset=preset, overrides=overrides, seed=seed, steps=args.steps,
                   train_seconds=train_seconds)
    return results

if __name__ == "__main__":
    main()
