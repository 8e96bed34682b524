"""Export of trained STT models: SavedModel, TFLite (LiteRT), ONNX, with parity and GPU-delegate checks."""

# stt_keras first: on a machine without a CUDA driver it restricts TensorFlow to the CPU before TensorFlow
# is imported, so the GPU probe does not log a failing "cuInit" on every run (stt_keras/devices.py).
import stt_keras  # noqa: E402,F401
