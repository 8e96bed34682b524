"""Parity of exported models against Keras: the same frames, each model streaming its own state."""

import numpy as np

from stt_keras.training.metrics import MeanIoU


class ChecksumError(ValueError):
    """A model file whose SHA-256 is not the one recorded when it was exported."""


def verify_checksum(path, expected_sha256):
    """Raises ChecksumError unless the file at `path` has SHA-256 `expected_sha256` (a no-op if that is None)."""
    if expected_sha256 is None:
        return
    from stt_keras.export.atomic import sha256_file

    actual = sha256_file(path)
    if actual != expected_sha256:
        raise ChecksumError(f"{path}: SHA-256 {actual[:16]}... does not match the exported {expected_sha256[:16]}... "
                            "(the file was modified or damaged after export).")


class TFLiteStep:
    """Calls a .tflite step like the Keras step function: step(frame=, state=, reset=) -> dict."""

    def __init__(self, model_bytes_or_path, num_threads=2, expected_sha256=None):
        from ai_edge_litert.interpreter import Interpreter

        if isinstance(model_bytes_or_path, (bytes, bytearray)):
            if expected_sha256 is not None:
                import hashlib

                if hashlib.sha256(bytes(model_bytes_or_path)).hexdigest() != expected_sha256:
                    raise ChecksumError("TFLite model bytes do not match the expected SHA-256.")
            self.interpreter = Interpreter(model_content=bytes(model_bytes_or_path), num_threads=num_threads)
        else:
            verify_checksum(str(model_bytes_or_path), expected_sha256)
            self.interpreter = Interpreter(model_path=str(model_bytes_or_path), num_threads=num_threads)
        self.runner = self.interpreter.get_signature_runner()

    def __call__(self, **inputs):
        return self.runner(**inputs)


class OnnxStep:
    """Calls an .onnx step with onnxruntime (CPU) like the Keras step function."""

    def __init__(self, path, num_threads=2, expected_sha256=None):
        import onnxruntime

        verify_checksum(str(path), expected_sha256)
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = num_threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.outputs = [o.name for o in self.session.get_outputs()]

    def __call__(self, **inputs):
        return dict(zip(self.outputs, self.session.run(self.outputs, inputs)))


def labels_of(outputs):
    if "labels" in outputs:
        return np.asarray(outputs["labels"])
    return np.asarray(outputs["logits"]).argmax(-1).astype(np.int32)


def stream(step, sequences, state_shape, frame_dtype=np.uint8):
    """Streams every sequence through `step`; returns [(labels [N,H,W], logits [N,H,W,C] or None)].

    `state_shape` None: a per-frame model (frame in, no state).
    """
    results = []
    for frames, _ in sequences:
        state = None if state_shape is None else np.zeros(state_shape, np.float32)
        labels, logits = [], []
        for t, frame in enumerate(frames):
            inputs = {"frame": frame[None].astype(frame_dtype)}
            if state is not None:
                inputs.update(state=state, reset=np.array([1.0 if t == 0 else 0.0], np.float32))
            out = step(**inputs)
            if state is not None:
                state = np.asarray(out["next_state"], np.float32)
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
