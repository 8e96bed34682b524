"""stt-keras: video semantic segmentation with the Sparse Temporal Transformer in Keras 3."""

from stt_keras import layers, metrics, models  # noqa: F401  (registers every serializable class)
from stt_keras.saving import load_model
from stt_keras.streaming import StreamingSegmenter

__all__ = ["StreamingSegmenter", "layers", "load_model", "metrics", "models"]
__version__ = "0.1.0"
