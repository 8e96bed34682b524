"""Callbacks that write checkpoints atomically, so an interruption never leaves half a file."""

import os
import tempfile

import keras
import numpy as np


def atomic_save(model, path):
    """model.save(path) through a temporary file in the same folder and an atomic rename."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".keras", dir=folder)
    os.close(fd)
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


class AtomicCheckpoint(keras.callbacks.Callback):
    """Saves `last.keras` every epoch and `best.keras` when `monitor` improves (higher is better)."""

    def __init__(self, folder, monitor="val_mean_iou"):
        super().__init__()
        self.folder = folder
        self.monitor = monitor
        self.best = -np.inf

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        atomic_save(self.model, os.path.join(self.folder, "last.keras"))
        value = logs.get(self.monitor)
        if value is not None and value > self.best:
            self.best = value
            atomic_save(self.model, os.path.join(self.folder, "best.keras"))
