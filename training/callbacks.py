"""Crash-safe run state: every file is written to a temporary name, fsynced and renamed into place.

One callback, `RunCheckpoint`, owns everything a run leaves in its folder at the end
of each chunk (Keras epoch), in this order:

    last.keras                 the model (with optimizer state)
    best.keras                 when the monitored score beats the best so far
    history.csv                one row per chunk (CSVLogger's format)
    backup/chunk-NNNNNN.weights.h5   weights + optimizer state of this chunk
    backup/checkpoint-previous.json  the record of the chunk before (see below)
    backup/checkpoint.json     THE COMMIT: chunk count, optimizer steps, best score,
                               the weights file's name and SHA-256, history rows and
                               the state of the model's random generators (dropout)

A kill anywhere before the commit leaves the previous checkpoint.json pointing at
the previous (complete, untouched) weights file; the resumed run repeats the
chunk, truncates history.csv to the committed rows and keeps the committed best
score, so it ends at exactly the planned steps with one history row per chunk.
A kill after the commit loses nothing. Files are never rewritten in place.

The two newest checkpoints are kept (as checkpoint managers with max_to_keep=2
do): `checkpoint.json` and `checkpoint-previous.json`, each naming its own
weights file. When the newest is damaged (its weights truncated or changed, its
record unreadable), `read_checkpoint` warns and returns the previous one.

Resuming is exact: the weights, the optimizer state (momentum, step count), the
data position (skipped by steps) and the random generators' state are restored,
so a run stopped anywhere and re-run ends with the same losses and metrics as
one that was never stopped. A Ctrl-C (or SIGTERM) that arrives while a chunk's
files are being written is held until the commit is done (`deferred_interrupts`).
"""

import contextlib
import csv
import glob
import json
import os
import re
import signal
import sys
import threading

import keras
import numpy as np

from stt_keras.utils import faults
from stt_keras.utils.fileio import atomic_file
from stt_keras.utils.fileio import atomic_write_bytes, atomic_write_json, sha256_file  # noqa: F401  (part of this module's interface)

CHECKPOINT = "checkpoint.json"
PREVIOUS = "checkpoint-previous.json"
_TMP = re.compile(r"^\..+\.tmp-\d+(\.keras|\.weights\.h5)?$")  # atomic_file's temporary names


def atomic_save(model, path, fault=None):
    """model.save(path) through a temporary file in the same folder, fsync and an atomic rename."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_file(path, suffix=".keras") as tmp:  # Keras wants the suffix
        model.save(tmp)
        if fault:
            faults.point(fault)


def atomic_save_weights(model, path):
    with atomic_file(path, suffix=".weights.h5") as tmp:
        model.save_weights(tmp)
        faults.point("during_weights")  # the temporary file is written, the final name untouched


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


def _read_record(backup_dir, name):
    """(record, None) if backup_dir/name is a usable checkpoint; (None, what is wrong) if not; (None, None) if absent."""
    path = os.path.join(backup_dir, name)
    if not os.path.exists(path):
        return None, None
    try:
        with open(path) as f:
            record = json.load(f)
        weights = os.path.join(backup_dir, record["weights"])
        int(record["epoch"]), int(record["steps"])
    except (OSError, ValueError, KeyError, TypeError) as error:
        return None, f"{path} is damaged ({error})"
    if not os.path.isfile(weights):
        return None, f"the weights {weights} named by {name} are missing"
    if sha256_file(weights) != record.get("weights_sha256"):
        return None, f"the weights {weights} do not match the SHA-256 in {name} (truncated or changed)"
    return record, None


def read_checkpoint(backup_dir, warn=None):
    """The newest usable committed checkpoint (a dict), or None when there is none.

    A damaged newest checkpoint (record unreadable, weights missing, truncated or
    changed) falls back to the previous one, with a one-line `warn(message)`
    (default: printed to stderr). Raises ValueError naming both problems when
    neither can be used.
    """
    newest, problem = _read_record(backup_dir, CHECKPOINT)
    if newest is not None:
        return newest
    previous, previous_problem = _read_record(backup_dir, PREVIOUS)
    if problem is None and previous is None and previous_problem is None:
        return None  # a new run (or one killed before its first commit)
    if previous is not None:
        problem = problem or f"{os.path.join(backup_dir, CHECKPOINT)} is missing"
        message = (f"warning: the newest checkpoint is unusable: {problem}; resuming from the previous one "
                   f"({os.path.join(backup_dir, PREVIOUS)}: chunk {previous['epoch']}, step {previous['steps']}).")
        if warn is None:
            print(f"stt-train: {message}", file=sys.stderr, flush=True)
        else:
            warn(message)
        return previous
    problem = problem or f"{os.path.join(backup_dir, CHECKPOINT)} is missing"
    previous_text = previous_problem or f"there is no previous one ({PREVIOUS})"
    raise ValueError(f"no usable checkpoint in {backup_dir}: {problem}; {previous_text}. "
                     f"Remove {backup_dir} to train from step 0, or use a new --out.")


def rng_variables(model):
    """The state variables of the model's random generators (Dropout, drop path), in the model's own order.

    Keras keeps them out of `model.weights`, so save_weights() does not store them;
    a resumed run that did not restore them would draw other dropout masks.
    """
    weights = {id(v) for v in model.weights}
    return [v for v in model.variables if id(v) not in weights]


def rng_state(model):
    """[[int, ...], ...]: the values of `rng_variables(model)` (JSON-friendly)."""
    return [np.asarray(v.numpy()).tolist() for v in rng_variables(model)]


def restore_rng_state(model, states):
    """Sets the model's random generators to `states` (from `rng_state`); ValueError if they do not fit."""
    variables = rng_variables(model)
    if len(states) != len(variables):
        raise ValueError(f"the checkpoint holds {len(states)} random generator states, the model has {len(variables)}.")
    for variable, state in zip(variables, states):
        value = np.asarray(state, dtype=variable.dtype)
        if value.shape != tuple(variable.shape):
            raise ValueError(f"a random generator state of shape {value.shape} does not fit {variable.path} "
                             f"{tuple(variable.shape)}.")
        variable.assign(value)


