"""STT fine-tuned from a per-frame SegFormer-B0-sized model vs that model trained on (issue 21's "Measure").

On the built-in synthetic video, per seed:
- `base`: the per-frame SegFormer-B0 (`segformer_b0`: KerasHub's MiT-B0 constructor arguments,
  random weights, saved as a KerasHub preset directory and loaded through `--init-from` as a
  user's download would be; a new 7-class classifier), trained from scratch for N steps;
- `cont` (a): `base` trained N more steps (`--init-from base`) with the fine-tune's optimizer
  (`--ft-optimizer`, `--ft-lr`, `--ft-clipnorm`, `--ft-target-damage`; `base` is trained with SGD at --lr);
- `ft_stt` (b): `stt_segformer_b0` initialised from `base` (an identity-at-start block on the MiT
  stage `--stage`), N more steps with the same fine-tune settings: optionally the first `--warmup` of them with the
  encoder and decoder frozen (`--freeze encoder+decoder`: the STT alone), the rest jointly, the STT
  at `--stt-lr-multiplier` x the learning rate (`--block gate`: the identity at start by zero-initialised
  residual gates, W^O and the FFN at their usual init, the presets' block; `--block identity`: zero
  W^O and FFN output; `--block post_norm`: the paper's block instead).
(a) and (b) start from the same weights, with the same data, seed and schedule: the only
difference is the STT. Each model streams held-out sequences (`--eval-sequences` of 30 frames at
`--size`) and reports mIoU on all / degraded / clean frames, TC (DIS flow), mVC_8 (training's
`VideoConsistency`, VSPW protocol) and, for (b), the history ablation (its past replaced by copies
of the current frame). Tables: per seed and mean ± half the range over seeds; (b) - (a) per seed
against issue 21's targets (>= +1 mIoU, >= +3 on degraded frames, clean frames never below -0.3).

Run: python benchmarks/pretrained_accuracy.py --seeds 0 1 2 [--steps 200] [--size 128x256] [--crop 128x128]
         [--stage 1] [--block gate] [--warmup 0] [--stt-lr-multiplier 30] [--ft-optimizer adamw] [--ft-lr 3e-4]
         [--ft-clipnorm NORM] [--ft-target-damage P] [--key-window 1 3] [--num-heads 1] [--out runs/pretrained_accuracy]
(the defaults are the recipe docs/pretrained.md recommends; `--stage 4 --block identity
--stt-lr-multiplier 1 --ft-optimizer sgd --ft-lr 0` are the first settings measured)
(results.json keeps every finished run, keyed by every setting, so an interrupted benchmark resumes
and runs of other STT settings (or seeds) can share --out in parallel once `base` exists;
--table-only prints the tables of what is there for --seeds.)
"""

import argparse
import fcntl
import json
import os
import sys
import time

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from stt_keras_cli import load_library_module  # noqa: E402  (TensorFlow-free)

load_library_module("devices", "devices.py").cpu_only_without_cuda_driver()  # no CUDA probe without a driver
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))

from synthetic_accuracy import _pct  # noqa: E402

from stt_keras import load_model  # noqa: E402
from stt_keras.utils.fileio import atomic_file  # noqa: E402
from stt_keras.utils.sizes import parse_size  # noqa: E402
from stt_keras.training import train as train_lib  # noqa: E402
from stt_keras.training.evaluate import evaluate_with_ablation, synthetic_sequences  # noqa: E402

# MiT-B0 (SegFormer-B0) constructor arguments, as KerasHub's segformer_b0 presets build it.
B0 = dict(layerwise_depths=[2, 2, 2, 2], hidden_dims=[32, 64, 160, 256], layerwise_num_heads=[1, 2, 5, 8],
          layerwise_sr_ratios=[8, 4, 2, 1], layerwise_patch_sizes=[7, 3, 3, 3], layerwise_strides=[4, 2, 2, 2],
          num_layers=4, max_drop_path_rate=0.1)
