"""stt-keras: video semantic segmentation with the Sparse Temporal Transformer in Keras 3."""

# Importing the library leaves the process's environment alone (TensorFlow's devices and log level are the
# application's choice): the commands set them up before TensorFlow loads (stt_keras_cli, stt_keras/devices.py).
from stt_keras.utils import errors, faults, fileio, progress, sizes  # noqa: F401
from stt_keras.utils.old_names import keep_old_names as _keep_old_names

# The utilities' earlier module names are the same module objects (import stt_keras.fileio still works).
_keep_old_names(__name__, f"{__name__}.utils", ("errors", "faults", "fileio", "progress", "sizes"))

from stt_keras import layers, metrics, models, optimizers  # noqa: F401  (registers every serializable class)
from stt_keras.saving import load_model
from stt_keras.streaming import StreamingSegmenter
from stt_keras.version import __version__

__all__ = ["StreamingSegmenter", "layers", "load_model", "metrics", "models"]
