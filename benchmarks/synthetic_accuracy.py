"""Does temporal context help? STT variants vs the per-frame baseline on the synthetic scene families.

Trains each variant with the same budget, data and seed, evaluates it by streaming held-out
sequences of each family (mIoU on all frames, on degraded frames, on degraded pixels and on clean
frames, TC with DIS flow, and the history ablation: the same STT with its past replaced by copies
of the current frame), and prints Markdown tables: per family, mean ± half-range over seeds and
the per-seed values; then the recommended recipe against the per-frame model at the same total
steps, per family and averaged, the held-out families apart.

Variants (--steps N):
- `base`: the per-frame model, N steps; `base2x`: the per-frame model, 2N steps.
- `ft_stt`: `base`, then the STT initialised from it (--init-from, the identity-at-start block)
  trained N more steps, the block at 1x lr (the recipe until the budget round, docs/performance.md).
- `ft_stt_x10` (the recipe of the budget round): `ft_stt` with the new STT block learning at 10x the
  learning rate (--stt-lr-multiplier 10; the encoder and decoder at 1x).
- `ft_dmg50_x10`: the same with --target-damage 0.5 and --stt-lr-multiplier 10 (chosen as the recipe
  on one seed of one family, withdrawn once the other seeds were in).
- `ft_stt_post`: the same with the paper's post-norm block (does not start as the identity).
- `ft_x20_lr5`, `ft_x40_lr25`: `ft_stt_x10` with the encoder and decoder at a half or a quarter of the
  learning rate in the STT stage and the block at the same 0.1 as `ft_stt_x10`'s (lr 0.005 x 20,
  0.0025 x 40): do the clean frames keep more of the per-frame model?
- `ft_x5_lr20` (D1, the recommended recipe, `stt-train --per-frame-steps`): the other direction: the
  encoder and decoder at twice the learning rate in the STT stage (0.02), the block at the same 0.1
  (5x); compared with `base2x` (--recipe names another variant to compare instead); `ft_pf_lr20`, its per-frame twin (`base`, then the
  per-frame model +N at lr 0.02): does the per-frame model gain as much from that rate?
- `ft_x2_lr40` (E1): the recipe's direction once more: the STT stage at lr 0.04, the block at the same
  0.1 (2.5x); `ft_x10_lr20` (E2): the recipe with the block at 10x (0.2).
- `ft15_x10` (D2): a larger per-frame share of the same total: `base_15` (the per-frame model, 3N/2
  steps), then the STT from it for N/2 steps with the block at 10x.
- `ft_stt_lr5`: `ft_stt` with the STT stage at lr 0.005 (about where the per-frame 2x schedule is
  at its half: 0.01 x 0.5^0.9), instead of restarting at 0.01.
- `ft_dmg25`, `ft_dmg50`, `ft_dmg50_x30`: `ft_stt` with --target-damage 0.25 / 0.5 in its STT stage
  (the labelled frame of a training clip damaged, its label kept: only the past can supply it),
  `ft_dmg50_x30` also with the block at 30x lr.
- `ft_warmA`, `ft_warm`: `base`, then the STT alone (encoder and decoder frozen) for N/2 steps, then
  everything for N/2 more starting from it (--init-from an STT model copies its block too); target
  damage 0.5 and the block at 10x lr in both stages. 300 steps in total, as `base2x`.
- `p18_base`, `p18_ft50`, `p18_ft100`: the paper-size `stt_psp18` with `ft_stt`, at its 50% NSM
  selection and with every point a query (no ImageNet weights here); `p18_rD50`, `p18_rD100`: the same
  with the current recipe's STT stage (lr 0.02, block at 5x); `p18_rB50`: with the budget round's (lr
  0.01, block at 10x).
- `ft_stt_15`: another split of the same total: `base_h` (the per-frame model, N/2 steps), then the
  STT from it for 3N/2 steps.
- `ft_gate_adamw`, `ft_gate_adamw3` (G1, G2), `ft_gate_adamw3_x30`, `ft_gate_adamw_x30` (G3, G4): `base`, then the
  STT with the gated identity-at-start block fine-tuned with AdamW (lr 1e-3 or 3e-4; the block at 10x or 30x), each
  against its per-frame twin `ft_pf_adamw` / `ft_pf_adamw3` (the same AdamW stage without the STT; --reference);
  `ft_gate_adamw_x30_dmg50` / `_dmg25` (G5, G6): G4 with --target-damage 0.5 / 0.25, against `ft_pf_adamw_dmg50` /
  `_dmg25` (the same damage for the twin).
- `stt`, `stt2x`, `stt_q50`, ...: the STT from scratch (N steps; `stt2x` 2N).

Oracle headroom (per family, from the `base2x` model): on every degraded pixel of a degraded frame,
the prediction of the last clean frame before it (`oracle_pred`), or the ground truth of the last
clean frame (`oracle_gt`); elsewhere the model's own prediction. A gain read against these is a
share of what copying the past could give.

Run: python benchmarks/synthetic_accuracy.py --families all --seeds 0 1 2
         [--steps 300] [--scale 1] [--crop 128x128] [--variants base base2x ft_x5_lr20] [--out runs/synthetic_families]
(results.json keeps every finished run, so an interrupted benchmark resumes; --table-only prints
the tables of what is there, of the --seeds given or of every seed. The recorded tables used
--seeds 0 1 on the families other than `default`, and the rounds before the budget round
--steps 150 --scale 0.5 --crop 64x64: see docs/performance.md.)
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from stt_keras_cli import load_library_module  # noqa: E402  (TensorFlow-free)

load_library_module("devices", "devices.py").cpu_only_without_cuda_driver()  # no CUDA probe without a driver
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402

from stt_keras import load_model  # noqa: E402
from stt_keras.utils.fileio import atomic_file  # noqa: E402
from stt_keras.utils.sizes import parse_size  # noqa: E402
from stt_keras.training import train as train_lib  # noqa: E402
from stt_keras.data.synthetic import FAMILIES  # noqa: E402
from stt_keras.training.evaluate import evaluate_with_ablation, synthetic_sequences  # noqa: E402
from stt_keras.metrics import MeanIoU  # noqa: E402

HELD_OUT = ("zoom_vehicles", "night")  # fixed 2026-12-03 before any run (docs/performance.md): never tuned on
RECIPE, REFERENCE = "ft_x5_lr20", "base2x"  # the recommended recipe and the per-frame model at the same total steps

# (key, table name, preset, STT overrides, steps in units of --steps).
VARIANTS = [
    ("base", "per-frame `psp_tiny`, 1x", "psp_tiny", {}, 1),
    ("base2x", "per-frame `psp_tiny`, 2x", "psp_tiny", {}, 2),
    ("ft_stt", "per-frame 1x, then STT (identity at start) +1x (no damage, block at 1x lr)", "stt_psp_tiny", {}, 1),
    ("ft_x20_lr5", "per-frame 1x, then STT (identity at start) +1x at lr 0.005, block at 20x", "stt_psp_tiny", {}, 1),
    ("ft_x40_lr25", "per-frame 1x, then STT (identity at start) +1x at lr 0.0025, block at 40x", "stt_psp_tiny", {}, 1),
    ("ft_x5_lr20", "**recipe**: per-frame 1x, then STT (identity at start) +1x at lr 0.02, block at 5x",
     "stt_psp_tiny", {}, 1),
    ("ft_x5_lr20_2x", "per-frame 1x, then STT (identity at start) +2x at lr 0.02, block at 5x (a longer STT stage)",
     "stt_psp_tiny", {}, 2),
    ("base3x", "per-frame `psp_tiny`, 3x (`ft_x5_lr20_2x`'s reference)", "psp_tiny", {}, 3),
    ("ft_x2_lr40", "per-frame 1x, then STT (identity at start) +1x at lr 0.04, block at 2.5x", "stt_psp_tiny", {}, 1),
    ("ft_x10_lr20", "per-frame 1x, then STT (identity at start) +1x at lr 0.02, block at 10x", "stt_psp_tiny", {}, 1),
    ("ft_pf_lr20", "per-frame 1x, then per-frame +1x at lr 0.02 (`ft_x5_lr20`'s twin)", "psp_tiny", {}, 1),
    ("base_15", "per-frame `psp_tiny`, 1.5x", "psp_tiny", {}, 1.5),
    ("ft15_x10", "per-frame 1.5x, then STT (identity at start, block at 10x lr) +0.5x", "stt_psp_tiny", {}, 0.5),
    ("ft_stt_post", "per-frame 1x, then STT with the paper's post-norm block +1x", "stt_psp_tiny",
     {"norm_first": False}, 1),
    ("ft_stt_lr5", "per-frame 1x, then STT (identity at start) +1x at lr 0.005", "stt_psp_tiny", {}, 1),
    ("ft_stt_x10", "per-frame 1x, then STT (identity at start, block at 10x lr) +1x", "stt_psp_tiny", {}, 1),
    ("ft_dmg25", "per-frame 1x, then STT (identity at start) +1x, target damage 0.25", "stt_psp_tiny", {}, 1),
    ("ft_dmg50", "per-frame 1x, then STT (identity at start) +1x, target damage 0.5", "stt_psp_tiny", {}, 1),
    ("ft_dmg50_x10", "per-frame 1x, then STT (identity at start, block at 10x lr) +1x, target damage 0.5",
     "stt_psp_tiny", {}, 1),
    ("ft_dmg50_x30", "per-frame 1x, then STT (identity at start, block at 30x lr) +1x, target damage 0.5",
     "stt_psp_tiny", {}, 1),
    ("ft_warmA", "per-frame 1x, then the STT alone (encoder+decoder frozen, block 10x lr, target damage 0.5) +0.5x",
     "stt_psp_tiny", {}, 0.5),
    ("ft_warm", "per-frame 1x, then the STT alone +0.5x, then all +0.5x (block 10x lr, target damage 0.5)",
     "stt_psp_tiny", {}, 0.5),
    ("base_h", "per-frame `psp_tiny`, 0.5x", "psp_tiny", {}, 0.5),
    ("ft_stt_15", "per-frame 0.5x, then STT (identity at start) +1.5x", "stt_psp_tiny", {}, 1.5),
    ("ft_gate_adamw", "per-frame 1x, then STT (gated identity block, 10x lr) +1x with AdamW lr 1e-3", "stt_psp_tiny",
     {"norm_first": True, "residual_gate": True}, 1),
    ("ft_pf_adamw", "per-frame 1x, then per-frame +1x with AdamW lr 1e-3 (`ft_gate_adamw`'s twin)", "psp_tiny", {}, 1),
    ("ft_gate_adamw3", "per-frame 1x, then STT (gated identity block, 10x lr) +1x with AdamW lr 3e-4", "stt_psp_tiny",
     {"norm_first": True, "residual_gate": True}, 1),
    ("ft_pf_adamw3", "per-frame 1x, then per-frame +1x with AdamW lr 3e-4 (`ft_gate_adamw3`'s twin)", "psp_tiny", {}, 1),
    ("ft_gate_adamw3_x30", "per-frame 1x, then STT (gated identity block, 30x lr) +1x with AdamW lr 3e-4", "stt_psp_tiny",
     {"norm_first": True, "residual_gate": True}, 1),
    ("ft_gate_adamw_x30", "per-frame 1x, then STT (gated identity block, 30x lr) +1x with AdamW lr 1e-3", "stt_psp_tiny",
     {"norm_first": True, "residual_gate": True}, 1),
    ("ft_gate_adamw_x30_dmg50", "per-frame 1x, then STT (gated identity block, 30x lr) +1x with AdamW lr 1e-3, "
     "target damage 0.5", "stt_psp_tiny", {"norm_first": True, "residual_gate": True}, 1),
    ("ft_pf_adamw_dmg50", "per-frame 1x, then per-frame +1x with AdamW lr 1e-3, target damage 0.5 "
     "(`ft_gate_adamw_x30_dmg50`'s twin)", "psp_tiny", {}, 1),
    ("ft_gate_adamw_x30_dmg25", "per-frame 1x, then STT (gated identity block, 30x lr) +1x with AdamW lr 1e-3, "
     "target damage 0.25", "stt_psp_tiny", {"norm_first": True, "residual_gate": True}, 1),
    ("ft_pf_adamw_dmg25", "per-frame 1x, then per-frame +1x with AdamW lr 1e-3, target damage 0.25 "
     "(`ft_gate_adamw_x30_dmg25`'s twin)", "psp_tiny", {}, 1),
    ("p18_base", "per-frame `psp18`, 1x", "psp18", {}, 1),
    ("p18_ft50", "per-frame `psp18` 1x, then `stt_psp18` (top 50%, identity at start) +1x", "stt_psp18", {}, 1),
    ("p18_ft100", "per-frame `psp18` 1x, then `stt_psp18` (top 100%, identity at start) +1x", "stt_psp18",
     {"top_ratio": 1.0}, 1),
    ("p18_rD50", "per-frame `psp18` 1x, then `stt_psp18` (top 50%) +1x with the recipe (lr 2x, block 5x)",
     "stt_psp18", {}, 1),
    ("p18_rB50", "per-frame `psp18` 1x, then `stt_psp18` (top 50%) +1x with the budget round's recipe (block 10x)",
     "stt_psp18", {}, 1),
    ("p18_rD100", "per-frame `psp18` 1x, then `stt_psp18` (top 100%) +1x with the recipe (lr 2x, block 5x)",
     "stt_psp18", {"top_ratio": 1.0}, 1),
    ("stt", "STT from scratch, 1x", "stt_psp_tiny", {}, 1),
    ("stt2x", "STT from scratch, 2x", "stt_psp_tiny", {}, 2),
    ("stt_q50", "STT from scratch, top 50% by NSM, 1x", "stt_psp_tiny", {"top_ratio": 0.5}, 1),
    ("stt_q75", "STT from scratch, top 75% by NSM, 1x", "stt_psp_tiny", {"top_ratio": 0.75}, 1),
    ("stt_q100", "STT from scratch, every point a query (top 100%), 1x", "stt_psp_tiny", {"top_ratio": 1.0}, 1),
    ("stt_all", "STT from scratch, top 50%, all keys, 1x", "stt_psp_tiny", {"top_ratio": 0.5, "key_selection": "all"}, 1),
    ("stt_cos", "STT from scratch, top 50%, scale-free NSM (cosine / 0.1), 1x", "stt_psp_tiny",
     {"top_ratio": 0.5, "nsm_temperature": 0.1}, 1),
    ("stt_chg", "STT from scratch, top 50%, NSM + temporal change (w=1), 1x", "stt_psp_tiny",
     {"top_ratio": 0.5, "change_weight": 1.0}, 1),
    ("stt_nf", "STT from scratch, pre-norm block, 1x", "stt_psp_tiny", {"norm_first": True}, 1),
]
VARIANT = {v[0]: v for v in VARIANTS}
TRAIN_SETTINGS = {"ft_stt_lr5": {"lr": 0.005}, "ft_stt_x10": {"stt_lr_multiplier": 10.0},
                  "ft_x20_lr5": {"lr": 0.005, "stt_lr_multiplier": 20.0},
                  "ft_x40_lr25": {"lr": 0.0025, "stt_lr_multiplier": 40.0},
                  "ft_x5_lr20": {"lr": 0.02, "stt_lr_multiplier": 5.0},
                  "ft_x5_lr20_2x": {"lr": 0.02, "stt_lr_multiplier": 5.0}, "ft15_x10": {"stt_lr_multiplier": 10.0},
                  "ft_x2_lr40": {"lr": 0.04, "stt_lr_multiplier": 2.5},
                  "ft_x10_lr20": {"lr": 0.02, "stt_lr_multiplier": 10.0},
                  "p18_rB50": {"stt_lr_multiplier": 10.0}, "p18_rD50": {"lr": 0.02, "stt_lr_multiplier": 5.0},
                  "p18_rD100": {"lr": 0.02, "stt_lr_multiplier": 5.0},
                  "ft_pf_lr20": {"lr": 0.02},
                  "ft_dmg25": {"target_damage": 0.25}, "ft_dmg50": {"target_damage": 0.5},
                  "ft_dmg50_x10": {"target_damage": 0.5, "stt_lr_multiplier": 10.0},
                  "ft_dmg50_x30": {"target_damage": 0.5, "stt_lr_multiplier": 30.0},
                  "ft_warmA": {"target_damage": 0.5, "stt_lr_multiplier": 10.0, "freeze": "encoder+decoder"},
                  "ft_warm": {"target_damage": 0.5, "stt_lr_multiplier": 10.0},
                  "ft_gate_adamw": {"optimizer": "adamw", "lr": 1e-3, "stt_lr_multiplier": 10.0},
                  "ft_pf_adamw": {"optimizer": "adamw", "lr": 1e-3},
                  "ft_gate_adamw3": {"optimizer": "adamw", "lr": 3e-4, "stt_lr_multiplier": 10.0},
                  "ft_pf_adamw3": {"optimizer": "adamw", "lr": 3e-4},
                  "ft_gate_adamw3_x30": {"optimizer": "adamw", "lr": 3e-4, "stt_lr_multiplier": 30.0},
                  "ft_gate_adamw_x30": {"optimizer": "adamw", "lr": 1e-3, "stt_lr_multiplier": 30.0},
                  "ft_gate_adamw_x30_dmg50": {"optimizer": "adamw", "lr": 1e-3, "stt_lr_multiplier": 30.0,
                                              "target_damage": 0.5},
                  "ft_pf_adamw_dmg50": {"optimizer": "adamw", "lr": 1e-3, "target_damage": 0.5},
                  "ft_gate_adamw_x30_dmg25": {"optimizer": "adamw", "lr": 1e-3, "stt_lr_multiplier": 30.0,
                                              "target_damage": 0.25},
                  "ft_pf_adamw_dmg25": {"optimizer": "adamw", "lr": 1e-3, "target_damage": 0.25}}  # training settings a variant changes


def family_size(name, scale, size=None):
    """The evaluation/training frame size of a family: --size, or its own size times --scale (multiples of 16)."""
    if size:
        return parse_size(size, "--size")
    h, w = FAMILIES[name].size
    return max(32, int(round(h * scale / 16)) * 16), max(32, int(round(w * scale / 16)) * 16)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--families", nargs="+", default=["default"],
                   help="'all' or family names (" + ", ".join(FAMILIES) + ")")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--scale", type=float, default=1.0, help="frame size = the family's own size x scale")
    p.add_argument("--size", default=None, help="HxW for every family (overrides --scale)")
    p.add_argument("--crop", default="128x128", help="training crop (at most the frame size)")
    p.add_argument("--sequences", type=int, default=24)
    p.add_argument("--eval-sequences", type=int, default=6)
    p.add_argument("--out", default="runs/synthetic_families")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="seeds to run (default 0); with --table-only, the seeds to tabulate (default: every seed recorded)")
    p.add_argument("--variants", nargs="+", default=["base", "base2x", RECIPE], choices=list(VARIANT))
    p.add_argument("--recipe", default=RECIPE, choices=list(VARIANT),
                   help="the variant the summary table compares with the per-frame model at the same total steps")
    p.add_argument("--reference", default=REFERENCE, choices=list(VARIANT),
                   help="the per-frame model the recipe is compared with (default: the per-frame model at the same "
                        "total steps; a twin such as ft_pf_adamw: the same schedule and optimizer without the STT)")
    p.add_argument("--table-only", action="store_true", help="print the tables of results.json, train nothing")
    args = p.parse_args()
    families = list(FAMILIES) if args.families == ["all"] else args.families
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        p.error(f"unknown family {unknown[0]!r}; available: all, {', '.join(FAMILIES)}")
    if args.steps < 1 or args.scale <= 0:
        p.error("--steps and --scale must be positive")
    results_path = os.path.join(args.out, "results.json")
    rows = json.load(open(results_path)) if os.path.exists(results_path) else []
    if args.table_only and args.seeds is not None:  # tabulate these seeds only (a fresh-seed check, say)
        rows = [r for r in rows if r["seed"] in args.seeds]
    for seed in [] if args.table_only else args.seeds or [0]:
        for family in families:
            for key in args.variants:
                if _find(rows, family, key, seed, args) is None:
                    rows.append(run_variant(args, family, seed, key))
                    _save(rows, args.out)
            if REFERENCE in args.variants and _find(rows, family, "oracle", seed, args) is None:
                rows.append(run_oracle(args, family, seed))
                _save(rows, args.out)
    print(tables(rows, families, args))


def _identity(r):
    return r["key"], r["seed"], r["steps"], r.get("family", "default"), tuple(r.get("size") or ())


def _save(rows, out):
    """Writes results.json, keeping the runs another process of the same --out wrote meanwhile."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "results.json")
    if os.path.exists(path):
        ours = {_identity(r) for r in rows}
        rows.extend(r for r in json.load(open(path)) if _identity(r) not in ours)
    with atomic_file(os.path.join(out, "results.json")) as tmp, open(tmp, "w") as f:
        json.dump(rows, f, indent=2)


