"""Streaming inference: each frame is encoded once and reused as a key for the next T frames.

Here live the stream (`StreamingSegmenter`, which holds the state) and the state's layout
(`pack_frames` / `unpack_frames`: frames on their own axis, or packed along channels as every
exported step takes it). docs/models.md, "The streaming state contract", describes both.
"""

from typing import Iterable

import numpy as np
import tensorflow as tf


# ------------------------------------------------------------------ state layout
def pack_frames(frames):
    """[B, T, h, w, C] -> [B, h, w, T * C] (oldest frame first along channels): the exported steps' layout.

    >>> import numpy as np
    >>> frames = np.arange(2 * 1 * 1 * 3).reshape(1, 2, 1, 1, 3)   # T = 2 frames of 3 channels
    >>> pack_frames(frames).numpy().tolist()
    [[[[0, 1, 2, 3, 4, 5]]]]
    >>> unpack_frames(pack_frames(frames), 2).shape
    TensorShape([1, 2, 1, 1, 3])
    """
    frames = tf.convert_to_tensor(frames)
    t, c = frames.shape[1], frames.shape[4]
    shape = tf.shape(frames)
    h = frames.shape[2] if frames.shape[2] is not None else shape[2]
    w = frames.shape[3] if frames.shape[3] is not None else shape[3]
    return tf.reshape(tf.transpose(frames, [0, 2, 3, 1, 4]), [-1, h, w, t * c])


def unpack_frames(packed, frames):
    """[B, h, w, T * C] -> [B, T, h, w, C], for `frames` = T (the inverse of `pack_frames`)."""
    packed = tf.convert_to_tensor(packed)
    shape = tf.shape(packed)
    h = packed.shape[1] if packed.shape[1] is not None else shape[1]
    w = packed.shape[2] if packed.shape[2] is not None else shape[2]
    return tf.transpose(tf.reshape(packed, [-1, h, w, frames, packed.shape[-1] // frames]), [0, 3, 1, 2, 4])


# ------------------------------------------------------------------ the stream
class StreamingSegmenter:
    """Segments a video frame by frame with a ring buffer of cached key features.

    Carries `model.stream_step`'s state for you, so a frame costs one encoder
    pass + STT + decoder. The state (`self.state`, `model.state_shape(H, W)`), its
    first-frame policy and what a step equals on a clip are described in
    docs/models.md, "The streaming state contract". A new frame shape starts a
    new stream. An exported file streams the same way, without TensorFlow, through
    `stt_edge_demo.stream.Stream` (same `step`, `reset`, `segment`, `state`).

    Args:
        model: an STTSegmenter with an STT.
        jit_compile: compile the step with XLA.

    Example:
    >>> import numpy as np
    >>> from stt_keras.models import STTSegmenter
    >>> stream = StreamingSegmenter(STTSegmenter.from_preset("stt_psp_tiny", num_classes=5))
    >>> logits = stream.step(np.zeros((64, 64, 3), "uint8"))
    >>> tuple(logits.shape)
    (64, 64, 5)
    >>> labels = stream.step(np.zeros((64, 64, 3), "uint8"), return_labels=True)   # argmax over classes
    >>> labels.dtype, tuple(labels.shape)
    (tf.int32, (64, 64))
    >>> video = np.zeros((3, 64, 64, 3), "uint8")                                   # or any iterable of frames
    >>> stream.segment(video).shape                                                 # a new stream: labels per frame
    (3, 64, 64)
    """

    def __init__(self, model, jit_compile: bool = False):
        if getattr(model, "stt", None) is None:
            raise ValueError("StreamingSegmenter needs an STT model (a per-frame model needs no stream).")
        self.model = model
        self._step = tf.function(model.stream_step, jit_compile=jit_compile)
        self.state = None
        self._frame_shape = None
        self._reset = True

    def reset(self) -> None:
        """Forget the past: the next frame starts a new stream.

        The state tensor is kept: a reset step ignores its contents (the first-frame
        policy fills it from the frame), so only a new frame size needs a new one.
        """
        self._reset = True

    def step(self, frame, return_labels: bool = False) -> tf.Tensor:
        """frame [H, W, 3] or [B, H, W, 3] uint8/float in [0, 255] -> float32 logits of the same rank.

        With `return_labels=True`, the class index per pixel instead (int32 [H, W] or
        [B, H, W]: the argmax over classes, the lowest index on ties).
        """
        frame = tf.convert_to_tensor(frame)
        single = frame.shape.rank == 3
        if single:
            frame = frame[None]
        if frame.shape.rank != 4 or frame.shape[-1] != 3:
            raise ValueError(f"Expected a frame [H, W, 3] or [B, H, W, 3], got shape {frame.shape}.")
        if 0 in tuple(frame.shape[:3]):
            raise ValueError(f"Frame has an empty dimension (batch, height or width is 0): shape {tuple(frame.shape)}.")
        reset = self._reset or self._frame_shape != tuple(frame.shape)
        if self.state is None or self._frame_shape != tuple(frame.shape):
            self._frame_shape = tuple(frame.shape)
            self.state = self.model.initial_state(frame.shape[0], frame.shape[1], frame.shape[2])
        logits, self.state = self._step(frame, self.state, reset)  # a Python bool: one graph per value
        self._reset = False
        if return_labels:
            logits = tf.argmax(logits, axis=-1, output_type=tf.int32)
        return logits[0] if single else logits

    def segment(self, frames: Iterable) -> np.ndarray:
        """Labels of every frame of a video: int32 [N, H, W] from frames [H, W, 3] (an array [N, H, W, 3] or
        any iterable, e.g. a video reader), streamed as a new stream (the first frame resets it)."""
        self.reset()
        labels = [self.step(frame, return_labels=True).numpy() for frame in frames]
        if not labels:
            raise ValueError("segment() got no frames.")
        return np.stack(labels)
