"""The exported edge model in the browser (LiteRT.js on WebGPU, Wasm fallback): see server.py and docs/web_demo.md."""
