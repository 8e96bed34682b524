"""Saving and loading stt-keras models, always in Keras safe mode.

Two formats:
- a `.keras` file (`model.save`, what stt-train writes): config, weights and the
  compile settings (loss, MeanIoU metric, optimizer state) in one zip;
- a preset directory (`model.save_to_preset(dir)`, keras-hub style), for sharing a
  trained model: `config.json` (the model's Keras config), `model.weights.h5` and
  `metadata.json` (format, class count, label names and colours when given, the
  architecture preset name, library versions, and the SHA-256 of the two other
  files). `STTSegmenter.from_preset(dir)` and `load_model(dir)` read it.
"""

import datetime
import json
import os
import warnings
import zipfile

import keras

from stt_keras.utils.errors import ModelFileError
from stt_keras.utils.fileio import sha256_file
from stt_keras.version import __version__

PRESET_FORMAT = "stt-keras-preset/1"
PRESET_CONFIG = "config.json"
PRESET_WEIGHTS = "model.weights.h5"
PRESET_METADATA = "metadata.json"
PRESET_FILES = (PRESET_CONFIG, PRESET_WEIGHTS, PRESET_METADATA)


def segmenter_class():
    """STTSegmenter, looked up in Keras' registry rather than imported: the models import this module's loaders
    (`from_preset`, `save_to_preset`), so an import back would be a cycle. Any import of a stt_keras module runs
    the package's __init__ first, which registers every class (layers, metrics, models)."""
    cls = keras.saving.get_registered_object("stt_keras>STTSegmenter")
    if cls is None:  # not reachable through the package; a clear message rather than a None deep inside
        raise RuntimeError("stt_keras.models is not registered with Keras; import stt_keras first.")
    return cls


def check_model_file(path):
    """Raises FileNotFoundError / ModelFileError (one line, naming `path`) unless it looks like a .keras archive."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"No model file at {path}.")
    if os.path.isdir(path):
        kind = " (a SavedModel folder cannot be loaded here)" if os.path.exists(os.path.join(path, "saved_model.pb")) else ""
        raise ModelFileError(f"model {path} is a folder, not a .keras file or a preset directory{kind}.")
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


def load_model(path: str, compile: bool = True, verify: bool = True) -> keras.Model:
    """Loads a `.keras` file or a preset directory of an stt-keras model (safe mode: no arbitrary code).

    A preset directory (`save_to_preset`) holds no compile settings: its model
    comes back uncompiled whatever `compile` says (call `model.compile()`). Its
    files are checked against the checksums in its metadata.json, and a preset
    without them is refused; `verify=False` loads a hand-made one anyway.

    Registers every stt-keras class first (layers, models and the metrics a
    compiled model refers to, all in the library).
    Raises FileNotFoundError if there is no file, ModelFileError (a ValueError,
    one line naming the file) if it is empty, truncated, not a Keras archive,
    or a Keras model that is not an stt-keras STTSegmenter. Loading reads
    nothing but the file: pretrained-weight references in its config are ignored.
    """
    STTSegmenter = segmenter_class()

    if is_preset_dir(path):
        return load_preset(path, verify=verify)
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


# ---------------------------------------------------------------- presets
def is_preset_dir(path):
    """True if `path` is a folder that claims to be a preset (holds a metadata.json or config.json)."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, name)) for name in (PRESET_METADATA, PRESET_CONFIG))


def _check_classes(classes, colors, num_classes):
    if classes is None:
        if colors is not None:
            raise ValueError("`colors` needs `classes` (one name per class).")
        return None, None
    classes = [str(name) for name in classes]
    if len(classes) != num_classes:
        raise ValueError(f"`classes` has {len(classes)} names but the model has {num_classes} classes.")
    if colors is not None:
        colors = [[int(c) for c in color] for color in colors]
        if len(colors) != num_classes or any(len(c) != 3 or not all(0 <= v <= 255 for v in c) for c in colors):
            raise ValueError(f"`colors` must be {num_classes} RGB triples of 0..255, got {colors!r:.200}.")
    return classes, colors


