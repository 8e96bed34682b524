"""stt-keras: video semantic segmentation with the Sparse Temporal Transformer in Keras 3."""

# First, before Keras imports TensorFlow: on a machine without a CUDA driver, TensorFlow is told to use the
# CPU only, so its GPU probe does not log a failing "cuInit" on every run (stt_keras/devices.py).
from stt_keras.devices import cpu_only_without_cuda_driver as _cpu_only

_cpu_only()

from stt_keras.utils import errors, faults, fileio, progress, sizes  # noqa: E402,F401
from stt_keras.utils.old_names import keep_old_names as _keep_old_names  # noqa: E402

# The utilities' earlier module names are the same module objects (import stt_keras.fileio still works).
_keep_old_names(__name__, f"{__name__}.utils", ("errors", "faults", "fileio", "progress", "sizes"))

from stt_keras import layers, metrics, models, optimizers  # noqa: F401  (registers every serializable class)
from stt_keras.saving import load_model
from stt_keras.streaming import StreamingSegmenter
from stt_keras.version import __version__

__all__ = ["StreamingSegmenter", "layers", "load_model", "metrics", "models"]
