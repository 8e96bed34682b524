"""Parity of exported models against Keras: the same frames, each model streaming its own state."""

import numpy as np

from stt_edge_demo.runners import (ChecksumError, LiteRTSession, OnnxSession, check_sha256, labels_of,  # noqa: F401
                                  verify_checksum)
from stt_edge_demo.stream import Stream
from stt_keras.metrics import MeanIoU

# ChecksumError (a ValueError) and verify_checksum: the edge demo's, so that the file check and its message
# live once.


class TFLiteStep(LiteRTSession):
    """Calls a .tflite step (file or bytes) like the Keras step function: step(frame=, state=, reset=) -> dict.

    The edge demo's `LiteRTSession` after a checksum check (ChecksumError).
    """

    def __init__(self, model_bytes_or_path, num_threads=2, expected_sha256=None):
        if isinstance(model_bytes_or_path, (bytes, bytearray)):
            if expected_sha256 is not None:
                check_sha256(bytes(model_bytes_or_path), expected_sha256, "(TFLite bytes)", "recorded at export")
        elif expected_sha256 is not None:  # the interpreter gets the bytes that were verified, not the file again
            model_bytes_or_path = verify_checksum(str(model_bytes_or_path), expected_sha256)
        super().__init__(model_bytes_or_path, num_threads)


class OnnxStep(OnnxSession):
    """Calls an .onnx step with onnxruntime (CPU) like the Keras step function (the edge demo's `OnnxSession`)."""

    def __init__(self, path, num_threads=2, expected_sha256=None):
        verify_checksum(str(path), expected_sha256)
        super().__init__(path, num_threads, providers=("CPUExecutionProvider",))


def _inputs_only(**inputs):
    raise AssertionError("a per-frame model's stream without a step gives inputs only")


def stream_sequence(step, frames, state_shape, frame_dtype=np.uint8):
    """Streams one sequence through an exported step; yields (inputs, outputs) of every frame.

    The edge demo's `Stream` over `frames` (parity, int8 calibration, the GPU check):
    zeros and reset 1.0 on the first frame, then each step's `next_state`
    (docs/models.md, "The streaming state contract").

    Args:
        step: callable(**inputs) -> {name: array} (a Keras step function,
            TFLiteStep, OnnxStep, ...). None only for a per-frame model, where
            nothing needs running to make the next inputs: outputs are then None.
        frames: [N, H, W, 3] frames.
        state_shape: the packed state's shape (`model.state_shape(H, W,
            packed=True)`), or None for a per-frame model (frame in, no state).
        frame_dtype: the step's frame dtype.
    """
    if step is None and state_shape is not None:
        raise ValueError("stream_sequence: a streaming model's next state comes from running `step`; pass it.")
    stream = Stream(step if step is not None else _inputs_only, state_shape, frame_dtype)
    for frame in frames:
        yield (stream.step_inputs(frame), None) if step is None else stream.run(frame)


def stream(step, sequences, state_shape, frame_dtype=np.uint8):
    """Streams every sequence through `step`; returns [(labels [N,H,W], logits [N,H,W,C] or None)].

    `state_shape` None: a per-frame model (frame in, no state).
    """
    results = []
    for frames, _ in sequences:
        labels, logits = [], []
        for _, out in stream_sequence(step, frames, state_shape, frame_dtype):
            labels.append(labels_of(out)[0])
            logits.append(np.asarray(out["logits"])[0] if "logits" in out else None)
        results.append((np.stack(labels), None if logits[0] is None else np.stack(logits)))
    return results


def miou(results, sequences, num_classes):
    metric = MeanIoU(num_classes)
    for (labels, _), (_, truth) in zip(results, sequences):
        metric.update_state(truth.astype(np.int64), labels)
    return float(metric.result())


def compare(reference, candidate, sequences, num_classes):
    """Parity numbers of a candidate stream against the reference stream (both from `stream`)."""
    agree = np.mean(np.concatenate([(a[0] == b[0]).reshape(-1) for a, b in zip(reference, candidate)]))
    report = {
        "label_agreement": float(agree),
        "miou_reference": miou(reference, sequences, num_classes),
        "miou": miou(candidate, sequences, num_classes),
    }
    if reference[0][1] is not None and candidate[0][1] is not None and reference[0][1].shape == candidate[0][1].shape:
        diffs = [np.abs(a[1] - b[1]).max() for a, b in zip(reference, candidate)]
        scale = max(float(np.abs(a[1]).max()) for a in reference)
        report["logits_max_abs_diff"] = float(max(diffs))
        report["logits_max_abs"] = scale
    report["miou_drop_points"] = 100.0 * (report["miou_reference"] - report["miou"])
    return report