def _find(rows, family, key, seed, args):
    size = list(family_size(family, args.scale, args.size))
    for r in rows:
        if (r["key"] == key and r["seed"] == seed and r["steps"] == args.steps and r.get("family", "default") == family
                and r.get("size", size) == size):
            return r
    return None


def _run_dir(args, family, seed, key):
    return os.path.join(args.out, family, f"seed{seed}", key)


FROM_SCRATCH = ("base", "base2x", "base3x", "base_h", "base_15", "p18_base")  # and every `stt*` variant


def first_stage(key):
    """The variant whose model `key` starts from (--init-from), None for a model trained from scratch. Every
    other variant fine-tunes, so a new one whose first stage is missing stops instead of training from scratch."""
    if key in FROM_SCRATCH or key.startswith("stt"):
        return None
    return {"ft_stt_15": "base_h", "ft_warm": "ft_warmA", "ft15_x10": "base_15"}.get(
        key, "p18_base" if key.startswith("p18_") else "base")


def run_variant(args, family, seed, key):
    _, name, preset, overrides, factor = VARIANT[key]
    out = _run_dir(args, family, seed, key)
    steps = int(round(factor * args.steps))
    size = family_size(family, args.scale, args.size)
    crop = parse_size(args.crop, "--crop")
    crop = (min(crop[0], size[0]), min(crop[1], size[1]))
    init = None
    first = first_stage(key)
    if first is not None:
        init = os.path.join(_run_dir(args, family, seed, first), "last.keras")
        if not os.path.exists(init):
            raise SystemExit(f"{key} fine-tunes the per-frame model: run the 'base' variant of {family}, seed {seed} first.")
    print(f"== {family} seed {seed} {key}: {steps} steps at {size[0]}x{size[1]}, crop {crop[0]}x{crop[1]}", flush=True)
    start = time.perf_counter()
    train_lib.train(preset, out=out, steps=steps, checkpoint_every=max(1, steps // 2), batch_size=args.batch_size,
                    synthetic_size=size, synthetic_family=family, crop=crop, synthetic_sequences=args.sequences,
                    seed=seed, val_batches=2, verbose=2, init_from=init, stt_overrides=dict(overrides),
                    **TRAIN_SETTINGS.get(key, {}))
    train_seconds = time.perf_counter() - start
    model = load_model(os.path.join(out, "last.keras"), compile=False)
    results = evaluate_with_ablation(model, lambda: _sequences(args, family), model.num_classes)
    results.update(key=key, name=name, preset=preset, overrides=overrides, seed=seed, steps=args.steps, family=family,
                   size=list(size), crop=list(crop), train_seconds=train_seconds)
    return results


def _sequences(args, family):
    return synthetic_sequences(args.eval_sequences, size=family_size(family, args.scale, args.size), family=family)


def run_oracle(args, family, seed):
    """Oracle headroom of the `base2x` model of (family, seed): see the module docstring."""
    import tensorflow as tf

    model = load_model(os.path.join(_run_dir(args, family, seed, REFERENCE), "last.keras"), compile=False)
    step = tf.function(lambda frame: model(frame, training=False))
    n = model.num_classes
    metrics = {k: MeanIoU(n) for k in ("model", "oracle_pred", "oracle_gt", "model_degraded", "oracle_pred_degraded",
                                       "oracle_gt_degraded")}
    for frames, labels, masks in _sequences(args, family):
        last_pred = last_label = None
        for t, frame in enumerate(frames):
            pred = np.asarray(step(frame[None])[0]).argmax(-1)
            label, mask = labels[t].astype(np.int64), masks[t]
            if not mask.any():
                last_pred, last_label = pred, label
                outs = {"model": pred, "oracle_pred": pred, "oracle_gt": pred}
            else:
                outs = {"model": pred,
                        "oracle_pred": pred if last_pred is None else np.where(mask, last_pred, pred),
                        "oracle_gt": pred if last_label is None else np.where(mask, last_label, pred)}
            for k, v in outs.items():
                metrics[k].update_state(label[None], v[None])
                if mask.any():
                    metrics[k + "_degraded"].update_state(label[None], v[None])
    results = {k: float(m.result()) for k, m in metrics.items()}
    results.update(key="oracle", seed=seed, steps=args.steps, family=family,
                   size=list(family_size(family, args.scale, args.size)))
    return results


def _pct(values):
    values = [100 * v for v in values if v is not None]
    if not values:
        return "n/a"
    mean = sum(values) / len(values)
    return f"{mean:.1f}" if len(values) == 1 else f"{mean:.1f} ± {(max(values) - min(values)) / 2:.1f}"


def _mean(values):
    values = [v for v in values if v is not None]
    return sum(values) / len(values) if values else None


METRICS = [("miou", "mIoU"), ("miou_degraded_frames", "degraded frames"), ("miou_degraded_pixels", "degraded pixels"),
           ("miou_clean_frames", "clean frames"), ("tc", "TC (DIS)")]


def tables(rows, families, args):
    def mine(family, key):
        out = [r for r in rows if r.get("family", "default") == family and r["key"] == key and r["steps"] == args.steps
               and r.get("size") == list(family_size(family, args.scale, args.size))]
        return sorted(out, key=lambda r: r["seed"])

    lines = [f"\nsynthetic scene families, {args.steps} steps (1x) x batch {args.batch_size}, crop {args.crop} "
             f"(at most the frame), frames = family size x {args.scale}; eval on {args.eval_sequences} held-out sequences "
             "of 30 frames per family (mean ± half the range over seeds)"]
    summary = {}
    for family in families:
        size = family_size(family, args.scale, args.size)
        held = " (HELD OUT)" if family in HELD_OUT else ""
        lines += ["", f"### `{family}`{held}: {FAMILIES[family].description}; {FAMILIES[family].num_classes} classes, "
                      f"{size[0]}x{size[1]}", "",
                  "| model | " + " | ".join(name for _, name in METRICS) + " | mIoU, history ablated | seeds | mIoU per seed |",
                  "|---|" + "---|" * (len(METRICS) + 3)]
        for key, name, *_ in VARIANTS:
            rs = mine(family, key)
            if not rs:
                continue
            ablated = [r.get("history_ablation", {}).get("miou") for r in rs]
            lines.append(f"| {name} | " + " | ".join(_pct([r.get(k) for r in rs]) for k, _ in METRICS)
                         + f" | {_pct(ablated) if any(a is not None for a in ablated) else '-'} | {len(rs)} | "
                         + " / ".join(f"{100 * r['miou']:.1f}" for r in rs) + " |")
        oracle = mine(family, "oracle")
        if oracle:
            lines.append(f"\nOracle headroom (from the per-frame 2x model; mIoU, all / degraded frames): model "
                         f"{_pct([r['model'] for r in oracle])} / {_pct([r['model_degraded'] for r in oracle])}, last clean "
                         f"prediction copied {_pct([r['oracle_pred'] for r in oracle])} / "
                         f"{_pct([r['oracle_pred_degraded'] for r in oracle])}, last clean ground truth copied "
                         f"{_pct([r['oracle_gt'] for r in oracle])} / {_pct([r['oracle_gt_degraded'] for r in oracle])}.")
        recipe, reference = {r["seed"]: r for r in mine(family, args.recipe)}, {r["seed"]: r for r in mine(family, args.reference)}
        seeds = sorted(set(recipe) & set(reference))
        if seeds:
            delta = {k: [100 * (recipe[s][k] - reference[s][k]) for s in seeds
                         if recipe[s].get(k) is not None and reference[s].get(k) is not None] for k, _ in METRICS}
            o = {r["seed"]: r for r in oracle}
            room = [100 * (o[s]["oracle_pred"] - o[s]["model"]) for s in seeds if s in o]
            room_gt = [100 * (o[s]["oracle_gt"] - o[s]["model"]) for s in seeds if s in o]
            summary[family] = dict(delta={k: _mean(v) for k, v in delta.items()}, per_seed=delta["miou"],
                                   room=_mean(room), room_gt=_mean(room_gt), seeds=seeds)
    if summary:
        lines += ["", "### The recipe against the per-frame model at the same total steps (differences, points)", "",
                  "| family | seeds | mIoU | degraded frames | degraded pixels | clean frames | TC | mIoU per seed "
                  "| oracle room: last clean prediction / ground truth |", "|---|---|---|---|---|---|---|---|---|"]

        def row(name, d, seeds, per_seed, room, room_gt):
            f = lambda v: "n/a" if v is None else f"{v:+.1f}"  # noqa: E731
            return (f"| {name} | {seeds} | " + " | ".join(f(d[k]) for k, _ in METRICS) + f" | {per_seed} | "
                    + f"{f(room)} / {f(room_gt)} |")

        for group, names in (("tuning families", [f for f in summary if f not in HELD_OUT]),
                             ("held-out families", [f for f in summary if f in HELD_OUT])):
            for fam in names:
                s = summary[fam]
                lines.append(row(f"`{fam}`" + (" (held out)" if fam in HELD_OUT else ""), s["delta"], len(s["seeds"]),
                                 " / ".join(f"{v:+.1f}" for v in s["per_seed"]), s["room"], s["room_gt"]))
            if names:
                avg = {k: _mean([summary[f]["delta"][k] for f in names]) for k, _ in METRICS}
                lines.append(row(f"**mean, {group}**", avg, "", "", _mean([summary[f]["room"] for f in names]),
                                 _mean([summary[f]["room_gt"] for f in names])))
        avg = {k: _mean([s["delta"][k] for s in summary.values()]) for k, _ in METRICS}
        lines.append(row("**mean, all families**", avg, "", "", _mean([s["room"] for s in summary.values()]),
                         _mean([s["room_gt"] for s in summary.values()])))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
