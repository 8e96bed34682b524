"""SavedModel for TF Serving: `serving_default` (a clip), `step` (streaming with explicit state) and
`step_float16` (the same step with the state in float16: half the bytes each way; docs/serving.md)."""

import tensorflow as tf

from stt_keras.export import step as step_lib

STATE_DTYPES = ("float32", "float16")
# float16's largest finite value: a state value beyond it is clipped there rather than becoming inf.
FLOAT16_MAX = 65504.0


def step_signature_name(state_dtype):
    return "step" if state_dtype == "float32" else f"step_{state_dtype}"


def make_state_dtype_step(model, height, width, state_dtype="float32"):
    """The `step` function (export/step.py, "default" form, "full" interface) with the state in `state_dtype`.

    float16: the incoming state is cast up to float32 before the step and the
    next state cast down (clipped to +-65504) after it; everything else, labels
    and logits included, is the float32 step. The cost is the rounding of the
    stored key/value maps to 11 significant bits (measured in benchmarks/serving.py).
    """
    if state_dtype not in STATE_DTYPES:
        raise ValueError(f"`state_dtype` must be one of {STATE_DTYPES}, got {state_dtype!r}.")
    full = step_lib.make_step_function(model, height, width, "default")
    if state_dtype == "float32" or not step_lib.is_streaming(model):
        return full
    frame, state, reset = step_lib.input_signature(model, height, width)
    dtype = tf.as_dtype(state_dtype)

    @tf.function(input_signature=[frame, tf.TensorSpec(state.shape, dtype, name="state"), reset], autograph=False)
    def step(frame, state, reset):
        out = dict(full(frame, tf.cast(state, tf.float32), reset))
        out["next_state"] = tf.cast(tf.clip_by_value(out["next_state"], -FLOAT16_MAX, FLOAT16_MAX), dtype)
        return out

    return step


def save(model, directory, height, width, state_dtypes=STATE_DTYPES, assets=()):
    """Writes a SavedModel with these signatures to `directory` (a TF Serving version folder):

    `assets`: files copied into the SavedModel's assets/ (e.g. labels.json) and
    tracked by it (`loaded.assets[i].asset_path` after `tf.saved_model.load`).

    serving_default: clip uint8 [1, T+1, H, W, 3] -> labels int32 [1, H, W], probabilities [1, H, W, classes]
    step:            frame uint8 [1, H, W, 3], state float32 [1, h, w, T*C], reset float32 [1]
                     -> labels, logits, next_state (see export/step.py)
    step_float16:    the same with state and next_state in float16 (if "float16" is in `state_dtypes`)

    A per-frame model has `serving_default` only. Returns the sorted signature names.
    """
    unknown = set(state_dtypes) - set(STATE_DTYPES)
    if unknown or not state_dtypes:
        raise ValueError(f"`state_dtypes` must be a non-empty subset of {STATE_DTYPES}, got {state_dtypes!r}.")
    module = tf.Module()
    # Track the underlying tf.Variables explicitly (as keras.export.ExportArchive
    # does): through the Keras model alone some were not saved, and the `step`
    # signature failed at load time with "Resource .../query_kernel does not exist".
    module.keras_variables = [v.value for v in model.variables]
    module.assets = [tf.saved_model.Asset(path) for path in assets]
    module.clip = step_lib.make_clip_function(model, height, width)
    signatures = {"serving_default": module.clip.get_concrete_function()}
    if model.stt is not None:
        for state_dtype in state_dtypes:
            name = step_signature_name(state_dtype)
            setattr(module, name, make_state_dtype_step(model, height, width, state_dtype))
            signatures[name] = getattr(module, name).get_concrete_function()
    tf.saved_model.save(module, directory, signatures=signatures)
    return sorted(signatures)
