"""SavedModel for TF Serving: `serving_default` (a clip) and `step` (streaming with explicit state)."""

import tensorflow as tf

from export import step as step_lib


def save(model, directory, height, width, assets=()):
    """Writes a SavedModel with two signatures to `directory` (a TF Serving version folder).

    `assets`: files copied into the SavedModel's assets/ (e.g. labels.json) and
    tracked by it (`loaded.assets[i].asset_path` after `tf.saved_model.load`).

    serving_default: clip uint8 [1, T+1, H, W, 3] -> labels int32 [1, H, W], probabilities [1, H, W, classes]
    step:            frame uint8 [1, H, W, 3], state float32 [1, h, w, T*C], reset float32 [1]
                     -> labels, logits, state (see export/step.py)
    """
    module = tf.Module()
    # Track the underlying tf.Variables explicitly (as keras.export.ExportArchive
    # does): through the Keras model alone some were not saved, and the `step`
    # signature failed at load time with "Resource .../query_kernel does not exist".
    module.keras_variables = [v.value for v in model.variables]
    module.assets = [tf.saved_model.Asset(path) for path in assets]
    module.clip = step_lib.make_clip_function(model, height, width)
    signatures = {"serving_default": module.clip.get_concrete_function()}
    if model.stt is not None:
        module.step = step_lib.make_step_function(model, height, width, "default")
        signatures["step"] = module.step.get_concrete_function()
    tf.saved_model.save(module, directory, signatures=signatures)
    return sorted(signatures)
