"""Export of trained STT models: SavedModel, TFLite (LiteRT), ONNX, with parity and GPU-delegate checks."""