@contextlib.contextmanager
def stop_signals():
    """Inside the block, SIGINT (Ctrl-C) and SIGTERM raise KeyboardInterrupt (main thread only).

    Yields a list that receives the name of each signal ("SIGINT", "SIGTERM"), so the
    caller can say what stopped it.
    """
    received = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}

    def stop(signum, frame):
        received.append(signal.Signals(signum).name)
        raise KeyboardInterrupt

    for s in previous:
        signal.signal(s, stop)
    try:
        yield received
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


@contextlib.contextmanager
def deferred_interrupts(signals=(signal.SIGINT, signal.SIGTERM)):
    """Holds SIGINT/SIGTERM that arrive inside the block and delivers them when it ends (main thread only).

    A chunk's files and its commit are written whole: a Ctrl-C in the middle
    takes effect right after, with the checkpoint committed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = {s: signal.getsignal(s) for s in signals}
    for s in signals:
        signal.signal(s, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
    if received:
        signal.raise_signal(received[0])  # the handler in force outside the block (Ctrl-C: KeyboardInterrupt)


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
        restored: the checkpoint a resumed run starts from (its best score is kept; it
            becomes the previous checkpoint at the next commit).
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
        self.committed = dict(restored) if restored else None  # the newest commit (read when a run is interrupted)

    def _append_history(self, epoch, logs):
        keys = sorted(logs)
        size = os.path.getsize(self.history) if os.path.exists(self.history) else 0
        try:
            with open(self.history, "a", newline="") as f:
                writer = csv.writer(f)
                if size == 0:
                    writer.writerow(["epoch", *keys])
                writer.writerow([epoch, *[logs[k] for k in keys]])
                f.flush()
                os.fsync(f.fileno())
        except OSError:  # a full disk: no half row is left behind
            with open(self.history, "r+b") as f:
                f.truncate(size)
            raise
        self.rows += 1

    def on_epoch_end(self, epoch, logs=None):
        with deferred_interrupts():
            self._write_chunk(epoch, logs)

    def _write_chunk(self, epoch, logs):
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
        record = {
            "epoch": epoch + 1,
            "steps": int(self.model.optimizer.iterations.numpy()),
            "weights": weights_name,
            "weights_sha256": sha256_file(weights),
            "best": None if not np.isfinite(self.best) else self.best,
            "monitor": self.monitor,
            "history_rows": self.rows,
            "rng": rng_state(self.model),
            "settings": self.settings,
        }
        previous = self.committed if self.committed and "weights" in self.committed else None
        if previous is not None:  # the last good commit (not a damaged file) becomes the previous checkpoint
            atomic_write_json(os.path.join(self.backup_dir, PREVIOUS), previous)
        atomic_write_json(os.path.join(self.backup_dir, CHECKPOINT), record)
        self.committed = record
        faults.point("after_commit")
        keep = {weights_name, previous["weights"] if previous else None}
        for old in glob.glob(os.path.join(self.backup_dir, "chunk-*.weights.h5")):
            if os.path.basename(old) not in keep:
                os.remove(old)


class StopAtStep(keras.callbacks.Callback):
    """Ends training after exactly `steps` optimizer steps (the last chunk may be shorter)."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) >= self.steps:
            self.model.stop_training = True
