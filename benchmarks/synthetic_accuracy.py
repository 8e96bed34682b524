"""Does temporal context help? STT variants vs the per-frame baseline on the synthetic video.

Trains each variant with the same budget, data and seed (the quickstart's settings by
default: 300 steps x batch 4, crop 128x128), evaluates it on held-out synthetic
sequences (mIoU on all frames, on degraded frames and on degraded pixels, TC with DIS
flow, and the history ablation: the same STT with its past replaced by copies of the
current frame), and prints a Markdown table with means, spread and per-seed values.

Fine-tuning protocol (`ft_*` variants): the per-frame baseline is trained for
--steps, then an STT is initialised from it (--init-from) and trained for --steps
more; it is compared with `base2x`, the per-frame model trained for 2 x --steps.

Run: python benchmarks/synthetic_accuracy.py [--steps 300] [--out runs/synthetic_accuracy]
         [--seeds 0 1 2] [--variants base stt stt_all stt_q100 ...]
(1.5-4 minutes per variant and seed on 2 idle cores; results.json keeps finished runs,
so an interrupted benchmark resumes)
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from stt_keras import load_model  # noqa: E402
from stt_keras.sizes import parse_size  # noqa: E402
from stt_keras.training import train as train_lib  # noqa: E402
from stt_keras.training.evaluate import evaluate_with_ablation, synthetic_sequences  # noqa: E402

# (key, table name, preset, STT overrides). `norm_first` is not in the paper: the pre-norm block
# that starts as the identity (for fine-tuning a trained per-frame model).
VARIANTS = [
    ("base", "per-frame baseline `psp_tiny`", "psp_tiny", {}),
    ("stt", "STT `stt_psp_tiny` (preset default)", "stt_psp_tiny", {}),
    ("stt_q50", "STT, paper selection: top 50% by NSM", "stt_psp_tiny", {"top_ratio": 0.5}),
    ("stt_q75", "STT, top 75% by NSM", "stt_psp_tiny", {"top_ratio": 0.75}),
    ("stt_q100", "STT, every point a query (top 100%)", "stt_psp_tiny", {"top_ratio": 1.0}),
    ("stt_all", "STT, top 50%, all keys (vanilla keys)", "stt_psp_tiny", {"top_ratio": 0.5, "key_selection": "all"}),
    ("stt_cos", "STT, top 50%, scale-free NSM (cosine / 0.1)", "stt_psp_tiny", {"top_ratio": 0.5, "nsm_temperature": 0.1}),
    ("stt_chg", "STT, top 50%, NSM + temporal change (w=1)", "stt_psp_tiny", {"top_ratio": 0.5, "change_weight": 1.0}),
    ("stt_nf", "STT, pre-norm block (not paper)", "stt_psp_tiny", {"norm_first": True}),
    ("base2x", "per-frame baseline, 2x steps", "psp_tiny", {}),
    ("ft_stt", "STT fine-tuned from the baseline (+1x steps)", "stt_psp_tiny", {}),
    ("ft_stt_nf", "STT pre-norm fine-tuned from the baseline (+1x steps)", "stt_psp_tiny", {"norm_first": True}),
]


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--size", default="128x256")
    p.add_argument("--crop", default="128x128")
    p.add_argument("--sequences", type=int, default=24)
    p.add_argument("--eval-sequences", type=int, default=6)
    p.add_argument("--out", default="runs/synthetic_accuracy")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="several seeds: mean and spread per variant")
    p.add_argument("--variants", nargs="+", default=["base", "stt", "stt_q50", "stt_all"],
                   choices=[v[0] for v in VARIANTS])
    p.add_argument("--table-only", action="store_true", help="print the table of results.json, train nothing")
    args = p.parse_args()
    seeds = args.seeds or [args.seed]
    rows = []
    results_path = os.path.join(args.out, "results.json")
    if os.path.exists(results_path):  # a re-run skips what is already measured
        rows = json.load(open(results_path))
    for seed in [] if args.table_only else seeds:
        for key, name, preset, overrides in [v for v in VARIANTS if v[0] in args.variants]:
            if any(r["key"] == key and r["seed"] == seed and r["steps"] == args.steps for r in rows):
                continue
            rows.append(run_variant(args, seed, key, name, preset, overrides))
            os.makedirs(args.out, exist_ok=True)
            with open(results_path, "w") as f:
                json.dump(rows, f, indent=2)
    print(table([r for r in rows if r["key"] in args.variants], seeds, args))


def _mean_spread(values):
    values = [100 * v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    if len(values) == 1:
        return f"{mean:.1f}"
    return f"{mean:.1f} ± {(max(values) - min(values)) / 2:.1f}"


def table(rows, seeds, args):
    """Markdown: mean ± half-range over seeds, and the per-seed mIoU."""
    lines = [f"\nsynthetic video, {args.steps} steps x batch {args.batch_size}, crop {args.crop}, "
             f"eval on {args.eval_sequences} held-out sequences of 30 frames at {args.size}, seeds {seeds} "
             "(mean ± half the range over seeds)\n",
             "| model | mIoU | mIoU degraded frames | mIoU degraded pixels | TC (DIS) | mIoU, history ablated "
             "| train min | mIoU per seed |",
             "|---|---|---|---|---|---|---|---|"]
    for key, name, _, _ in VARIANTS:
        mine = sorted((r for r in rows if r["key"] == key and r["seed"] in seeds and r["steps"] == args.steps),
                      key=lambda r: r["seed"])
        if not mine:
            continue
        ablated = [r.get("history_ablation", {}).get("miou") for r in mine]
        per_seed = " / ".join(f"{100 * r['miou']:.1f}" for r in mine)
        lines.append(
            f"| {name} | {_mean_spread([r['miou'] for r in mine])} "
            f"| {_mean_spread([r.get('miou_degraded_frames') for r in mine])} "
            f"| {_mean_spread([r.get('miou_degraded_pixels') for r in mine])} | {_mean_spread([r['tc'] for r in mine])} "
            f"| {_mean_spread(ablated) if any(a is not None for a in ablated) else '-'} "
            f"| {sum(r['train_seconds'] for r in mine) / len(mine) / 60:.1f} | {per_seed} |")
    return "\n".join(lines)


def run_variant(args, seed, key, name, preset, overrides):
    out = os.path.join(args.out, f"seed{seed}", key)
    steps = 2 * args.steps if key == "base2x" else args.steps
    init = None
    if key.startswith("ft_"):
        init = os.path.join(args.out, f"seed{seed}", "base", "last.keras")
        if not os.path.exists(init):
            raise SystemExit(f"{key} fine-tunes the baseline: run the 'base' variant for seed {seed} first.")
    start = time.perf_counter()
    train_lib.train(preset, out=out, steps=steps, checkpoint_every=max(1, steps // 4), batch_size=args.batch_size,
                    synthetic_size=args.size, crop=args.crop,
                    synthetic_sequences=args.sequences, seed=seed, val_batches=4, verbose=2, init_from=init,
                    stt_overrides=dict(overrides))
    train_seconds = time.perf_counter() - start
    model = load_model(os.path.join(out, "last.keras"), compile=False)
    size = parse_size(args.size, "--size")
    results = evaluate_with_ablation(model, lambda: synthetic_sequences(args.eval_sequences, size=size),
                                     model.num_classes)
    results.update(key=key, name=name, preset=preset, overrides=overrides, seed=seed, steps=args.steps,
                   train_seconds=train_seconds)
    return results


if __name__ == "__main__":
    main()
