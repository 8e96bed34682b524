"""stt-train: train an STT model (or its per-frame baseline) with model.fit.

Example (the built-in synthetic video, a few minutes on 2 CPU cores):
    stt-train --preset stt_psp_tiny --dataset synthetic --steps 600 --out runs/synthetic_stt

Cityscapes (paper lineage: SGD, momentum 0.9, poly decay, 80k iterations):
    stt-train --preset stt_psp18 --dataset cityscapes --data-root /data/cityscapes \
        --crop 512x1024 --batch-size 8 --steps 80000 --lr 0.01 --backbone-weights imagenet

A run writes into --out: logs/ (TensorBoard), backup/ (keras BackupAndRestore:
killed runs resume from the last finished chunk of --checkpoint-every steps, with
the optimizer state and the data order), last.keras, best.keras (by validation
mIoU), history.csv and config.json.
"""

import argparse
import json
import os
import sys

import keras
import tensorflow as tf

from stt_keras.models import STTSegmenter
from training import data as data_lib
from training.callbacks import AtomicCheckpoint
from training.metrics import MeanIoU


def parse_size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HxW like 512x1024, got {text!r}") from None
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
    p.add_argument("--verbose", type=int, default=1)
    return p


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
    if lister is None:
        samples = data_lib.folder_samples(os.path.join(args.data_root, args.train_split), num_key_frames, args.frame_stride)
        val_samples = data_lib.folder_samples(os.path.join(args.data_root, args.val_split), num_key_frames, args.frame_stride)
        num_classes = args.num_classes
        if not num_classes:
            raise ValueError("--dataset folder needs --num-classes.")
    else:
        samples = lister(args.data_root, args.train_split, num_key_frames, args.frame_stride)
        val_samples = lister(args.data_root, args.val_split, num_key_frames, args.frame_stride)
    train = data_lib.make_file_dataset(samples, num_classes, args.batch_size, args.crop, True, args.seed, fmt, skip=skip)
    val = data_lib.make_file_dataset(val_samples, num_classes, args.batch_size, args.crop, False, args.seed, fmt)
    return train, val, num_classes


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
    """Epochs finished by an earlier, interrupted run (BackupAndRestore's metadata), else 0."""
    path = os.path.join(backup_dir, "training_metadata.json")
    if not os.path.exists(path):
        return 0
    with open(path) as f:
        return int(json.load(f)["epoch"])


def main(argv=None):
    """Console entry point."""
    train(build_parser().parse_args(argv))


def train(args):
    """Runs one (possibly resumed) training; returns the trained model."""
    overrides = dict(getattr(args, "stt_overrides", {}))
    if args.top_ratio is not None:
        overrides["top_ratio"] = args.top_ratio
    if args.key_selection is not None:
        overrides["key_selection"] = args.key_selection
    if args.norm_first is not None:
        overrides["norm_first"] = args.norm_first
    if args.nsm_temperature is not None:
        overrides["nsm_temperature"] = args.nsm_temperature
    args.stt_overrides = overrides
    if args.steps < 1 or args.checkpoint_every < 1 or args.batch_size < 1:
        raise SystemExit("stt-train: --steps, --checkpoint-every and --batch-size must be positive.")
    args.out = worker_output_dir(args.out, args.distribute)
    os.makedirs(args.out, exist_ok=True)
    backup_dir = os.path.join(args.out, "backup")
    epochs = -(-args.steps // args.checkpoint_every)
    done = completed_epochs(backup_dir)
    if done:
        print(f"stt-train: resuming {args.out} after {done} of {epochs} chunks ({done * args.checkpoint_every} steps).")
    with open(os.path.join(args.out, "config.json"), "w") as f:
        json.dump({k: v for k, v in vars(args).items()}, f, indent=2, default=str)
    if args.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(args.seed)

    strategy = make_strategy(args.distribute, args.cpu_devices)
    name = "MultiWorkerMirroredStrategy" if args.distribute == "multiworker" else type(strategy).__name__
    print(f"stt-train: {name} with {strategy.num_replicas_in_sync} replica(s), writing to {args.out}")
    probe = STTSegmenter.from_preset(args.preset, num_classes=2)
    num_key_frames = probe.num_key_frames
    del probe
    train, val, num_classes = make_datasets(args, num_key_frames, done * args.checkpoint_every)
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
        model(sample[:1] if num_key_frames else sample[:1, -1])  # BackupAndRestore needs a built model
        if args.init_from and not done:
            init_from(model, args.init_from)

    callbacks = [
        keras.callbacks.BackupAndRestore(backup_dir, save_freq="epoch", delete_checkpoint=False),
        AtomicCheckpoint(args.out),
        keras.callbacks.TensorBoard(os.path.join(args.out, "logs")),
        keras.callbacks.CSVLogger(os.path.join(args.out, "history.csv"), append=True),
    ]
    model.fit(
        train, epochs=epochs, steps_per_epoch=args.checkpoint_every, validation_data=val,
        callbacks=callbacks, verbose=args.verbose,
    )
    print(f"stt-train: done, {int(model.optimizer.iterations.numpy())} steps; models in {args.out}")
    return model


if __name__ == "__main__":
    main(sys.argv[1:])
