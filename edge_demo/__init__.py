"""edge_demo: run an exported STT streaming step on a video with LiteRT or ONNX Runtime.

Needs only numpy, opencv and ai-edge-litert (or onnxruntime); never TensorFlow
or stt_keras, so it installs on a Jetson or any small Linux box.

    python -m stt_edge_demo --model exports/NAME/stt_int8.tflite --video in.mp4 --out overlay.mp4
"""
