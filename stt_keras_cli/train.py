r"""stt-train: train an STT model (or its per-frame baseline) with model.fit.

Example (the built-in synthetic video, a few minutes on 2 CPU cores):
    stt-train --preset stt_psp_tiny --dataset synthetic --steps 600 --out runs/synthetic_stt

Cityscapes (paper lineage: SGD, momentum 0.9, poly decay, 80k iterations):
    stt-train --preset stt_psp18 --dataset cityscapes --data-root /data/cityscapes \
        --crop 512x1024 --batch-size 8 --steps 80000 --lr 0.01 --backbone-weights imagenet

A run writes into --out: logs/ (TensorBoard), backup/ (killed runs resume from
the last finished chunk of --checkpoint-every steps, with the optimizer state,
the data order and the best score so far, and end at exactly --steps), last.keras,
best.keras (by validation mIoU), history.csv, config.json and run.json (the
settings the run was started with). Every file is written to a temporary name
and renamed into place (training/callbacks.py).

On a real dataset, every frame and label the run will read is scanned first
(decodable, label format and values, sizes; cached): all problems are listed
with their paths before any model is built. --skip-scan turns it off.

Re-running a command on its --out resumes it (or, when it is finished, says so
and changes nothing). Other settings on an existing --out are refused with the
list of what differs; --allow-new-settings continues the run with new training
settings (steps, learning rate, ...) but never with another model or dataset.
One run at a time per --out: a second one is refused, naming the PID that holds
the lock (released by the kernel when that process ends, however it ends).

From Python, `train(preset, num_classes, out=..., **settings)` does the same
(settings: the fields of `TrainConfig`); this command parses its arguments
into a `TrainConfig` and calls `run(config)`, as `train` does.
"""

import argparse
import dataclasses

from stt_keras_cli import HelpFormatter, add_tf_logs_flag, frame_size, preset_names, run_command

# The datasets stt-train reads (stt_keras.training.train.DATASET_CLASSES holds their class counts).
# --freeze: the parts of the model that keep their (initial) weights.
FREEZE = {"encoder": ("encoder",), "encoder+decoder": ("encoder", "decoder")}
# The recipe's STT stage (chosen on the scene families that are not held out: docs/performance.md, the
# budget round and round D): the whole model restarts at 2x the per-frame stage's --lr, and the block, new
# in a trained per-frame model, learns at 5x that (10x the per-frame stage's rate).
RECIPE_STT_STAGE_LR_FACTOR = 2.0
RECIPE_STT_LR_MULTIPLIER = 5.0
DATASETS = ("synthetic", "cityscapes", "camvid", "folder", "vspw")
# The command-line flags that override the preset's STT arguments (TrainConfig.stt_overrides).
OPTIMIZERS = ("sgd", "adamw")
STT_FLAGS = ("top_ratio", "key_selection", "norm_first", "nsm_temperature")


@dataclasses.dataclass
class TrainConfig:
    """Everything one training run is made of; `train()` and the stt-train command both build one.

    The fields are the command's options with `_` for `-` (`checkpoint_every` is
    `--checkpoint-every`), with the same defaults and meanings (`stt-train --help`),
    except `stt_overrides`: the arguments of `STTSegmenter.from_preset` that change
    the preset ({"top_ratio": 0.5, "key_selection": "all", ...}); the command fills
    it from --top-ratio, --key-selection, --norm-first and --nsm-temperature.
    `crop` and `synthetic_size` are (H, W) pairs or "HxW" strings (`synthetic_size`
    None: the synthetic family's own size). With `init_from`, an STT preset gets the
    identity-at-start block (`norm_first=True`) unless `stt_overrides` sets it.
    """

    preset: str
    out: str
    num_classes: int = None  # None: the dataset's own (required for dataset="folder")
    dataset: str = "synthetic"  # synthetic, cityscapes, camvid, folder or vspw
    data_root: str = None
    train_split: str = "train"
    val_split: str = "val"
    steps: int = 600
    checkpoint_every: int = 50
    batch_size: int = 4
    crop: tuple = None  # (H, W); None: the frame size
    frame_stride: int = 1
    first_frames: str = "pad"
    lr: float = 0.01
    optimizer: str = "sgd"  # "sgd" (momentum SGD, the paper's) or "adamw" (SegFormer's fine-tune)
    clipnorm: float = None  # clip the gradients' global norm to this (None: no clipping)
    momentum: float = 0.9
    poly_power: float = 0.9
    weight_decay: float = 1e-4
    aux_weight: float = 0.4
    stt_overrides: dict = dataclasses.field(default_factory=dict)
    mixed_precision: bool = False
    xla: bool = False
    distribute: str = "none"
    cpu_devices: int = 0
    init_from: str = None
    per_frame_steps: int = 0  # > 0: the recipe; first the per-frame model for this many steps into OUT/per_frame
    stt_lr_multiplier: float = None  # the STT block learns at this x lr; None: RECIPE_STT_LR_MULTIPLIER in the
    # recipe's STT stage (per_frame_steps > 0: a new block in a trained model, at RECIPE_STT_STAGE_LR_FACTOR x lr),
    # 1 otherwise
    target_damage: float = 0.0  # probability of damaging a training clip's labelled frame (label unchanged)
    freeze: str = None  # None, "encoder" or "encoder+decoder"
    quantization_aware: bool = False  # True: train with the int8 export's rounding simulated (stt_keras.quantization)
    backbone_weights: str = None
    seed: int = 0
    synthetic_sequences: int = 24
    synthetic_size: tuple = None  # None: the family's own (default: 128x256)
    synthetic_family: str = "default"
    val_batches: int = None
    allow_new_settings: bool = False
    skip_scan: bool = False  # True: no pre-flight dataset scan (stt_keras/data/scan.py)
    verbose: int = None  # Keras fit: 0 silent, 1 progress bar, 2 one line per epoch; None: 1 on a terminal, else 2


DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def build_parser():
    p = argparse.ArgumentParser(prog="stt-train", description=__doc__, formatter_class=HelpFormatter)
    d = DEFAULTS
    p.add_argument("--preset", default="stt_psp_tiny", choices=preset_names(), metavar="PRESET",
                   help="the model recipe, one of: %(choices)s")
    p.add_argument("--dataset", choices=DATASETS, default=d["dataset"], help="the training data")
    p.add_argument("--data-root", help="dataset root (not for synthetic)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="classes of a --dataset folder (the other datasets have their own)")
    p.add_argument("--train-split", default=d["train_split"], help="split (folder) to train on")
    p.add_argument("--val-split", default=d["val_split"], help="split (folder) to validate on")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--steps", type=int, default=d["steps"], help="total optimizer steps")
    p.add_argument("--checkpoint-every", type=int, default=d["checkpoint_every"],
                   help="steps per Keras epoch (backup/validation interval)")
    p.add_argument("--batch-size", type=int, default=d["batch_size"], help="clips per step")
    p.add_argument("--crop", type=frame_size, default=None, metavar="HxW",
                   help="training crop (default: the frame size, read from the first labelled frame; "
                        "--dataset synthetic: --synthetic-size)")
    p.add_argument("--frame-stride", type=int, default=d["frame_stride"], help="frames between a clip's frames")
    p.add_argument("--first-frames", choices=["pad", "skip"], default=d["first_frames"],
                   help="labels on the first T * stride frames of a sequence (folder, camvid, vspw): pad = their history is the "
                        "first frame, as in streaming inference (default); skip = do not train on them")
    p.add_argument("--lr", type=float, default=d["lr"], help="initial learning rate (SGD, poly decay to 0)")
    p.add_argument("--optimizer", choices=list(OPTIMIZERS), default=d["optimizer"],
                   help="sgd: momentum SGD (the paper's recipe); adamw: AdamW (the usual fine-tune of a pretrained "
                        "transformer encoder such as SegFormer's MiT); both decay the learning rate polynomially")
    p.add_argument("--clipnorm", type=float, default=d["clipnorm"], metavar="NORM",
                   help="clip the gradients' global norm to NORM (off by default)")
    p.add_argument("--quantization-aware", action="store_true",
                   help="simulate the int8 export's rounding while training (fake quantization): a few hundred steps "
                        "--init-from a trained model before stt-export --quantizations int8 (docs/export.md)")
    p.add_argument("--momentum", type=float, default=d["momentum"], help="SGD momentum (--optimizer sgd)")
    p.add_argument("--poly-power", type=float, default=d["poly_power"], help="power of the poly decay")
    p.add_argument("--weight-decay", type=float, default=d["weight_decay"], help="decoupled (AdamW-style) weight decay, either optimizer")
    p.add_argument("--aux-weight", type=float, default=d["aux_weight"], help="weight of the auxiliary head's loss")
    p.add_argument("--top-ratio", type=float, default=None, help="override the preset's STT query ratio")
    p.add_argument("--key-selection", choices=["window", "all"], default=None, help="override the preset's key selection")
    p.add_argument("--norm-first", action=argparse.BooleanOptionalAction, default=None,
                   help="pre-norm STT block that starts as the identity (not the paper; the default with --init-from); "
                        "--no-norm-first: the paper's post-norm block")
    p.add_argument("--nsm-temperature", type=float, default=None,
                   help="score query complexity on cosine / tau instead of raw dot products")
    p.add_argument("--mixed-precision", action="store_true", help="mixed_float16 compute")
    p.add_argument("--xla", action="store_true", help="compile the train step with XLA")
    p.add_argument("--distribute", choices=["none", "mirrored", "multiworker"], default=d["distribute"],
                   help="mirrored: all local devices; multiworker: TF_CONFIG cluster")
    p.add_argument("--cpu-devices", type=int, default=d["cpu_devices"],
                   help="split the CPU into N logical devices (to run --distribute mirrored without GPUs)")
    p.add_argument("--init-from", default=None,
                   help="a .keras model or preset directory (e.g. the per-frame baseline) whose encoder and decoder "
                        "weights start this run; for the presets from KerasHub segmenters (stt_segformer_b0, ...) also "
                        "a KerasHub preset name or directory to start from instead of the one the preset names")
    p.add_argument("--freeze", choices=list(FREEZE), default=None,
                   help="train only the rest: encoder = STT and decoder, encoder+decoder = the STT alone")
    p.add_argument("--per-frame-steps", type=int, default=d["per_frame_steps"],
                   help="the recommended recipe: first train the STT preset's per-frame model this many steps (into "
                        "OUT/per_frame), then the STT from it (--init-from, identity-start block) for --steps at "
                        f"{RECIPE_STT_STAGE_LR_FACTOR:g} x --lr")
    p.add_argument("--stt-lr-multiplier", type=float, default=d["stt_lr_multiplier"],
                   help="the STT block's learning rate relative to --lr (either optimizer); default: "
                        f"{RECIPE_STT_LR_MULTIPLIER:g} in the STT stage of --per-frame-steps (of its "
                        f"{RECIPE_STT_STAGE_LR_FACTOR:g} x --lr), 1 otherwise")
    p.add_argument("--target-damage", type=float, default=d["target_damage"], metavar="P",
                   help="with probability P, damage a training clip's labelled frame (erase, noise, exposure or blur; "
                        "label unchanged) so that only the earlier frames can supply it; the per-frame stage of "
                        "--per-frame-steps trains without it")
    p.add_argument("--backbone-weights", default=None, help="'imagenet' or a KerasHub preset directory")
    p.add_argument("--seed", type=int, default=d["seed"], help="initial weights, data order and augmentation")
    p.add_argument("--synthetic-sequences", type=int, default=d["synthetic_sequences"],
                   help="--dataset synthetic: training sequences of 30 frames")
    p.add_argument("--synthetic-size", type=frame_size, default=None, metavar="HxW",
                   help="--dataset synthetic: frame size (default: the family's own)")
    p.add_argument("--synthetic-family", default=d["synthetic_family"], metavar="FAMILY",
                   help="--dataset synthetic: the scene family (docs/training.md; 'default' is the built-in video)")
    p.add_argument("--val-batches", type=int, default=None, help="limit validation batches (default: all)")
    p.add_argument("--allow-new-settings", action="store_true",
                   help="continue an existing --out with other training settings (never another model)")
    p.add_argument("--skip-scan", action="store_true",
                   help="do not scan the dataset first (every frame and label the run reads: decodable, sizes, label "
                        "values; cached, docs/own_data.md); a bad file then stops the run when it is drawn")
    p.add_argument("--verbose", type=int, choices=[0, 1, 2], default=None,
                   help="Keras progress: 0 none, 1 a progress bar, 2 one line per epoch "
                        "(default: 1 on a terminal, 2 when the output goes to a file or pipe)")
    add_tf_logs_flag(p)
    return p


def config_from_args(args):
    """The TrainConfig of parsed command-line arguments: the STT flags given become `stt_overrides`."""
    values = {k: v for k, v in vars(args).items() if k not in STT_FLAGS and k != "tf_logs"}
    values["stt_overrides"] = {k: getattr(args, k) for k in STT_FLAGS if getattr(args, k) is not None}
    return TrainConfig(**values)


def main(argv=None):
    """Console entry point: parses (no TensorFlow yet), then trains through `stt_keras.training.train.run`."""
    run_command("stt-train", build_parser(), argv, "stt_keras.training.train", "run", config_from_args)


if __name__ == "__main__":
    main()
