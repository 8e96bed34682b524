"""The streaming step as an exportable function with explicit state I/O.

Every exported step (SavedModel `step` signature, TFLite, ONNX) has the same
contract, batch 1 and static shapes: inputs (frame, state, reset), outputs
([labels], [logits], next_state), the state packed along channels as
`model.state_shape(H, W, packed=True)`. The contract is written down once, in
docs/models.md, "The streaming state contract". A per-frame model (no STT) has
the same contract without state, reset and next_state.

This module only traces; the state's geometry and packing are the library's
(`STTSegmenter.state_shape`, `stt_keras.streaming.pack_frames`).

Two forms compute the same function:
- "default": the library's own `STTSegmenter.stream_step` (tile loops, top-k
  selection, gather/scatter of the selected points). Fastest on the CPU.
- "dense_masked": the library's delegate-friendly implementation (the form GPUs
  and int8 run; its files are named stt_gpu_*; "gpu" is a deprecated alias),
  `model.stream_step(..., implementation="dense_masked")` on the packed state
  (stt_keras/layers/dense_masked.py: no loops, no top-k, no scatter, no rank-5
  tensor, float-only runtime tensors), traced inside `gpu_step.gpu_convolutions`.
  A per-frame model has no loops: both forms are the same graph.

Two interfaces:
- "full" (default): the contract above, logits included.
- "edge": uint8 frame in, int32 `labels` out, computed on the device by a max and
  an equality compare (`labels_on_device`, accepted by LiteRT's GPU accelerator),
  no logits: a phone copies H*W int32 per frame back, not H*W*classes floats.
"""

import numpy as np
import tensorflow as tf

from stt_keras.export.files import form_name
from stt_keras.kernels import portable_ops

FORMS = ("default", "dense_masked")
INTERFACES = ("full", "edge")

# Input and output names in signature order, and what each one means (goes into the metadata).
MEANINGS = {
    "frame": "RGB frame, values in [0, 255]; ImageNet mean/std is applied inside the model",
    "state": "streaming state [1, h, w, T * C]: projected key/value maps of the T previous frames, oldest first, "
             "packed along channels (docs/models.md, 'The streaming state contract'); zeros with reset=1 first",
    "reset": "1.0 on the first frame of a stream (the incoming state is then ignored), else 0.0",
    "labels": "class index per pixel (argmax over classes; the lowest index on ties)",
    "logits": "class scores per pixel (before softmax)",
    "next_state": "the state to pass in with the next frame",
}


def is_streaming(model):
    return getattr(model, "stt", None) is not None


def frame_dtype(form="default", interface="full"):
    return tf.float32 if form_name(form) == "dense_masked" and interface == "full" else tf.uint8


def input_signature(model, height, width, form="default", interface="full"):
    form = form_name(form)
    _check(form, interface)
    frame = tf.TensorSpec([1, height, width, 3], frame_dtype(form, interface), name="frame")
    if not is_streaming(model):
        return [frame]
    return [
        frame,
        tf.TensorSpec(model.state_shape(height, width, packed=True), tf.float32, name="state"),
        tf.TensorSpec([1], tf.float32, name="reset"),
    ]


def labels_on_device(logits):
    """int32 argmax over the last axis, lowest index on ties, from ops a GPU runs.

    ARG_MAX is not an op of the classic TFLite GPU delegate; this is: the maximum,
    an equality compare against it and a maximum over (classes - index) weights.
    Exact in float16 too (class indices are small integers).
    """
    classes = logits.shape[-1]
    top = tf.reduce_max(logits, axis=-1, keepdims=True)
    weights = tf.constant(np.arange(classes, 0, -1, dtype=np.float32))  # classes - index
    hits = tf.cast(logits >= top, tf.float32) * weights
    return tf.cast(float(classes) - tf.reduce_max(hits, axis=-1), tf.int32)


def _check(form, interface):
    if form not in FORMS:
        raise ValueError(f"`form` must be one of {FORMS}, got {form!r}.")
    if interface not in INTERFACES:
        raise ValueError(f"`interface` must be one of {INTERFACES}, got {interface!r}.")


def _outputs(logits, form, interface, next_state=None):
    out = {}
    if interface == "edge":
        out["labels"] = labels_on_device(logits)
    else:
        if form == "default":
            out["labels"] = tf.argmax(logits, axis=-1, output_type=tf.int32)
        out["logits"] = logits
    if next_state is not None:
        out["next_state"] = next_state
    return out


def make_step_function(model, height, width, form="default", interface="full"):
    """A `tf.function` (frame[, state, reset]) -> {["labels",] ["logits",] ["next_state"]}, fixed signature.

    Args:
        model: an STTSegmenter (with an STT: a streaming step; without: a per-frame step).
        height, width: frame size the exported model takes.
        form: "default" or "dense_masked" (see the module docstring).
        interface: "full" or "edge" (see the module docstring).
    """
    form = form_name(form)
    signature = input_signature(model, height, width, form, interface)

    if not is_streaming(model):
        from stt_keras.export.gpu_step import gpu_convolutions  # a per-frame graph is loop-free already

        @tf.function(input_signature=signature, autograph=False)
        def frame_step(frame):
            with portable_ops(), gpu_convolutions(model):
                logits = model(frame, training=False)
            return _outputs(tf.cast(logits, tf.float32), form, interface)

        return frame_step

    if form == "dense_masked":
        from stt_keras.export.gpu_step import gpu_convolutions  # only the dense_masked form needs it

        @tf.function(input_signature=signature, autograph=False)
        def step(frame, state, reset):
            with portable_ops(), gpu_convolutions(model):
                logits, new_state = model.stream_step(frame, state, reset, implementation="dense_masked")
            return _outputs(logits, form, interface, new_state)

        return step

    @tf.function(input_signature=signature, autograph=False)
    def step(frame, state, reset):
        with portable_ops():  # exported graphs hold standard TF ops only
            logits, new_state = model.stream_step(frame, state, reset[0] > 0.5, implementation="sparse")
        return _outputs(logits, form, interface, new_state)

    return step


def io_order(fn):
    """([input names], [output names]) in the order a runtime lists them (outputs sorted by name)."""
    concrete = fn.get_concrete_function()
    return [s.name for s in concrete.structured_input_signature[0]], sorted(concrete.structured_outputs)


def make_clip_function(model, height, width):
    """A `tf.function` clip [1, T+1, H, W, 3] uint8 -> {"labels", "probabilities"}."""
    frames = model.num_key_frames + 1 if model.stt is not None else 1
    spec = tf.TensorSpec([1, frames, height, width, 3], tf.uint8, name="clip")

    @tf.function(input_signature=[spec], autograph=False)
    def clip_fn(clip):
        with portable_ops():
            logits = model(clip, training=False)
        return {
            "labels": tf.argmax(logits, axis=-1, output_type=tf.int32),
            "probabilities": tf.nn.softmax(logits, axis=-1),
        }

    return clip_fn
