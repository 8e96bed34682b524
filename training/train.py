"""stt-train: train an STT model (or its per-frame baseline) with model.fit.

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

Re-running a command on its --out resumes it (or, when it is finished, says so
and changes nothing). Other settings on an existing --out are refused with the
list of what differs; --allow-new-settings continues the run with new training
settings (steps, learning rate, ...) but never with another model or dataset.
One run at a time per --out: a second one is refused, naming the PID that holds
the lock (released by the kernel when that process ends, however it ends).
"""

import argparse
import errno
import fcntl
import json
import os
import sys

import keras
import tensorflow as tf

from stt_keras.errors import UserError, run_cli
from stt_keras.models import STTSegmenter
from stt_keras.training import data as data_lib
from stt_keras.training.callbacks import (RunCheckpoint, StopAtStep, atomic_write_json, read_checkpoint,
                                remove_stale_temporaries, truncate_history)
from stt_keras.training.metrics import MeanIoU

# Settings that define the model: a run can never continue with others.
MODEL_SETTINGS = ("preset", "dataset", "num_classes", "stt_overrides", "mixed_precision")
# Settings that define the training: changing them needs --allow-new-settings.
TRAINING_SETTINGS = ("steps", "checkpoint_every", "batch_size", "crop", "frame_stride", "lr", "momentum", "poly_power",
                     "weight_decay", "aux_weight", "seed", "data_root", "train_split", "val_split", "init_from",
                     "backbone_weights", "synthetic_sequences", "synthetic_size", "first_frames")
# Settings added after runs were first stored: a run.json without them was made with this value.
SETTING_DEFAULTS = {"first_frames": "pad"}