def old_labels_keyword(classes, labels, stacklevel=3):
    """`classes`, or the deprecated keyword `labels=` (class names; "labels" are per-pixel class indices)."""
    if labels is None:
        return classes
    if classes is not None:
        raise ValueError("pass the class names as `classes` only (`labels` is its deprecated name).")
    warnings.warn("save_to_preset(labels=...) is named classes=...; labels= will stop working.", DeprecationWarning,
                  stacklevel=stacklevel)
    return labels


def save_preset(model, directory, classes=None, colors=None, labels=None):
    """Writes `model` as a preset directory (see the module docstring); returns its metadata dict.

    `classes`: optional class names, one per class; `colors`: optional [r, g, b] per class
    (needs `classes`); `labels`: the deprecated name of `classes`.

    The directory appears complete or not at all: the files are written into a
    hidden sibling folder and renamed into place. An existing `directory` is
    replaced only if it is empty or an earlier preset (it holds nothing but the
    preset files); anything else is refused and left alone. The optimizer state
    is not saved (a preset is for inference and fine-tuning; use `model.save`
    for a training checkpoint).
    """
    import tensorflow as tf

    if not model.built:
        raise ValueError("save_to_preset needs a built model: call model.build() (or call it on a batch, or fit it) first.")
    classes, colors = _check_classes(old_labels_keyword(classes, labels), colors, model.num_classes)
    directory = os.path.abspath(directory)
    if os.path.exists(directory):
        if not os.path.isdir(directory):
            raise FileExistsError(f"{directory} exists and is not a folder; not replacing it.")
        extra = sorted(set(os.listdir(directory)) - set(PRESET_FILES))
        if extra:
            raise FileExistsError(f"{directory} holds files that are not part of a preset ({', '.join(extra[:5])}); "
                                  "choose an empty or new folder.")
    from stt_keras.utils.fileio import atomic_directory  # the folder case of the atomic writes

    # A temporary sibling folder, fsynced, then swapped with `directory` in one step: a kill at any
    # point leaves the old preset or the new one.
    with atomic_directory(directory) as partial:
        with open(os.path.join(partial, PRESET_CONFIG), "w") as f:
            config = keras.saving.serialize_keras_object(model)
            config.pop("compile_config", None)  # a preset holds the model, not its training settings
            json.dump(config, f, indent=2)
        model.save_weights(os.path.join(partial, PRESET_WEIGHTS))
        metadata = {
            "format": PRESET_FORMAT,
            "class_name": type(model).__name__,
            "architecture": model.name,
            "num_classes": int(model.num_classes),
            "num_key_frames": int(model.num_key_frames),
            "classes": classes,
            "colors": colors,
            "parameter_count": int(model.count_params()),
            "stt_keras_version": __version__,
            "keras_version": keras.__version__,
            "tensorflow_version": tf.__version__,
            "date_saved": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "files": {name: {"sha256": sha256_file(os.path.join(partial, name)),
                             "bytes": os.path.getsize(os.path.join(partial, name))}
                      for name in (PRESET_CONFIG, PRESET_WEIGHTS)},
        }
        with open(os.path.join(partial, PRESET_METADATA), "w") as f:
            json.dump(metadata, f, indent=2)
    return metadata


