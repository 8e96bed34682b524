"""Training runs: `train()` and `run(TrainConfig)`, what the stt-train command calls.

The command line (options, defaults, examples: `stt-train --help`) is parsed in
stt_keras_cli/train.py, which imports no TensorFlow, into a `TrainConfig`; `run`
trains it. A run folder's files, resuming and the one-run-per-folder lock are
described there and in docs/training.md.
"""

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import sys

import keras
import tensorflow as tf

from stt_keras.utils.errors import Interrupted, UserError, run_cli
from stt_keras.utils.fileio import concerns, disk_full, read_only, unwritable_reason, write_error_reason
from stt_keras.layers import validation
from stt_keras.models import STTSegmenter
from stt_keras.utils.sizes import SizeError, parse_frame_size
from stt_keras import data as data_lib
from stt_keras import optimizers, quantization
from stt_keras.data.readers import CAMVID_CLASSES, VSPW_CLASSES
from stt_keras.data.scan import check_training_data
from stt_keras.training.callbacks import (RunCheckpoint, StopAtStep, atomic_write_json, read_checkpoint,
                                remove_stale_temporaries, restore_rng_state, stop_signals, truncate_history)

# Settings that define the model: a run can never continue with others.
MODEL_SETTINGS = ("preset", "dataset", "synthetic_family", "num_classes", "stt_overrides", "mixed_precision", "freeze")
# Settings that define the training: changing them needs --allow-new-settings.
TRAINING_SETTINGS = ("steps", "checkpoint_every", "batch_size", "crop", "frame_stride", "lr", "momentum", "poly_power",
                     "weight_decay", "aux_weight", "seed", "data_root", "train_split", "val_split", "init_from",
                     "backbone_weights", "synthetic_sequences", "synthetic_size", "first_frames", "stt_lr_multiplier",
                     "target_damage", "optimizer", "clipnorm", "quantization_aware")
# Settings added after runs were first stored: a run.json without them was made with this value.
SETTING_DEFAULTS = {"first_frames": "pad", "freeze": None, "stt_lr_multiplier": 1.0, "target_damage": 0.0,
                    "optimizer": "sgd", "clipnorm": None, "quantization_aware": False}
SYNTHETIC_DEFAULTS = {"synthetic_family": "default", "stt_lr_multiplier": 1.0, "target_damage": 0.0,
                      "optimizer": "sgd", "clipnorm": None, "quantization_aware": False}
# The class count of each dataset (None: the caller's num_classes, required).
DATASET_CLASSES = {"synthetic": data_lib.SyntheticVideo.num_classes, "cityscapes": 19,
                   "camvid": len(CAMVID_CLASSES), "folder": None, "vspw": len(VSPW_CLASSES)}
from stt_keras_cli.train import FREEZE, OPTIMIZERS, RECIPE_STT_LR_MULTIPLIER, RECIPE_STT_STAGE_LR_FACTOR, STT_FLAGS, TrainConfig, build_parser, config_from_args  # noqa: F401,E402

_DEFAULTS = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}


def train(preset: str, num_classes: int | None = None, *, out: str, **settings) -> keras.Model | None:
    """Trains (or resumes) a model of `preset` into the run folder `out`, as stt-train does.

    Args:
        preset: a built-in preset name (`stt_keras.models.list_presets()`).
        num_classes: output classes; None takes the dataset's own (synthetic 7,
            cityscapes 19, camvid 11, vspw 124); required for dataset="folder".
        out: the run folder (checkpoints, models, history; see the module docstring).
        **settings: the other fields of `TrainConfig`, e.g. dataset="synthetic",
            steps=300, crop=(128, 128), stt_overrides={"top_ratio": 0.5}.

    Returns:
        The trained model (None when `out` holds a finished run of these settings).
        Bad settings raise `stt_keras.utils.errors.UserError` (a ValueError)
        naming the problem.
    """
    unknown = sorted(set(settings) - {f.name for f in dataclasses.fields(TrainConfig)})
    if unknown:
        raise TypeError(f"train() got unknown setting(s) {unknown}; the settings are the fields of TrainConfig: "
                        f"{', '.join(sorted(_DEFAULTS))}.")
    return run(TrainConfig(preset=preset, num_classes=num_classes, out=out, **settings))


