"""stt-keras: video semantic segmentation with the Sparse Temporal Transformer in Keras 3."""

from stt_keras.streaming import StreamingSegmenter

__all__ = ["StreamingSegmenter"]
__version__ = "0.1.0"
