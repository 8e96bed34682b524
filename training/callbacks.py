"""Crash-safe run state: every file is written to a temporary name, fsynced and renamed into place.

One callback, `RunCheckpoint`, owns everything a run leaves in its folder at the end
of each chunk (Keras epoch), in this order:

    last.keras                 the model (with optimizer state)
    best.keras                 when the monitored score beats the best so far
    history.csv                one row per chunk (CSVLogger's format)
    backup/chunk-NNNNNN.weights.h5   weights + optimizer state of this chunk
    backup/checkpoint.json     THE COMMIT: chunk count, optimizer steps, best score,
                               the weights file's name and SHA-256, history rows

A kill anywhere before the commit leaves the previous checkpoint.json pointing at
the previous (complete, untouched) weights file; the resumed run repeats the
chunk, truncates history.csv to the committed rows and keeps the committed best
score, so it ends at exactly the planned steps with one history row per chunk.
A kill after the commit loses nothing. Files are never rewritten in place.
"""

import csv
import glob
import json
import os
import re

import keras
import numpy as np

from stt_keras import faults
from stt_keras.fileio import fsync_dir as _fsync_dir
from stt_keras.fileio import sha256_file  # noqa: F401  (part of this module's interface)

CHECKPOINT = "checkpoint.json"
_TMP = re.compile(r"^\..+\.tmp-\d+(\.keras|\.weights\.h5)?$")


def _tmp_name(path):
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.tmp-{os.getpid()}")


def _commit(tmp, path):
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(os.path.dirname(os.path.abspath(path)))


def atomic_write_bytes(path, data):
    tmp = _tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
    _commit(tmp, path)


def atomic_write_json(path, data):
    atomic_write_bytes(path, json.dumps(data, indent=2, allow_nan=False).encode())


def atomic_save(model, path, fault=None):
    """model.save(path) through a temporary file in the same folder, fsync and an atomic rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = _tmp_name(path) + ".keras"  # Keras wants the suffix
    try:
        model.save(tmp)
        if fault:
            faults.point(fault)
        _commit(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_save_weights(model, path):
    tmp = _tmp_name(path) + ".weights.h5"
    try:
        model.save_weights(tmp)
        faults.point("during_weights")  # the temporary file is written, the final name untouched
        _commit(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def remove_stale_temporaries(folder):
    """Removes `.NAME.tmp-PID*` files (and Keras-era `tmp*.keras`) left by killed runs; the caller holds the run lock."""
    removed = []
    for sub in (folder, os.path.join(folder, "backup")):
        if not os.path.isdir(sub):
            continue
        for name in os.listdir(sub):
            if _TMP.match(name) or (name.startswith("tmp") and name.endswith(".keras")):
                os.remove(os.path.join(sub, name))
                removed.append(os.path.join(sub, name))
    return removed


def read_checkpoint(backup_dir):
    """The committed checkpoint dict, or None. Raises ValueError (naming the file) if it is damaged."""
    path = os.path.join(backup_dir, CHECKPOINT)
    if not os.path.exists(path):
        return None
    try:
        with open(path) as f:
            checkpoint = json.load(f)
        weights = os.path.join(backup_dir, checkpoint["weights"])
        int(checkpoint["epoch"]), int(checkpoint["steps"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ValueError(f"backup {path} is damaged ({error}); delete {backup_dir} to start the run again.") from None
    if not os.path.isfile(weights) or sha256_file(weights) != checkpoint["weights_sha256"]:
        raise ValueError(f"backup weights {weights} are missing or do not match {path}; "
                         f"delete {backup_dir} to start the run again.")
    return checkpoint


def truncate_history(path, rows):
    """Keeps the header and the first `rows` rows of history.csv (the committed chunks), atomically."""
    if not os.path.exists(path):
        return
    with open(path, newline="") as f:
        lines = f.read().splitlines(keepends=True)
    if len(lines) > rows + 1:
        atomic_write_bytes(path, "".join(lines[:rows + 1]).encode())


class RunCheckpoint(keras.callbacks.Callback):
    """Saves last/best models, the history row and the resumable backup of every chunk (see the module docstring).

    Args:
        folder: the run folder.
        settings: the run's settings (stored with every commit).
        monitor: score for best.keras (higher is better).
        restored: the checkpoint a resumed run starts from (its best score is kept).
    """

    def __init__(self, folder, settings, monitor="val_mean_iou", restored=None):
        super().__init__()
        self.folder = folder
        self.backup_dir = os.path.join(folder, "backup")
        self.history = os.path.join(folder, "history.csv")
        self.settings = settings
        self.monitor = monitor
        restored = restored or {}
        self.best = restored.get("best")
        self.best = -np.inf if self.best is None else float(self.best)
        self.rows = int(restored.get("history_rows", restored.get("epoch", 0)))

    def _append_history(self, epoch, logs):
        keys = sorted(logs)
        new = not os.path.exists(self.history) or os.path.getsize(self.history) == 0
        with open(self.history, "a", newline="") as f:
            writer = csv.writer(f)
            if new:
                writer.writerow(["epoch", *keys])
            writer.writerow([epoch, *[logs[k] for k in keys]])
            f.flush()
            os.fsync(f.fileno())
        self.rows += 1

    def on_epoch_end(self, epoch, logs=None):
        logs = {k: float(v) for k, v in (logs or {}).items()}
        atomic_save(self.model, os.path.join(self.folder, "last.keras"), fault="during_last")
        faults.point("after_last")
        value = logs.get(self.monitor)
        if value is not None and np.isfinite(value) and value > self.best:
            self.best = value
            atomic_save(self.model, os.path.join(self.folder, "best.keras"))
        self._append_history(epoch, logs)
        faults.point("after_history")
        os.makedirs(self.backup_dir, exist_ok=True)
        weights_name = f"chunk-{epoch + 1:06d}.weights.h5"
        weights = os.path.join(self.backup_dir, weights_name)
        atomic_save_weights(self.model, weights)
        faults.point("after_weights")
        atomic_write_json(os.path.join(self.backup_dir, CHECKPOINT), {
            "epoch": epoch + 1,
            "steps": int(self.model.optimizer.iterations.numpy()),
            "weights": weights_name,
            "weights_sha256": sha256_file(weights),
            "best": None if not np.isfinite(self.best) else self.best,
            "monitor": self.monitor,
            "history_rows": self.rows,
            "settings": self.settings,
        })
        faults.point("after_commit")
        for old in glob.glob(os.path.join(self.backup_dir, "chunk-*.weights.h5")):
            if os.path.basename(old) != weights_name:
                os.remove(old)


class StopAtStep(keras.callbacks.Callback):
    """Ends training after exactly `steps` optimizer steps (the last chunk may be shorter)."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.steps:
            self.model.stop_training = True