def main(argv=None):
    """`python -m stt_keras.training.train`: the stt-train command (stt_keras_cli.train.main)."""
    from stt_keras_cli.train import main as cli_main

    cli_main(argv)


def make_optimizer(config, learning_rate):
    """The optimizer of --optimizer at `learning_rate` (a schedule), with --weight-decay and --clipnorm."""
    common = dict(weight_decay=config.weight_decay, global_clipnorm=config.clipnorm)
    if config.optimizer == "adamw":
        return optimizers.AdamW(learning_rate, **common)
    return optimizers.SGD(learning_rate, momentum=config.momentum, **common)


def run_settings(config):
    """The settings stored in run.json and every backup commit (JSON-friendly)."""
    settings = {}
    for key in MODEL_SETTINGS + TRAINING_SETTINGS:
        value = getattr(config, key)
        if key == "stt_lr_multiplier" and value is None:  # outside the recipe's STT stage: 1
            value = 1.0
        settings[key] = list(value) if isinstance(value, tuple) else value
    if settings["dataset"] != "synthetic":
        settings.pop("synthetic_sequences"), settings.pop("synthetic_size"), settings.pop("synthetic_family")
    else:  # the synthetic set starts its clips at frame T (unchanged: the measured results stay reproducible)
        settings.pop("first_frames")
    return settings


def settings_difference(before, now):
    """[(key, before, now)] of the settings that differ."""
    keys = [k for k in MODEL_SETTINGS + TRAINING_SETTINGS if k in before or k in now]
    if before.get("dataset") != "synthetic":
        before = {**SETTING_DEFAULTS, **before}
    else:
        before = {**SYNTHETIC_DEFAULTS, **before}
    before, now = _own_class_count_as_none(before), _own_class_count_as_none(now)
    return [(k, before.get(k), now.get(k)) for k in keys if before.get(k) != now.get(k)]


def dataset_classes(dataset, family="default"):
    """The class count of a dataset (of a synthetic family), None when the caller gives it."""
    if dataset == "synthetic":
        return data_lib.get_family(family).num_classes
    return DATASET_CLASSES.get(dataset)


def _own_class_count_as_none(settings):
    """num_classes=19 on cityscapes is the same run as no num_classes (likewise camvid 11, synthetic 7)."""
    fixed = dataset_classes(settings.get("dataset"), settings.get("synthetic_family") or "default")
    return {**settings, "num_classes": None} if fixed is not None and settings.get("num_classes") == fixed else settings


class RunLock:
    """An exclusive flock on OUT/.lock holding the owner's PID; the kernel drops it when the process ends."""

    def __init__(self, folder):
        self.path = os.path.join(folder, ".lock")
        self.fd = None

    def acquire(self):
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            if error.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise UserError(f"stt-train: --out {os.path.dirname(self.path)} is in use by another stt-train run "
                            f"(PID {holder}); wait for it to finish or stop it first.") from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        os.fsync(fd)
        self.fd = fd
        return self

    def release(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def make_strategy(kind, cpu_devices=0):
    if cpu_devices:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * cpu_devices)
    if kind == "mirrored":
        if cpu_devices:
            return tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(cpu_devices)])
        return tf.distribute.MirroredStrategy()
    if kind == "multiworker":  # TF_CONFIG is checked by worker_output_dir, which runs first
        return tf.distribute.MultiWorkerMirroredStrategy()
    return tf.distribute.get_strategy()


def _stdout_is_terminal():
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