def parse_size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW like 512x1024, got {text!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return h, w


def build_parser():
    p = argparse.ArgumentParser(prog="stt-train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="stt_psp_tiny")
    p.add_argument("--dataset", choices=["synthetic", "cityscapes", "camvid", "folder"], default="synthetic")
    p.add_argument("--data-root", help="dataset root (not for synthetic)")
    p.add_argument("--num-classes", type=int, default=None, help="classes of a --dataset folder")
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", default="val")
    p.add_argument("--out", required=True, help="run folder")
    p.add_argument("--steps", type=int, default=600, help="total optimizer steps")
    p.add_argument("--checkpoint-every", type=int, default=50, help="steps per Keras epoch (backup/validation interval)")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--crop", type=parse_size, default=None, help="training crop HxW (default: the frame size)")
    p.add_argument("--frame-stride", type=int, default=1)
    p.add_argument("--first-frames", choices=["pad", "skip"], default="pad",
                   help="labels on the first T * stride frames of a sequence (folder, camvid): pad = their history is the "
                        "first frame, as in streaming inference (default); skip = do not train on them")
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--momentum", type=float, default=0.9)
    p.add_argument("--poly-power", type=float, default=0.9)
    p.add_argument("--weight-decay", type=float, default=1e-4, help="decoupled (AdamW-style) decay of SGD")
    p.add_argument("--aux-weight", type=float, default=0.4)
    p.add_argument("--top-ratio", type=float, default=None, help="override the preset's STT query ratio")
    p.add_argument("--key-selection", choices=["window", "all"], default=None, help="override the preset's key selection")
    p.add_argument("--norm-first", action="store_true", default=None,
                   help="pre-norm STT block that starts as the identity (not the paper; for --init-from)")
    p.add_argument("--nsm-temperature", type=float, default=None,
                   help="score query complexity on cosine / tau instead of raw dot products")
    p.add_argument("--mixed-precision", action="store_true", help="mixed_float16 compute")
    p.add_argument("--xla", action="store_true", help="compile the train step with XLA")
    p.add_argument("--distribute", choices=["none", "mirrored", "multiworker"], default="none",
                   help="mirrored: all local devices; multiworker: TF_CONFIG cluster")
    p.add_argument("--cpu-devices", type=int, default=0,
                   help="split the CPU into N logical devices (to run --distribute mirrored without GPUs)")
    p.add_argument("--init-from", default=None,
                   help="a .keras model (e.g. the per-frame baseline) whose encoder and decoder weights start this run")
    p.add_argument("--backbone-weights", default=None, help="'imagenet' or a KerasHub preset directory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--synthetic-sequences", type=int, default=24)
    p.add_argument("--synthetic-size", type=parse_size, default=(128, 256))
    p.add_argument("--val-batches", type=int, default=None, help="limit validation batches")
    p.add_argument("--allow-new-settings", action="store_true",
                   help="continue an existing --out with other training settings (never another model)")
    p.add_argument("--verbose", type=int, default=1)
    return p


def stt_overrides(args):
    """The STT arguments the command line (and a caller's `args.stt_overrides`) change."""
    overrides = dict(getattr(args, "stt_overrides", None) or {})
    for key in ("top_ratio", "key_selection", "norm_first", "nsm_temperature"):
        if getattr(args, key, None) is not None:
            overrides[key] = getattr(args, key)
    return overrides


def run_settings(args):
    """The settings stored in run.json and every backup commit (JSON-friendly)."""
    settings = {}
    for key in MODEL_SETTINGS + TRAINING_SETTINGS:
        value = stt_overrides(args) if key == "stt_overrides" else getattr(args, key, None)
        settings[key] = list(value) if isinstance(value, tuple) else value
    if settings["dataset"] != "synthetic":
        settings.pop("synthetic_sequences"), settings.pop("synthetic_size")
    else:  # the synthetic set starts its clips at frame T (unchanged: the measured results stay reproducible)
        settings.pop("first_frames")
    return settings


def settings_difference(before, now):
    """[(key, before, now)] of the settings that differ."""
    keys = [k for k in MODEL_SETTINGS + TRAINING_SETTINGS if k in before or k in now]
    if before.get("dataset") != "synthetic":
        before = {**SETTING_DEFAULTS, **before}
    return [(k, before.get(k), now.get(k)) for k in keys if before.get(k) != now.get(k)]


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


def make_datasets(args, num_key_frames, start_step):
    """(train dataset, val dataset, num_classes), the train one skipping the steps already done."""
    skip = start_step * args.batch_size
    if args.dataset == "synthetic":
        h, w = args.synthetic_size
        train_video = data_lib.SyntheticVideo(args.synthetic_sequences, 30, h, w, seed=args.seed)
        val_video = data_lib.SyntheticVideo(max(2, args.synthetic_sequences // 4), 30, h, w, seed=args.seed + 1000)
        train = data_lib.make_synthetic_dataset(
            train_video, num_key_frames, args.batch_size, args.crop, True, args.seed, args.frame_stride, skip=skip)
        val = data_lib.make_synthetic_dataset(
            val_video, num_key_frames, args.batch_size, None, False, args.seed, args.frame_stride, labelled_every=10)
        return train, val, train_video.num_classes
    if not args.data_root:
        raise ValueError(f"--data-root is required for --dataset {args.dataset}.")
    if args.dataset == "cityscapes":
        lister, num_classes, fmt = data_lib.cityscapes_samples, 19, "cityscapes"
    elif args.dataset == "camvid":
        lister, num_classes, fmt = data_lib.camvid_samples, 11, "index"
    else:
        lister, num_classes, fmt = None, None, "index"
    first = {} if args.dataset == "cityscapes" else {"first_frames": args.first_frames}
    if lister is None:
        if not num_classes_ok(args.num_classes):
            raise UserError(f"stt-train: --dataset folder needs --num-classes of at least 2, got {args.num_classes}.")
        samples, val_samples = (
            data_lib.folder_samples(os.path.join(args.data_root, split), num_key_frames, args.frame_stride, **first)
            for split in (args.train_split, args.val_split))
        num_classes = args.num_classes
    else:
        samples = lister(args.data_root, args.train_split, num_key_frames, args.frame_stride, **first)
        val_samples = lister(args.data_root, args.val_split, num_key_frames, args.frame_stride, **first)
    for split, listed in ((args.train_split, samples), (args.val_split, val_samples)):
        if not listed:
            raise ValueError(f"no labelled frame to train or validate on in the {split} split of {args.data_root}"
                             + (f" ({listed.skipped} skipped by --first-frames skip)" if listed.skipped else "") + ".")
    train = data_lib.make_file_dataset(samples, num_classes, args.batch_size, args.crop, True, args.seed, fmt, skip=skip)
    val = data_lib.make_file_dataset(val_samples, num_classes, args.batch_size, args.crop, False, args.seed, fmt)
    return train, val, num_classes


def num_classes_ok(value):
    return value is not None and value >= 2


def init_from(model, path):
    """Copies encoder and decoder weights from another saved model (the paper fine-tunes an image model)."""
    from stt_keras import load_model

    source = load_model(path, compile=False)
    for part in ("encoder", "decoder"):
        ours, theirs = getattr(model, part), getattr(source, part)
        if [w.shape for w in ours.weights] != [w.shape for w in theirs.weights]:
            raise ValueError(f"--init-from {path}: its {part} does not match {model.name}'s.")
        ours.set_weights(theirs.get_weights())
    print(f"stt-train: encoder and decoder initialised from {path}")


def completed_epochs(backup_dir):
    """Chunks (Keras epochs) committed by an earlier, interrupted run, else 0."""
    checkpoint = read_checkpoint(backup_dir)
    return 0 if checkpoint is None else int(checkpoint["epoch"])


def main(argv=None):
    """Console entry point."""
    run_cli("stt-train", train, build_parser().parse_args(argv))


def _check_arguments(args):
    for name in ("steps", "checkpoint_every", "batch_size", "frame_stride", "synthetic_sequences"):
        if getattr(args, name) < 1:
            raise UserError(f"stt-train: --{name.replace('_', '-')} must be positive, got {getattr(args, name)}.")
    if args.val_batches is not None and args.val_batches < 1:
        raise UserError(f"stt-train: --val-batches must be positive, got {args.val_batches}.")
    if args.num_classes is not None and args.num_classes < 2:
        raise UserError(f"stt-train: --num-classes must be at least 2, got {args.num_classes}.")
    if args.dataset == "folder" and args.num_classes is None:
        raise UserError("stt-train: --dataset folder needs --num-classes (the number of label classes, at least 2).")
    if args.dataset != "synthetic" and not args.data_root:
        raise UserError(f"stt-train: --data-root is required for --dataset {args.dataset}.")
    if args.lr <= 0:
        raise UserError(f"stt-train: --lr must be positive, got {args.lr}.")
    if args.top_ratio is not None and not 0 < args.top_ratio <= 1:
        raise UserError(f"stt-train: --top-ratio must be in (0, 1], got {args.top_ratio}.")
    from stt_keras.models.stt.stt_presets import PRESETS

    if args.preset not in PRESETS:
        raise UserError(f"stt-train: unknown --preset {args.preset!r}; available: {', '.join(sorted(PRESETS))}.")
    if args.init_from and not os.path.isfile(args.init_from):
        raise UserError(f"stt-train: --init-from model file not found: {args.init_from}")


def _resume_state(args, settings):
    """The committed checkpoint to resume from (or None), after checking the stored settings against these."""
    backup_dir = os.path.join(args.out, "backup")
    try:
        checkpoint = read_checkpoint(backup_dir)
    except ValueError as error:
        raise UserError(f"stt-train: {error}") from None
    stored = None
    run_json = os.path.join(args.out, "run.json")
    if os.path.isfile(run_json):
        try:
            with open(run_json) as f:
                stored = json.load(f)["settings"]
        except (OSError, ValueError, KeyError) as error:
            raise UserError(f"stt-train: {run_json} is damaged ({error}).") from None
    elif checkpoint is not None:
        stored = checkpoint.get("settings")
    elif os.path.exists(os.path.join(backup_dir, "training_metadata.json")):
        raise UserError(f"stt-train: --out {args.out} holds a run this version cannot resume (no backup/checkpoint.json); "
                        "use a new --out.")
    if stored is not None:
        differences = settings_difference(stored, settings)
        if differences:
            text = "; ".join(f"--{k.replace('_', '-')} {b!r} before, {n!r} now" for k, b, n in differences)
            model_changes = [k for k, _, _ in differences if k in MODEL_SETTINGS]
            if model_changes:
                raise UserError(f"stt-train: --out {args.out} is a run of another model or dataset ({text}); "
                                "use a new --out.")
            if not args.allow_new_settings:
                raise UserError(f"stt-train: --out {args.out} was started with other settings ({text}); "
                                "pass --allow-new-settings to continue it with these, or use a new --out.")
            print(f"stt-train: continuing {args.out} with new settings: {text}.")
    if checkpoint is not None and checkpoint["steps"] > args.steps:
        raise UserError(f"stt-train: --out {args.out} has already trained {checkpoint['steps']} steps, more than "
                        f"--steps {args.steps}.")
    return checkpoint


def train(args):
    """Runs one (possibly resumed) training; returns the trained model (None if the run was already finished)."""
    args.stt_overrides = stt_overrides(args)
    for name, default in (("allow_new_settings", False), ("frame_stride", 1), ("synthetic_sequences", 24),
                          ("first_frames", "pad")):
        if not hasattr(args, name):
            setattr(args, name, default)
    _check_arguments(args)
    args.out = worker_output_dir(args.out, args.distribute)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"stt-train: --out {args.out} exists and is not a folder.")
    os.makedirs(args.out, exist_ok=True)
    lock = RunLock(args.out).acquire()
    try:
        return _train_locked(args)
    finally:
        lock.release()


def _train_locked(args):
    backup_dir = os.path.join(args.out, "backup")
    remove_stale_temporaries(args.out)  # we hold the lock: any temporary file is a killed run's
    settings = run_settings(args)
    checkpoint = _resume_state(args, settings)
    done = 0 if checkpoint is None else int(checkpoint["epoch"])
    done_steps = 0 if checkpoint is None else int(checkpoint["steps"])
    if done_steps >= args.steps:
        print(f"stt-train: {args.out} is already finished ({done_steps} of {args.steps} steps); nothing to do.")
        return None
    epochs = done + -(-(args.steps - done_steps) // args.checkpoint_every)
    if checkpoint is not None:
        truncate_history(os.path.join(args.out, "history.csv"), int(checkpoint.get("history_rows", done)))
        print(f"stt-train: resuming {args.out} after {done} chunks ({done_steps} of {args.steps} steps).")
    else:
        truncate_history(os.path.join(args.out, "history.csv"), 0)
    atomic_write_json(os.path.join(args.out, "run.json"), {"format": "stt-keras-run/1", "settings": settings})
    atomic_write_json(os.path.join(args.out, "config.json"),
                      json.loads(json.dumps({k: v for k, v in vars(args).items()}, default=str)))
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(args.seed)

    strategy = make_strategy(args.distribute, args.cpu_devices)
    name = "MultiWorkerMirroredStrategy" if args.distribute == "multiworker" else type(strategy).__name__
    print(f"stt-train: {name} with {strategy.num_replicas_in_sync} replica(s), writing to {args.out}")
    probe = STTSegmenter.from_preset(args.preset, num_classes=2)
    num_key_frames = probe.num_key_frames
    del probe
    try:
        train, val, num_classes = make_datasets(args, num_key_frames, done_steps)
    except (FileNotFoundError, ValueError) as error:  # the dataset listing names the file or folder
        raise UserError(f"stt-train: {error}") from None
    if args.val_batches:
        val = val.take(args.val_batches)

    with strategy.scope():
        model = STTSegmenter.from_preset(
            args.preset, num_classes=num_classes, backbone_weights=args.backbone_weights, aux_weight=args.aux_weight,
            **getattr(args, "stt_overrides", {}),
        )
        schedule = keras.optimizers.schedules.PolynomialDecay(args.lr, args.steps, 0.0, power=args.poly_power)
        optimizer = keras.optimizers.SGD(schedule, momentum=args.momentum, weight_decay=args.weight_decay)
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)
        model.compile(optimizer=optimizer, loss=loss, metrics=[MeanIoU(num_classes)], jit_compile=args.xla)
        sample, _ = next(iter(train))
        model(sample[:1] if num_key_frames else sample[:1, -1])  # restoring needs a built model
        if checkpoint is not None:
            model.optimizer.build(model.trainable_variables)
            model.load_weights(os.path.join(backup_dir, checkpoint["weights"]))
            if int(model.optimizer.iterations.numpy()) != done_steps:
                raise UserError(f"stt-train: backup {backup_dir} holds {int(model.optimizer.iterations.numpy())} steps "
                                f"but its checkpoint.json says {done_steps}; delete it to start again.")
        elif args.init_from:
            try:
                init_from(model, args.init_from)
            except ValueError as error:
                raise UserError(f"stt-train: {error}") from None

    callbacks = [
        StopAtStep(args.steps),
        RunCheckpoint(args.out, settings, restored=checkpoint),
        keras.callbacks.TensorBoard(os.path.join(args.out, "logs")),
    ]
    model.fit(  # shuffle=False: the pipeline shuffles itself (seeded); Keras would warn and ignore True
        train, epochs=epochs, initial_epoch=done, steps_per_epoch=args.checkpoint_every, validation_data=val,
        callbacks=callbacks, verbose=args.verbose, shuffle=False,
    )
    print(f"stt-train: done, {int(model.optimizer.iterations.numpy())} steps; models in {args.out}")
    return model


if __name__ == "__main__":
    main(sys.argv[1:])
