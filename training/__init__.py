"""Training: data pipelines, losses, metrics and the fit CLI for stt-keras."""

# stt_keras first: on a machine without a CUDA driver it restricts TensorFlow to the CPU before TensorFlow
# is imported, so the GPU probe does not log a failing "cuInit" on every run (stt_keras/devices.py).
import stt_keras  # noqa: E402,F401