def plural(count, noun):
    """'1 sequence', '3 sequences'."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def describe_samples(samples):
    """'2 sequences, 40 labelled frames' of a sample list [(frame paths, label path)]."""
    sequences = {os.path.dirname(label) for _, label in samples}
    return f"{plural(len(sequences), 'sequence')}, {plural(len(samples), 'labelled frame')}"


def frame_size_of(samples):
    """(H, W) of the first sample's label image (a label has its frame's size)."""
    import cv2

    label = cv2.imread(samples[0][1], cv2.IMREAD_UNCHANGED)
    if label is None:
        raise ValueError(f"cannot read the label image {samples[0][1]}.")
    return tuple(int(v) for v in label.shape[:2])


def worker_output_dir(out, distribute):
    """Where this process writes: `out` for the chief, `out/worker-N` for the other workers.

    Under MultiWorkerMirroredStrategy every worker runs this same command, often
    with the same --out on a shared disk. Only the chief (worker 0, or the task
    of type "chief") writes the models users take; the others keep their own
    backups (BackupAndRestore needs one per worker to resume) and logs apart,
    so no two processes ever write the same file.
    """
    if distribute != "multiworker":
        return out
    if "TF_CONFIG" not in os.environ:
        raise ValueError("--distribute multiworker needs the TF_CONFIG environment variable (cluster and task).")
    config = json.loads(os.environ["TF_CONFIG"])
    kind, index = config.get("task", {}).get("type", "worker"), int(config.get("task", {}).get("index", 0))
    has_chief = "chief" in config.get("cluster", {})
    if kind == "chief" or (kind == "worker" and index == 0 and not has_chief):
        return out
    return os.path.join(out, f"{kind}-{index}")


def make_datasets(config, num_key_frames, num_classes, start_step):
    """(train dataset, val dataset), the train one skipping the steps already done."""
    skip = start_step * config.batch_size
    if config.dataset == "synthetic":
        h, w = config.synthetic_size
        family = config.synthetic_family
        train_video = data_lib.SyntheticVideo(config.synthetic_sequences, 30, h, w, seed=config.seed, family=family)
        val_video = data_lib.SyntheticVideo(max(2, config.synthetic_sequences // 4), 30, h, w, seed=config.seed + 1000,
                                            family=family)
        train = data_lib.make_synthetic_dataset(
            train_video, num_key_frames, config.batch_size, config.crop, True, config.seed, config.frame_stride, skip=skip,
            target_damage=config.target_damage)
        val = data_lib.make_synthetic_dataset(
            val_video, num_key_frames, config.batch_size, None, False, config.seed, config.frame_stride, labelled_every=10)
        crop = config.crop or (h, w)
        print(f"stt-train: synthetic video: training on {plural(config.synthetic_sequences, 'sequence')} of 30 frames "
              f"at {h}x{w}, validating on {plural(max(2, config.synthetic_sequences // 4), 'sequence')}; "
              f"crop {crop[0]}x{crop[1]}", flush=True)
        return train, val
    if config.dataset == "cityscapes":
        lister, fmt = data_lib.cityscapes_samples, "cityscapes"
    elif config.dataset == "camvid":
        lister, fmt = data_lib.camvid_samples, "index"
    elif config.dataset == "vspw":  # a mask on every frame: a clip ends at each one
        lister, fmt = data_lib.vspw_samples, "vspw"
    else:
        lister, fmt = None, "index"
    first = {} if config.dataset == "cityscapes" else {"first_frames": config.first_frames}
    if lister is None:
        samples, val_samples = (
            data_lib.folder_samples(os.path.join(config.data_root, split), num_key_frames, config.frame_stride, **first)
            for split in (config.train_split, config.val_split))
    else:
        samples = lister(config.data_root, config.train_split, num_key_frames, config.frame_stride, **first)
        val_samples = lister(config.data_root, config.val_split, num_key_frames, config.frame_stride, **first)
    for split, listed in ((config.train_split, samples), (config.val_split, val_samples)):
        if not listed:
            raise ValueError(f"no labelled frame to train or validate on in the {split} split of {config.data_root}"
                             + (f" ({listed.skipped} skipped by --first-frames skip)" if listed.skipped else "") + ".")
    crop = config.crop or frame_size_of(samples)  # the default crop is the frame size
    print(f"stt-train: {config.dataset} data in {config.data_root}: training on {describe_samples(samples)} "
          f"({config.train_split}), validating on {describe_samples(val_samples)} ({config.val_split}); "
          f"crop {crop[0]}x{crop[1]}{'' if config.crop else ' (the frame size)'}", flush=True)
    train = data_lib.make_file_dataset(samples, num_classes, config.batch_size, crop, True, config.seed, fmt,
                                       skip=skip, target_damage=config.target_damage)
    val = data_lib.make_file_dataset(val_samples, num_classes, config.batch_size, crop, False, config.seed, fmt)
    return train, val


def init_from(model, path):
    """Copies encoder and decoder weights from another saved model (the paper fine-tunes an image model).

    From an STT model whose block has the same form (norm_first, residual_gate) and weight shapes, the block's
    weights are copied too (a run that continues another stage); otherwise the block starts fresh.
    """
    from stt_keras import load_model

    source = load_model(path, compile=False)
    parts = ["encoder", "decoder"]
    ours_stt, theirs_stt = getattr(model, "stt", None), getattr(source, "stt", None)
    if (ours_stt is not None and theirs_stt is not None and ours_stt.norm_first == theirs_stt.norm_first
            and ours_stt.residual_gate == theirs_stt.residual_gate
            and [w.shape for w in ours_stt.weights] == [w.shape for w in theirs_stt.weights]):
        parts.append("stt")
    for part in parts:
        ours, theirs = getattr(model, part), getattr(source, part)
        if [w.shape for w in ours.weights] != [w.shape for w in theirs.weights]:
            raise ValueError(f"--init-from {path}: its {part} does not match {model.name}'s.")
        ours.set_weights(theirs.get_weights())
    print(f"stt-train: encoder, decoder{' and STT block' if 'stt' in parts else ''} initialised from {path}")


def _image_segmenter_start(config):
    """{"image_segmenter_weights": ...} for the presets that start from a KerasHub segmenter, else {}.

    --init-from a KerasHub preset (name or directory) replaces the one the preset names; a
    .keras file or stt-keras preset directory builds the architecture without downloading
    (its weights are copied in after); no --init-from loads the preset's own KerasHub preset.
    """
    from stt_keras.models.stt.stt_presets import PRESETS
    from stt_keras.saving import PRESET_FORMAT

    if PRESETS[config.preset].get("arch") != "image_segmenter":
        return {}
    if not config.init_from:
        return {"image_segmenter_weights": "preset"}
    metadata = os.path.join(config.init_from, "metadata.json")
    if os.path.isfile(config.init_from):
        return {"image_segmenter_weights": None}  # the architecture only; init_from() copies the weights
    if os.path.isdir(config.init_from) and os.path.isfile(metadata):
        try:
            with open(metadata) as f:
                if json.load(f).get("format") == PRESET_FORMAT:  # an stt-keras preset directory
                    return {"image_segmenter_weights": None}
        except (OSError, ValueError):
            pass
    return {"image_segmenter_weights": config.init_from}


def check_config(config):
    """The config with its sizes as (H, W) and its class count resolved; UserError naming the first bad setting."""
    if not isinstance(config, TrainConfig):
        raise TypeError(f"run() takes a TrainConfig, got {type(config).__name__}.")
    for name in ("steps", "checkpoint_every", "batch_size", "frame_stride", "synthetic_sequences"):
        if getattr(config, name) < 1:
            raise UserError(f"stt-train: --{name.replace('_', '-')} must be positive, got {getattr(config, name)}.")
    if config.val_batches is not None and config.val_batches < 1:
        raise UserError(f"stt-train: --val-batches must be positive, got {config.val_batches}.")
    if config.num_classes is not None and config.num_classes < 2:
        raise UserError(f"stt-train: --num-classes must be at least 2, got {config.num_classes}.")
    if config.dataset not in DATASET_CLASSES:
        raise UserError(f"stt-train: unknown --dataset {config.dataset!r}; available: {', '.join(DATASET_CLASSES)}.")
    if config.synthetic_family not in data_lib.FAMILIES:
        raise UserError(f"stt-train: unknown --synthetic-family {config.synthetic_family!r}; available: "
                        f"{', '.join(data_lib.FAMILIES)}.")
    fixed = dataset_classes(config.dataset, config.synthetic_family)
    if config.dataset == "folder" and config.num_classes is None:
        raise UserError("stt-train: --dataset folder needs --num-classes (the number of label classes, at least 2).")
    if fixed is not None and config.num_classes not in (None, fixed):
        raise UserError(f"stt-train: --dataset {config.dataset} has {fixed} classes, not --num-classes "
                        f"{config.num_classes} (leave it out).")
    if config.dataset != "synthetic" and not config.data_root:
        raise UserError(f"stt-train: --data-root is required for --dataset {config.dataset}.")
    if config.lr <= 0:
        raise UserError(f"stt-train: --lr must be positive, got {config.lr}.")
    if not isinstance(config.stt_overrides, dict):
        raise UserError(f"stt-train: stt_overrides must be a dict of from_preset arguments, got {config.stt_overrides!r}.")
    if config.stt_overrides.get("top_ratio") is not None:
        try:
            validation.check_top_ratio(config.stt_overrides["top_ratio"], name="--top-ratio")
        except ValueError as error:
            raise UserError(f"stt-train: {error}") from None
    from stt_keras.models.stt.stt_presets import PRESETS

    if config.preset not in PRESETS:
        raise UserError(f"stt-train: unknown --preset {config.preset!r}; available: {', '.join(sorted(PRESETS))}.")
    if config.optimizer not in OPTIMIZERS:
        raise UserError(f"stt-train: unknown --optimizer {config.optimizer!r}; choose {' or '.join(OPTIMIZERS)}.")
    if config.clipnorm is not None and not config.clipnorm > 0:
        raise UserError(f"stt-train: --clipnorm must be positive, got {config.clipnorm}.")
    if config.stt_lr_multiplier is not None and not config.stt_lr_multiplier > 0:
        raise UserError(f"stt-train: --stt-lr-multiplier must be positive, got {config.stt_lr_multiplier}.")
    if not 0 <= config.target_damage <= 1:
        raise UserError(f"stt-train: --target-damage must be a probability in [0, 1], got {config.target_damage}.")
    if config.per_frame_steps < 0:
        raise UserError(f"stt-train: --per-frame-steps must be 0 or positive, got {config.per_frame_steps}.")
    if config.per_frame_steps:
        if per_frame_preset(config.preset) is None:
            raise UserError(f"stt-train: --per-frame-steps needs an STT preset with a per-frame counterpart "
                            f"(stt_X and X), not {config.preset!r}.")
        if config.init_from:
            raise UserError("stt-train: --per-frame-steps trains the model --init-from would give; use one of them.")
        if config.distribute == "multiworker":
            raise UserError("stt-train: --per-frame-steps is not for --distribute multiworker; run the per-frame "
                            "model first, then the STT with --init-from.")
    hub_preset = PRESETS[config.preset].get("arch") == "image_segmenter"
    if config.init_from and not os.path.exists(config.init_from) and not (hub_preset and os.sep not in config.init_from):
        raise UserError(f"stt-train: --init-from model file not found: {config.init_from}")
    if config.freeze is not None and config.freeze not in FREEZE:
        raise UserError(f"stt-train: --freeze must be one of {', '.join(FREEZE)}, got {config.freeze!r}.")
    if config.freeze == "encoder+decoder" and PRESETS[config.preset]["stt"] is None:
        raise UserError(f"stt-train: --freeze encoder+decoder leaves nothing to train in the per-frame {config.preset}.")
    overrides = dict(config.stt_overrides)
    if config.init_from and PRESETS[config.preset].get("stt") is not None and "norm_first" not in overrides:
        overrides["norm_first"] = True  # the block starts as the identity: step 0 is the initialising model
    if config.dataset == "synthetic" and config.synthetic_size is None:
        config = dataclasses.replace(config, synthetic_size=data_lib.get_family(config.synthetic_family).size)
    sizes = {}
    for name in ("crop", "synthetic_size"):
        if getattr(config, name) is not None:
            try:
                sizes[name] = parse_frame_size(getattr(config, name), f"--{name.replace('_', '-')}")
            except SizeError as error:
                raise UserError(f"stt-train: {error}.") from None
    return dataclasses.replace(config, stt_overrides=overrides, **sizes)


def _resume_state(config, settings):
    """The committed checkpoint to resume from (or None), after checking the stored settings against these."""
    backup_dir = os.path.join(config.out, "backup")
    try:
        checkpoint = read_checkpoint(backup_dir)
    except ValueError as error:
        raise UserError(f"stt-train: {error}") from None
    stored = None
    run_json = os.path.join(config.out, "run.json")
    if os.path.isfile(run_json):
        try:
            with open(run_json) as f:
                stored = json.load(f)["settings"]
        except (OSError, ValueError, KeyError) as error:
            raise UserError(f"stt-train: {run_json} is damaged ({error}).") from None
    elif checkpoint is not None:
        stored = checkpoint.get("settings")
    elif os.path.exists(os.path.join(backup_dir, "training_metadata.json")):
        raise UserError(f"stt-train: --out {config.out} holds a run this version cannot resume (no backup/checkpoint.json); "
                        "use a new --out.")
    if stored is not None:
        differences = settings_difference(stored, settings)
        if differences:
            text = "; ".join(f"--{k.replace('_', '-')} {b!r} before, {n!r} now" for k, b, n in differences)
            model_changes = [k for k, _, _ in differences if k in MODEL_SETTINGS]
            if model_changes:
                raise UserError(f"stt-train: --out {config.out} is a run of another model or dataset ({text}); "
                                "use a new --out.")
            if not config.allow_new_settings:
                raise UserError(f"stt-train: --out {config.out} was started with other settings ({text}); "
                                "pass --allow-new-settings to continue it with these, or use a new --out.")
            print(f"stt-train: continuing {config.out} with new settings: {text}.")
    if checkpoint is not None and checkpoint["steps"] > config.steps:
        raise UserError(f"stt-train: --out {config.out} has already trained {checkpoint['steps']} steps, more than "
                        f"--steps {config.steps}.")
    return checkpoint


def interrupted_message(out, step, steps, committed, received=()):
    """The one line a stopped run prints: where it stopped, what is kept, what re-running does."""
    how = "SIGTERM" if "SIGTERM" in received else "Ctrl-C"
    if committed is None:
        return (f"stt-train: stopped by {how} at step {step} of {steps}, before the first checkpoint; re-running the "
                f"same command starts the run again.")
    return (f"stt-train: stopped by {how} at step {step} of {steps}; the last checkpoint is step {committed['steps']} "
            f"(chunk {committed['epoch']}, {os.path.join(out, 'backup')}); re-running the same command resumes from "
            f"there exactly.")


def write_failure_message(out, error):
    """The one line for a run whose files could not be written (full disk, read-only folder)."""
    what = "the disk holding" if disk_full(error) else "cannot write to"
    reason = write_error_reason(error)
    try:
        committed = read_checkpoint(os.path.join(out, "backup"), warn=lambda message: None)
    except ValueError:
        committed = None
    where = ("nothing was checkpointed yet" if committed is None else
             f"the last checkpoint, step {committed['steps']} (chunk {committed['epoch']}), is intact")
    fix = "free some space" if disk_full(error) else "make it writable"
    return (f"stt-train: {what} --out {out}{' is full' if disk_full(error) else ''} ({reason}); {where} and no "
            f"half-written file is left: {fix} and re-run the same command to "
            f"{'start' if committed is None else 'resume'}.")


def per_frame_preset(preset):
    """The per-frame counterpart of an STT preset (stt_psp_tiny -> psp_tiny), or None."""
    from stt_keras.models.stt.stt_presets import PRESETS

    if not preset.startswith("stt_") or PRESETS.get(preset, {}).get("stt") is None:
        return None
    base = preset[len("stt_"):]
    return base if base in PRESETS and PRESETS[base].get("stt") is None else None


def run(config):
    """Runs one (possibly resumed) training of a TrainConfig; returns the trained model (None if already finished)."""
    config = check_config(config)
    if config.per_frame_steps:  # the recipe: the per-frame model, then the STT initialised from it
        first = os.path.join(config.out, "per_frame")
        run(dataclasses.replace(config, preset=per_frame_preset(config.preset), out=first, steps=config.per_frame_steps,
                                per_frame_steps=0, stt_overrides={}, target_damage=0.0))  # no past to recover from
        print(f"stt-train: per-frame stage done ({first}); the STT starts from it")
        multiplier = RECIPE_STT_LR_MULTIPLIER if config.stt_lr_multiplier is None else config.stt_lr_multiplier
        # The STT stage restarts every part at a higher rate: slower encoders and decoders lost the clean frames.
        return run(dataclasses.replace(config, per_frame_steps=0, init_from=os.path.join(first, "last.keras"),
                                       lr=config.lr * RECIPE_STT_STAGE_LR_FACTOR, stt_lr_multiplier=multiplier))
    config = dataclasses.replace(config, out=worker_output_dir(config.out, config.distribute))
    if os.path.exists(config.out) and not os.path.isdir(config.out):
        raise UserError(f"stt-train: --out {config.out} exists and is not a folder.")
    unwritable = unwritable_reason(config.out)
    if unwritable:
        raise UserError(f"stt-train: cannot write to --out {config.out} ({unwritable}).")
    os.makedirs(config.out, exist_ok=True)
    lock = RunLock(config.out).acquire()
    policy = keras.mixed_precision.global_policy()
    try:
        return _train_locked(config)
    except (UserError, KeyboardInterrupt):
        raise
    except Exception as error:  # noqa: BLE001 (re-raised unless the disk is full or read-only)
        if not (disk_full(error) or (read_only(error) and concerns(error, config.out))):
            raise  # (a full disk is named whichever file hit it; "Permission denied" only for --out's own files)
        raise UserError(write_failure_message(config.out, error)) from None
    finally:
        lock.release()
        keras.mixed_precision.set_global_policy(policy)  # a Python caller's policy is theirs again


def _train_locked(config):
    out = config.out
    backup_dir = os.path.join(out, "backup")
    remove_stale_temporaries(out)  # we hold the lock: any temporary file is a killed run's
    settings = run_settings(config)
    checkpoint = _resume_state(config, settings)
    done = 0 if checkpoint is None else int(checkpoint["epoch"])
    done_steps = 0 if checkpoint is None else int(checkpoint["steps"])
    if done_steps >= config.steps:
        print(f"stt-train: {out} is already finished ({done_steps} of {config.steps} steps); nothing to do.")
        return None
    if config.dataset != "synthetic" and not config.skip_scan:  # every file the run reads, before any model
        check_training_data(config, config.num_classes or dataset_classes(config.dataset))
    epochs = done + -(-(config.steps - done_steps) // config.checkpoint_every)
    if checkpoint is not None:
        truncate_history(os.path.join(out, "history.csv"), int(checkpoint.get("history_rows", done)))
        print(f"stt-train: resuming {out} after {done} chunks ({done_steps} of {config.steps} steps).")
    else:
        truncate_history(os.path.join(out, "history.csv"), 0)
    if config.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(config.seed)

    strategy = make_strategy(config.distribute, config.cpu_devices)
    if config.distribute == "none":
        print(f"stt-train: training on one device, writing to {out}")
    else:
        name = "MultiWorkerMirroredStrategy" if config.distribute == "multiworker" else type(strategy).__name__
        print(f"stt-train: {name} with {strategy.num_replicas_in_sync} replica(s), writing to {out}")
    num_classes = config.num_classes or dataset_classes(config.dataset, config.synthetic_family)
    start_from = _image_segmenter_start(config)
    with strategy.scope():
        try:
            model = STTSegmenter.from_preset(config.preset, num_classes=num_classes,
                                             backbone_weights=config.backbone_weights, aux_weight=config.aux_weight,
                                             **start_from, **config.stt_overrides)
        except ValueError as error:  # an override the preset does not take, or a KerasHub preset it cannot load
            raise UserError(f"stt-train: {error}") from None
        for part in FREEZE.get(config.freeze, ()):
            getattr(model, part).trainable = False
    num_key_frames = model.num_key_frames
    try:
        train, val = make_datasets(config, num_key_frames, num_classes, done_steps)
    except (FileNotFoundError, ValueError) as error:  # the dataset listing names the file or folder
        raise UserError(f"stt-train: {error}") from None
    if config.val_batches:
        val = val.take(config.val_batches)
    # Stored once the model and data are known to be buildable: a start that fails leaves no settings behind.
    atomic_write_json(os.path.join(out, "run.json"), {"format": "stt-keras-run/1", "settings": settings})
    atomic_write_json(os.path.join(out, "config.json"), json.loads(json.dumps(dataclasses.asdict(config), default=str)))

    with strategy.scope():
        schedule = keras.optimizers.schedules.PolynomialDecay(config.lr, config.steps, 0.0, power=config.poly_power)
        optimizer = make_optimizer(config, schedule)
        model.compile(optimizer=optimizer, jit_compile=config.xla)  # the model's own loss and MeanIoU metric
        model.build()  # restoring needs the variables
        if model.stt is not None:  # a new block in a trained model learns faster (--stt-lr-multiplier); after
            # build(): a preset's block makes its variables there, and an empty list would scale nothing
            optimizer.scale_learning_rate(model.stt.trainable_variables, settings["stt_lr_multiplier"])
        if checkpoint is not None:
            model.optimizer.build(model.trainable_variables)
            model.load_weights(os.path.join(backup_dir, checkpoint["weights"]))
            if int(model.optimizer.iterations.numpy()) != done_steps:
                raise UserError(f"stt-train: backup {backup_dir} holds {int(model.optimizer.iterations.numpy())} steps "
                                f"but its checkpoint.json says {done_steps}; delete it to start again.")
            if checkpoint.get("rng") is not None:  # dropout masks continue where they stopped
                try:
                    restore_rng_state(model, checkpoint["rng"])
                except ValueError as error:
                    raise UserError(f"stt-train: backup {backup_dir}: {error}") from None
        elif config.init_from and not start_from.get("image_segmenter_weights"):
            try:
                init_from(model, config.init_from)
            except ValueError as error:
                raise UserError(f"stt-train: {error}") from None

    checkpointer = RunCheckpoint(out, settings, restored=checkpoint)
    callbacks = [
        StopAtStep(config.steps),
        checkpointer,
        keras.callbacks.TensorBoard(os.path.join(out, "logs")),
    ]
    verbose = config.verbose if config.verbose is not None else (1 if _stdout_is_terminal() else 2)
    # Traced inside, the train and validation steps keep the int8 rounding; the saved models are plain float ones.
    rounding = quantization.fake_quantized(model) if config.quantization_aware else contextlib.nullcontext()
    try:
        with stop_signals() as received, rounding:
            model.fit(  # shuffle=False: the pipeline shuffles itself (seeded); Keras would warn and ignore True
                train, epochs=epochs, initial_epoch=done, steps_per_epoch=config.checkpoint_every, validation_data=val,
                callbacks=callbacks, verbose=verbose, shuffle=False,
            )
    except KeyboardInterrupt:
        raise Interrupted(interrupted_message(out, int(model.optimizer.iterations.numpy()), config.steps,
                                              checkpointer.committed, received),
                          143 if "SIGTERM" in received else 130) from None
    print(f"stt-train: done, {int(model.optimizer.iterations.numpy())} steps; models in {out}")
    return model


if __name__ == "__main__":
    main()
