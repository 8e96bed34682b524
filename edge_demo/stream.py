"""A stream over an exported step that holds its state: `step(frame)`, `reset()`, like the Keras `StreamingSegmenter`.

An exported step (a runner here, `model.stream_step` in Keras) is a pure function:
`(frame, state, reset) -> (outputs, next_state)`. A `Stream` keeps the state and the
reset flag between frames, so the caller only hands it frames:

    with Stream.open("exports/stt_tiny/stt_int8.tflite") as stream:
        labels = stream.step(frame, return_labels=True)   # frame uint8 [H, W, 3] at the model's size
        stream.reset()                                      # the next frame starts a new stream

The first frame after `reset()` (and the first of all) is sent with `reset` 1 and the
zero state, every later one with the previous step's `next_state` (the streaming state
contract, docs/models.md). A per-frame model (no `state` input) is a stream without
state: only the frame goes in.
"""

import numpy as np

from .runners import ModelError, _Runner, labels_of, load_runner, step_inputs


class Stream:
    """Segments a video frame by frame through an exported step, carrying its state.

    Args:
        step: a runner (`load_runner`, or `Stream.open` with a model path), or any
            callable(**inputs) -> {name: array} with the exported step's interface
            (a LiteRT or ONNX Runtime session, a Keras step function).
        state_shape: the state's shape (`model.state_shape(H, W, packed=True)`), or None
            for a per-frame model. Read from the metadata when `step` is a runner.
        frame_dtype: the dtype the step's `frame` input takes (read from the metadata for a runner).
        state_dtype: the state's dtype (read from the metadata for a runner).

    Attributes:
        state: the state the next step gets (None for a per-frame model).
        meta: the model's metadata (None unless made from a runner).
    """

    def __init__(self, step, state_shape=None, frame_dtype=np.uint8, state_dtype=np.float32):
        self.runner = step if isinstance(step, _Runner) else None
        self.meta = None
        self._check = None
        self._frame_shape = None
        if self.runner is not None:
            if state_shape is not None:
                raise ValueError("Stream: a runner's state shape comes from its metadata; pass no state_shape.")
            inputs = self.runner.inputs
            self.meta = self.runner.meta
            self._check = self.runner.check_labels
            self._frame_shape = tuple(inputs["frame"]["shape"][1:])
            frame_dtype = inputs["frame"]["dtype"]
            if "state" in inputs:
                state_shape, state_dtype = inputs["state"]["shape"], inputs["state"]["dtype"]
            step = self.runner.run
        elif not callable(step):
            raise TypeError(f"Stream: step must be a runner or a callable(**inputs) -> dict, got {type(step).__name__}.")
        self._run = step
        self.frame_dtype = np.dtype(frame_dtype)
        self.state = None if state_shape is None else np.zeros([int(d) for d in state_shape], np.dtype(state_dtype))
        self._reset = True

    @classmethod
    def open(cls, path, threads=2, delegate=None, accelerator="cpu", allow_unverified=False):
        """The stream of an exported .tflite or .onnx model, checked against its metadata (`load_runner`; ModelError)."""
        runner, _ = load_runner(path, threads, delegate, accelerator, allow_unverified=allow_unverified)
        return cls(runner)

    @property
    def streaming(self):
        """True if the model carries a state (an STT step), False for a per-frame model."""
        return self.state is not None

    def reset(self):
        """Forget the past: the next frame starts a new stream.

        The state array is kept: a reset step ignores its contents (the first-frame policy fills it from the frame).
        """
        self._reset = True

    def step_inputs(self, frame):
        """The {frame, state, reset} inputs the next step gets for `frame` [H, W, 3] (or [1, H, W, 3]); runs nothing."""
        if self._run is None:
            raise ValueError("Stream is closed.")
        frame = np.asarray(frame)
        if frame.ndim == 4 and frame.shape[0] == 1:
            frame = frame[0]
        if frame.ndim != 3 or frame.shape[-1] != 3:
            raise ValueError(f"Expected a frame [H, W, 3] or [1, H, W, 3], got shape {frame.shape}.")
        if self._frame_shape is not None and frame.shape != self._frame_shape:
            raise ValueError(f"Frame is {list(frame.shape)} but the model takes {list(self._frame_shape)} "
                             "(letterbox it to the model's input size).")
        return step_inputs(frame, self.state, self._reset, self.frame_dtype)

    def run(self, frame):
        """One step on `frame`: (the inputs sent, the step's outputs {name: array}, batch dimension kept).

        The state moves on to the step's `next_state`; `step` is this without the bookkeeping.
        """
        inputs = self.step_inputs(frame)
        outputs = self._run(**inputs)
        if self.state is not None:
            if "next_state" not in outputs:
                raise ModelError(f"the step returned no next_state (it returned {sorted(outputs)}).")
            self.state = np.asarray(outputs["next_state"], self.state.dtype)
        self._reset = False
        return inputs, outputs

    def step(self, frame, return_labels=False):
        """frame [H, W, 3] (or [1, H, W, 3]) uint8 in [0, 255] -> float32 logits [H, W, C] (same rank as the frame).

        With `return_labels=True`, the class index per pixel instead (int32 [H, W]: the model's
        `labels` output, or the argmax of its logits). A model exported with labels only
        answers `return_labels=True` alone.
        """
        if not return_labels and self.meta is not None and "logits" not in self.meta["outputs"]:
            raise ValueError("This model outputs labels only (no logits): call step(frame, return_labels=True).")
        single = np.ndim(frame) == 3
        _, outputs = self.run(frame)
        if return_labels:
            result = labels_of(outputs)
            if self._check is not None:
                self._check(result)
        elif "logits" in outputs:
            result = np.asarray(outputs["logits"], np.float32)
        else:
            raise ValueError("This model outputs labels only (no logits): call step(frame, return_labels=True).")
        return result[0] if single else result

    def segment(self, frames):
        """Labels of every frame of a video: int32 [N, H, W] from frames [H, W, 3] (an array [N, H, W, 3] or
        any iterable), streamed as a new stream (the first frame resets it)."""
        self.reset()
        labels = [self.step(frame, return_labels=True) for frame in frames]
        if not labels:
            raise ValueError("segment() got no frames.")
        return np.stack(labels)

    def close(self):
        """Lets go of the model: the stream answers no more frames."""
        self._run = self.runner = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
