"""The streaming step as an exportable function with explicit state I/O.

Every exported step (SavedModel `step` signature, TFLite, ONNX) has the same
contract, batch 1 and static shapes:

    inputs   frame  [1, H, W, 3]        uint8 RGB (float32 in [0, 255] for the "gpu" form)
             state  [1, h, w, T * C]    float32, C = 2 d_r: the projected key/value
                                         maps of the T previous frames, oldest first,
                                         packed along channels (rank 4: GPU delegates
                                         reject rank-5 tensors)
             reset  [1]                 float32, 1.0 on the first frame of a stream
                                         (the incoming state is then ignored)
    outputs  labels [1, H, W] int32     ("default" form only: ARG_MAX is not a GPU op)
             logits [1, H, W, classes]  float32
             next_state [1, h, w, T * C] the state to pass in with the next frame
                                        (ONNX forbids an output named like an input)

Two forms compute the same function:
- "default": the library's own `STTSegmenter.stream_step` (tile loops, top-k
  selection, gather/scatter of the selected points). Fastest on the CPU.
- "gpu": the delegate-friendly form of `gpu_step.py` (no loops, no top-k, no
  scatter, no rank-5 tensor, float-only runtime tensors).
"""

import tensorflow as tf

from stt_keras.kernels import portable_ops

FORMS = ("default", "gpu")


def state_geometry(model, height, width):
    """(h, w, T, C) of the streaming state of `model` at frame size (height, width)."""
    if getattr(model, "stt", None) is None:
        raise ValueError("Only STT models stream; a per-frame model has no step to export.")
    state = model.initial_state(1, height, width)
    _, frames, h, w, channels = state.shape
    return h, w, frames, channels


def pack_state(state):
    """[B, T, h, w, C] -> [B, h, w, T * C] (oldest frame first along channels)."""
    b, t, h, w, c = state.shape
    return tf.reshape(tf.transpose(state, [0, 2, 3, 1, 4]), [-1, h, w, t * c])


def unpack_state(packed, frames):
    """[B, h, w, T * C] -> [B, T, h, w, C]."""
    _, h, w, tc = packed.shape
    c = tc // frames
    return tf.transpose(tf.reshape(packed, [-1, h, w, frames, c]), [0, 3, 1, 2, 4])


def input_signature(model, height, width, form="default"):
    h, w, frames, channels = state_geometry(model, height, width)
    frame_dtype = tf.float32 if form == "gpu" else tf.uint8
    return [
        tf.TensorSpec([1, height, width, 3], frame_dtype, name="frame"),
        tf.TensorSpec([1, h, w, frames * channels], tf.float32, name="state"),
        tf.TensorSpec([1], tf.float32, name="reset"),
    ]


def make_step_function(model, height, width, form="default"):
    """A `tf.function` (frame, state, reset) -> {["labels",] "logits", "next_state"}, fixed signature.

    Args:
        model: an STTSegmenter with an STT.
        height, width: frame size the exported model takes.
        form: "default" or "gpu" (see the module docstring).
    """
    if form not in FORMS:
        raise ValueError(f"`form` must be one of {FORMS}, got {form!r}.")
    signature = input_signature(model, height, width, form)
    frames = model.num_key_frames

    if form == "gpu":
        from export import gpu_step  # only the gpu form needs it

        @tf.function(input_signature=signature, autograph=False)
        def step(frame, state, reset):
            with portable_ops():
                logits, new_state = gpu_step.stream_step(model, frame, state, reset)
            return {"logits": logits, "next_state": new_state}

        return step

    @tf.function(input_signature=signature, autograph=False)
    def step(frame, state, reset):
        with portable_ops():  # exported graphs hold standard TF ops only
            logits, new_state = model.stream_step(frame, unpack_state(state, frames), reset[0] > 0.5)
        labels = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return {"labels": labels, "logits": logits, "next_state": pack_state(new_state)}

    return step


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
