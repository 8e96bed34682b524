"""Loading saved stt-keras models, always in Keras safe mode."""

import json
import os
import zipfile

import keras

from stt_keras.errors import ModelFileError


def check_model_file(path):
    """Raises FileNotFoundError / ModelFileError (one line, naming `path`) unless it looks like a .keras archive."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"No model file at {path}.")
    if os.path.isdir(path):
        raise ModelFileError(f"model {path} is a folder, not a .keras file (a SavedModel folder cannot be loaded here).")
    size = os.path.getsize(path)
    if size == 0:
        raise ModelFileError(f"model file {path} is empty (0 bytes).")
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(8)
        kind = "an HDF5 (.h5) file" if head.startswith(b"\x89HDF") else "not a zip archive"
        raise ModelFileError(
            f"model file {path} is not a .keras archive ({kind}, {size} bytes): truncated, corrupt or another format.")
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
            if "config.json" not in names:
                raise ModelFileError(f"model file {path} is a zip archive but not a Keras model (no config.json inside).")
            bad = archive.testzip()
            if bad is not None:
                raise ModelFileError(f"model file {path} is corrupt: {bad} inside it fails its checksum.")
            config = json.loads(archive.read("config.json"))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError) as error:
        if isinstance(error, ModelFileError):
            raise
        raise ModelFileError(f"model file {path} is truncated or corrupt ({error}).") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise ModelFileError(f"model file {path} has no model config in its config.json.")
    return config


def load_model(path, compile=True):
    """Loads a `.keras` file saved from an stt-keras model (safe mode: no arbitrary code).

    Registers every stt-keras class first (layers, models and, when the training
    package is installed, the MeanIoU metric a compiled model refers to).
    Raises FileNotFoundError if there is no file, ModelFileError (a ValueError,
    one line naming the file) if it is empty, truncated, not a Keras archive,
    or a Keras model that is not an stt-keras STTSegmenter. Loading reads
    nothing but the file: pretrained-weight references in its config are ignored.
    """
    import stt_keras.layers  # noqa: F401  (registration)
    import stt_keras.models  # noqa: F401
    from stt_keras.models import STTSegmenter

    try:
        import training.metrics  # noqa: F401
    except ImportError:
        pass
    config = check_model_file(path)
    if config.get("class_name") != "STTSegmenter":
        raise ModelFileError(
            f"model file {path} holds a {config.get('class_name')!r}, not an stt-keras STTSegmenter "
            "(it has no num_classes / streaming step; train one with stt-train).")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=compile)
    except ModelFileError:
        raise
    except Exception as error:  # Keras raises many types for a damaged archive
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(f"model file {path} cannot be loaded: {message[:300]}") from error
    if not isinstance(model, STTSegmenter):
        raise ModelFileError(f"model file {path} holds a {type(model).__name__}, not an stt-keras STTSegmenter.")
    return model