PROJECTION_FILTERS = 256
IMAGENET_SCALE = [1 / (255 * 0.229), 1 / (255 * 0.224), 1 / (255 * 0.225)]
IMAGENET_OFFSET = [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]
MODELS = [("base", "per-frame SegFormer-B0, N steps"), ("cont", "(a) per-frame SegFormer-B0, N + N steps"),
          ("ft_stt", "(b) STT-SegFormer-B0 from the N-step model, + N steps")]
METRICS = [("miou", "mIoU"), ("miou_degraded_frames", "degraded frames"), ("miou_clean_frames", "clean frames"),
           ("tc", "TC (DIS)"), ("mvc_8", "mVC_8")]
TARGETS = {"miou": 1.0, "miou_degraded_frames": 3.0, "miou_clean_frames": -0.3}  # (b) - (a), points, every seed


def keras_hub_b0(directory, num_classes, seed, size=(128, 128)):
    """A random-weight KerasHub SegFormer-B0 segmenter saved with save_to_preset (what a user's download gives)."""
    if os.path.isfile(os.path.join(directory, "metadata.json")):
        return directory
    import keras
    import keras_hub

    keras.utils.set_random_seed(seed)
    mit = keras_hub.models.MiTBackbone(**B0, image_shape=(*size, 3))
    backbone = keras_hub.models.SegFormerBackbone(image_encoder=mit, projection_filters=PROJECTION_FILTERS)
    converter = keras_hub.layers.SegFormerImageConverter(image_size=size, scale=IMAGENET_SCALE, offset=IMAGENET_OFFSET)
    preprocessor = keras_hub.models.SegFormerImageSegmenterPreprocessor(image_converter=converter)
    segmenter = keras_hub.models.SegFormerImageSegmenter(backbone=backbone, num_classes=num_classes,
                                                         preprocessor=preprocessor)
    tmp = directory + ".tmp"
    segmenter.save_to_preset(tmp)
    os.replace(tmp, directory)
    return directory


def settings_key(args):
    """The settings a result depends on (a changed setting is another run)."""
    return dict(steps=args.steps, size=list(args.size), crop=list(args.crop), lr=args.lr, batch_size=args.batch_size,
                sequences=args.sequences, eval_sequences=args.eval_sequences)


DEFAULT_KEY_WINDOW = (1, 3)  # the presets' (start_size, end_size): radii 3 / 2 / 1 from the farthest key frame
OLD_NUM_HEADS = 4  # the block's heads before candidate C1: a result without a num_heads key had these


def stt_key(args):
    key = dict(stage=args.stage, warmup=args.warmup, stt_lr_multiplier=args.stt_lr_multiplier)
    if tuple(args.key_window) != DEFAULT_KEY_WINDOW:
        key["key_window"] = list(args.key_window)
    if args.num_heads != OLD_NUM_HEADS:
        key["num_heads"] = args.num_heads
    return key if args.block == "identity" else dict(key, block=args.block)


def fine_tune_key(args):
    """(a)'s and (b)'s optimizer settings where they are not `base`'s (empty: the same SGD at --lr)."""
    key = {}
    if args.ft_optimizer != "sgd":
        key["optimizer"] = args.ft_optimizer
    if args.ft_lr:
        key["lr"] = args.ft_lr
    if args.ft_clipnorm is not None:
        key["clipnorm"] = args.ft_clipnorm
    if args.ft_target_damage:
        key["target_damage"] = args.ft_target_damage
    return key


def _fine_tune_settings(args):
    key = fine_tune_key(args)
    return dict(optimizer=key.get("optimizer", "sgd"), lr=key.get("lr", args.lr), clipnorm=key.get("clipnorm"),
                target_damage=key.get("target_damage", 0.0))


