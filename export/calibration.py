"""Frames for int8 calibration and parity checks, drawn from the synthetic video by default.

A streaming step's inputs are (frame, state, reset); a realistic state is the one
the model itself produces while streaming a video, so calibration samples come
from running the (float) step over whole sequences, reset on each first frame.
"""

import numpy as np

from training.data.synthetic import SyntheticVideo

CALIBRATION_SEED = 2000  # not the training seeds (0..) nor the evaluation seed (1000)
EVALUATION_SEED = 1000  # stt-eval's held-out synthetic sequences


def synthetic_frames(height, width, num_sequences, frames_per_sequence, seed):
    """[(frames uint8 [N, H, W, 3], labels uint8 [N, H, W])] of synthetic sequences."""
    video = SyntheticVideo(num_sequences, frames_per_sequence, height, width, seed=seed)
    return [video.sequence(i) for i in range(num_sequences)]


def stream_inputs(step_fn, sequences, frame_dtype=np.uint8, state_shape=None):
    """Yields the (frame, state, reset) dict of every step of streaming `sequences` with `step_fn`."""
    for frames, _ in sequences:
        state = None if state_shape is None else np.zeros(state_shape, np.float32)
        for t, frame in enumerate(frames):
            inputs = {"frame": frame[None].astype(frame_dtype)}
            if state is None:  # a per-frame model
                yield inputs
                continue
            inputs.update(state=state, reset=np.array([1.0 if t == 0 else 0.0], np.float32))
            yield inputs
            state = np.asarray(step_fn(**inputs)["next_state"])


def representative_dataset(step_fn, height, width, state_shape, num_sequences=4, frames_per_sequence=8,
                           frame_dtype=np.uint8):
    """A converter `representative_dataset`: real streaming inputs from synthetic sequences."""
    sequences = synthetic_frames(height, width, num_sequences, frames_per_sequence, CALIBRATION_SEED)

    def generate():
        for inputs in stream_inputs(step_fn, sequences, frame_dtype, state_shape):
            yield inputs

    generate.description = (
        f"synthetic video, seed {CALIBRATION_SEED}: {num_sequences} sequences x {frames_per_sequence} frames "
        f"at {height}x{width}, states from the float model's own stream"
    )
    return generate