def read_preset_metadata(directory, verify=True):
    """The metadata dict of a preset directory, checked; ModelFileError naming what is missing or wrong.

    `verify` (default): the SHA-256 and size of config.json and model.weights.h5 must match the
    metadata's "files" entries, and a metadata without them is refused. verify=False skips these
    checks, for a preset directory made by hand (the explicit opt-out).
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"No preset directory at {directory}.")
    missing = [name for name in PRESET_FILES if not os.path.isfile(os.path.join(directory, name))]
    if missing:
        raise ModelFileError(
            f"preset directory {directory} is incomplete: {', '.join(missing)} missing (a preset holds "
            f"{', '.join(PRESET_FILES)}; write one with model.save_to_preset).")
    try:
        with open(os.path.join(directory, PRESET_METADATA)) as f:
            metadata = json.load(f)
    except ValueError as error:
        raise ModelFileError(f"preset {directory}: {PRESET_METADATA} is not valid JSON ({error}).") from None
    if not isinstance(metadata, dict) or metadata.get("format") != PRESET_FORMAT:
        found = metadata.get("format") if isinstance(metadata, dict) else None
        raise ModelFileError(f"preset {directory}: {PRESET_METADATA} has format {found!r}, expected {PRESET_FORMAT!r}.")
    if "labels" in metadata and "classes" not in metadata:  # older presets name the class names "labels"
        metadata["classes"] = metadata.pop("labels")
    files = metadata.get("files")
    if not verify:
        return metadata
    if files is None:
        raise ModelFileError(f"preset {directory}: {PRESET_METADATA} records no \"files\" checksums, so its weights "
                             "cannot be verified; write it again with model.save_to_preset, or load it with "
                             "verify=False if you made it by hand.")
    if not isinstance(files, dict):
        raise ModelFileError(f"preset {directory}: \"files\" in {PRESET_METADATA} must map file names to "
                             f"{{\"sha256\": ..., \"bytes\": ...}}, not a {type(files).__name__}.")
    for name in (PRESET_CONFIG, PRESET_WEIGHTS):
        expected = files.get(name)
        if not (isinstance(expected, dict) and isinstance(expected.get("sha256"), str)
                and isinstance(expected.get("bytes"), int) and not isinstance(expected.get("bytes"), bool)):
            what = "no entry" if expected is None else f"the entry {json.dumps(expected)[:80]}"
            raise ModelFileError(f"preset {directory}: \"files\" in {PRESET_METADATA} has {what} for {name} "
                                 "(needs \"sha256\" and \"bytes\").")
        path = os.path.join(directory, name)
        if os.path.getsize(path) != expected["bytes"] or sha256_file(path) != expected["sha256"]:
            raise ModelFileError(f"preset {directory}: {name} does not match its checksum in {PRESET_METADATA} "
                                 "(truncated, corrupt or replaced).")
    return metadata


def load_preset(directory, load_weights=True, verify=True):
    """Builds the model of a preset directory and loads its weights (safe mode); uncompiled.

    verify=False: load a hand-made preset whose metadata records no checksums (see read_preset_metadata).
    """
    STTSegmenter = segmenter_class()

    metadata = read_preset_metadata(directory, verify=verify)
    try:
        with open(os.path.join(directory, PRESET_CONFIG)) as f:
            config = json.load(f)
    except ValueError as error:
        raise ModelFileError(f"preset {directory}: {PRESET_CONFIG} is not valid JSON ({error}).") from None
    if not isinstance(config, dict) or config.get("class_name") != "STTSegmenter":
        found = config.get("class_name") if isinstance(config, dict) else type(config).__name__
        raise ModelFileError(f"preset {directory} holds a {found!r}, not an stt-keras STTSegmenter.")
    try:
        model = keras.saving.deserialize_keras_object(config, safe_mode=True)
    except Exception as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ModelFileError(f"preset {directory}: its {PRESET_CONFIG} cannot be built: {message[:300]}") from error
    if not isinstance(model, STTSegmenter):
        raise ModelFileError(f"preset {directory} holds a {type(model).__name__}, not an stt-keras STTSegmenter.")
    if model.num_classes != metadata.get("num_classes"):
        raise ModelFileError(f"preset {directory}: its config has {model.num_classes} classes but {PRESET_METADATA} "
                             f"says {metadata.get('num_classes')}.")
    if load_weights:
        if not model.built:  # a hand-made config.json without a build_config
            model.build()
        try:
            model.load_weights(os.path.join(directory, PRESET_WEIGHTS))
        except Exception as error:
            message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ModelFileError(f"preset {directory}: {PRESET_WEIGHTS} does not fit its config: {message[:300]}") from error
    model.preset_metadata = metadata
    return model