def run_dir(args, seed, name):
    tag = f"n{args.steps}_{args.size[0]}x{args.size[1]}_c{args.crop[0]}x{args.crop[1]}_lr{args.lr:g}"
    if name != "base" and fine_tune_key(args):
        tag += "_ft_" + "_".join(f"{k}{v:g}" if isinstance(v, float) else f"{k}{v}" for k, v in fine_tune_key(args).items())
    if name.startswith("ft_stt"):
        tag += f"_s{args.stage}_w{args.warmup}_m{args.stt_lr_multiplier:g}" + {"post_norm": "_post", "gate": "_gate"}.get(
            args.block, "")
        if tuple(args.key_window) != DEFAULT_KEY_WINDOW:
            tag += "_kw{}-{}".format(*args.key_window)
        if args.num_heads != OLD_NUM_HEADS:
            tag += f"_h{args.num_heads}"
    return os.path.join(args.out, tag, f"seed{seed}", name)


def _train(args, seed, preset, out, steps, init_from, **settings):
    print(f"== seed {seed} {os.path.basename(out)}: {preset}, {steps} steps at {args.size[0]}x{args.size[1]}, "
          f"crop {args.crop[0]}x{args.crop[1]}", flush=True)
    settings = {"lr": args.lr, **settings}
    train_lib.train(preset, out=out, steps=steps, checkpoint_every=max(1, steps // 2), batch_size=args.batch_size,
                    synthetic_size=args.size, crop=args.crop, synthetic_sequences=args.sequences, seed=seed,
                    val_batches=2, verbose=2, init_from=init_from, **settings)
    return os.path.join(out, "last.keras")


def run_model(args, seed, key):
    """Trains (or finds trained) model `key` of `seed` and evaluates it; returns its results row."""
    start = time.perf_counter()
    base = os.path.join(run_dir(args, seed, "base"), "last.keras")
    if key == "base":
        hub = keras_hub_b0(os.path.join(args.out, f"keras_hub_b0_seed{seed}"), 7, seed)
        path = _train(args, seed, "segformer_b0", run_dir(args, seed, "base"), args.steps, hub)
    elif key == "cont":
        path = _train(args, seed, "segformer_b0", run_dir(args, seed, "cont"), args.steps, base,
                      **_fine_tune_settings(args))
    else:
        overrides = {"features_stage": args.stage, "norm_first": args.block in ("identity", "gate")}
        if args.block == "gate":
            overrides["residual_gate"] = True
        if tuple(args.key_window) != DEFAULT_KEY_WINDOW:
            overrides["start_size"], overrides["end_size"] = args.key_window
        overrides["num_heads"] = args.num_heads
        init = base
        if args.warmup:
            init = _train(args, seed, "stt_segformer_b0", run_dir(args, seed, "ft_stt_warmup"), args.warmup, base,
                          freeze="encoder+decoder", stt_overrides=overrides, stt_lr_multiplier=args.stt_lr_multiplier,
                          **_fine_tune_settings(args))
        path = _train(args, seed, "stt_segformer_b0", run_dir(args, seed, "ft_stt"), args.steps - args.warmup, init,
                      stt_overrides=overrides, stt_lr_multiplier=args.stt_lr_multiplier, **_fine_tune_settings(args))
    train_seconds = time.perf_counter() - start
    model = load_model(path, compile=False)
    results = evaluate_with_ablation(
        model, lambda: synthetic_sequences(args.eval_sequences, size=tuple(args.size)), model.num_classes)
    if model.stt is not None:
        results["wo_mean_abs"] = _mean_abs_output_projection(model)
        if model.stt.residual_gate:
            results["gate_mean_abs"] = {b: float(np.abs(model.stt.gate_of(b).numpy()).mean()) for b in ("attention", "ffn")}
    results.update(key=key, seed=seed, settings=settings_key(args), train_seconds=train_seconds)
    if key != "base" and fine_tune_key(args):
        results["fine_tune"] = fine_tune_key(args)
    if key == "ft_stt":
        results["stt"] = stt_key(args)
    print(f"== seed {seed} {key}: mIoU {100 * results['miou']:.1f}, degraded {100 * results['miou_degraded_frames']:.1f}"
          f", clean {100 * results['miou_clean_frames']:.1f}"
          + (f", history ablated {100 * results['history_ablation']['miou']:.1f}" if "history_ablation" in results else "")
          + f" ({train_seconds:.0f} s)", flush=True)
    return results


def _mean_abs_output_projection(model):
    """Mean |W^O| of the STT block: how far the zero-initialised attention output has grown (the
    weights themselves: with residual gates, see gate_mean_abs)."""
    values = [np.abs(w.numpy()).mean() for w in model.stt.weights if w.path.endswith("output/kernel")]
    return float(np.mean(values)) if values else None


def load_rows(out):
    path = os.path.join(out, "results.json")
    return json.load(open(path)) if os.path.exists(path) else []


def add_row(out, row):
    """Appends a finished run to results.json under a lock (runs of other settings may share the folder)."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, ".results.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        rows = load_rows(out) + [row]
        with atomic_file(os.path.join(out, "results.json")) as tmp, open(tmp, "w") as f:
            json.dump(rows, f, indent=2)
    return rows


def find(rows, args, seed, key):
    for r in rows:
        if r["key"] == key and r["seed"] == seed and r["settings"] == settings_key(args) and (
                key != "ft_stt" or r.get("stt") == stt_key(args)) and (
                key == "base" or r.get("fine_tune", {}) == fine_tune_key(args)):
            return r
    return None


def tables(rows, args):
    def mine(key):
        return sorted([r for r in rows if r["key"] == key and r["seed"] in args.seeds and r["settings"] == settings_key(args)
                       and (key != "ft_stt" or r.get("stt") == stt_key(args))
                       and (key == "base" or r.get("fine_tune", {}) == fine_tune_key(args))], key=lambda r: r["seed"])

    lines = [f"\nSTT on a SegFormer-B0-sized model: {args.steps} + {args.steps} steps x batch {args.batch_size}, "
             f"crop {args.crop[0]}x{args.crop[1]}, lr {args.lr:g}, eval {args.eval_sequences} held-out sequences of 30 "
             f"frames at {args.size[0]}x{args.size[1]}; STT on MiT stage {args.stage}, key windows "
             f"{args.key_window[0]}-{args.key_window[1]}, {args.num_heads} head(s), warm-up {args.warmup} steps "
             f"(STT alone), STT at {args.stt_lr_multiplier:g}x lr, {args.block} block; (a) and (b) with "
             f"{_fine_tune_settings(args)} (mean ± half the range over seeds)", "",
             "| model | " + " | ".join(n for _, n in METRICS) + " | mIoU, history ablated | mIoU per seed |",
             "|---|" + "---|" * (len(METRICS) + 2)]
    for key, name in MODELS:
        rs = mine(key)
        if rs:
            ablated = [r.get("history_ablation", {}).get("miou") for r in rs]
            lines.append(f"| {name} | " + " | ".join(_pct([r.get(k) for r in rs]) for k, _ in METRICS)
                         + f" | {_pct(ablated) if any(a is not None for a in ablated) else '-'} | "
                         + " / ".join(f"{100 * r['miou']:.1f}" for r in rs) + " |")
    a, b = {r["seed"]: r for r in mine("cont")}, {r["seed"]: r for r in mine("ft_stt")}
    seeds = sorted(set(a) & set(b))
    if seeds:
        lines += ["", "(b) - (a), points (targets: mIoU >= +1, degraded frames >= +3, clean frames >= -0.3, every seed)",
                  "", "| seed | " + " | ".join(n for _, n in METRICS) + " | history ablation costs (b) | targets |",
                  "|---|" + "---|" * (len(METRICS) + 2)]
        for s in seeds:
            d = {k: 100 * (b[s][k] - a[s][k]) if b[s].get(k) is not None and a[s].get(k) is not None else None
                 for k, _ in METRICS}
            met = all(d[k] is not None and d[k] >= t for k, t in TARGETS.items())
            cost = 100 * (b[s]["miou"] - b[s]["history_ablation"]["miou"])
            lines.append(f"| {s} | " + " | ".join("n/a" if d[k] is None else f"{d[k]:+.1f}" for k, _ in METRICS)
                         + f" | {cost:.1f} | {'met' if met else 'missed'} |")
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--steps", type=int, default=200, help="N: the per-frame model's steps, and (a)'s and (b)'s more")
    p.add_argument("--size", default="128x256", help="frame size HxW (training frames and evaluation)")
    p.add_argument("--crop", default="128x128", help="training crop (at most the frame size)")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--sequences", type=int, default=24, help="synthetic training sequences")
    p.add_argument("--eval-sequences", type=int, default=6)
    p.add_argument("--stage", type=int, default=1, choices=[1, 2, 3, 4], help="the MiT stage the STT mixes")
    p.add_argument("--warmup", type=int, default=0, help="of (b)'s N steps, the first ones train the STT alone")
    p.add_argument("--stt-lr-multiplier", type=float, default=30.0)
    p.add_argument("--ft-optimizer", default="adamw", choices=["sgd", "adamw"],
                   help="(a)'s and (b)'s optimizer (stt-train --optimizer; `base` is always trained with SGD at --lr)")
    p.add_argument("--ft-lr", type=float, default=3e-4, help="(a)'s and (b)'s learning rate (0: --lr)")
    p.add_argument("--ft-clipnorm", type=float, default=None, help="(a)'s and (b)'s stt-train --clipnorm")
    p.add_argument("--ft-target-damage", type=float, default=0.0,
                   help="(a)'s and (b)'s stt-train --target-damage (the same augmentation for both)")
    p.add_argument("--block", default="gate", choices=["identity", "gate", "post_norm"],
                   help="(b)'s STT block: identity at start (norm-first, zero W^O and FFN output; stt-train's "
                        "default with --init-from), identity at start by zero-initialised residual gates "
                        "(norm-first, residual_gate=True), or the paper's post-norm block")
    p.add_argument("--key-window", type=int, nargs=2, default=list(DEFAULT_KEY_WINDOW), metavar=("START", "END"),
                   help="(b)'s key windows: start and end half-sizes (docs/method.md, the nearest key frame gets START, "
                        "each farther one 1 more, up to END)")
    p.add_argument("--num-heads", type=int, default=1,
                   help="(b)'s attention heads: 1, the preset's on stage 1 (one head of 8 channels); 4 (heads of 2 "
                        "channels) was the block of the runs before candidate C1, whose results carry no num_heads key")
    p.add_argument("--models", nargs="+", default=[k for k, _ in MODELS], choices=[k for k, _ in MODELS])
    p.add_argument("--out", default="runs/pretrained_accuracy")
    p.add_argument("--table-only", action="store_true", help="print the tables of results.json, train nothing")
    args = p.parse_args()
    try:
        args.size, args.crop = parse_size(args.size, "--size"), parse_size(args.crop, "--crop")
    except ValueError as error:
        p.error(str(error))
    args.crop = (min(args.crop[0], args.size[0]), min(args.crop[1], args.size[1]))
    if args.steps < 1 or args.lr <= 0 or args.stt_lr_multiplier <= 0 or args.batch_size < 1:
        p.error("--steps, --lr, --stt-lr-multiplier and --batch-size must be positive")
    if args.num_heads < 1:
        p.error(f"--num-heads must be positive, got {args.num_heads}")
    if not 1 <= args.key_window[0] <= args.key_window[1]:
        p.error(f"--key-window needs 1 <= START <= END, got {args.key_window[0]} {args.key_window[1]}")
    if not 0 <= args.warmup < args.steps:
        p.error(f"--warmup must be in [0, --steps), got {args.warmup}")
    for seed in [] if args.table_only else args.seeds:
        for key in args.models:
            if find(load_rows(args.out), args, seed, key) is None:
                if key != "base" and not os.path.exists(os.path.join(run_dir(args, seed, "base"), "last.keras")):
                    p.error(f"{key} starts from the per-frame model: run --models base for seed {seed} first")
                add_row(args.out, run_model(args, seed, key))
    print(tables(load_rows(args.out), args))


if __name__ == "__main__":
    main()
