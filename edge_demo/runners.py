"""Model runners with one interface: runner(frame, state, reset) -> (labels [H, W] int32, next_state).

All read the metadata JSON written by stt-export next to the model and check
that the model's real inputs and outputs match it before the first frame. A
per-frame model (no `state` input) gets state None and returns None.
"""

import hashlib
import json
import os
import sys

import numpy as np


class ModelError(Exception):
    """The model, its metadata or its runtime is unusable (exit code 2)."""


def metadata_path(model_path):
    return os.path.splitext(model_path)[0] + ".json"


def load_metadata(model_path):
    path = metadata_path(model_path)
    if not os.path.isfile(path):
        raise ModelError(f"metadata not found: expected {path} next to the model (stt-export writes it).")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as error:
        raise ModelError(f"metadata {path} is not readable JSON: {error}")
    for key in ("input_size", "classes", "palette", "inputs", "outputs"):
        if key not in meta:
            raise ModelError(f"metadata {path} has no {key!r}.")
    if not {"labels", "logits"} & set(meta["outputs"]):
        raise ModelError(f"metadata {path}: outputs must include labels or logits.")
    if "state" in meta["inputs"] and "next_state" not in meta["outputs"]:
        raise ModelError(f"metadata {path}: a model with a state input must output next_state.")
    return meta


def _check(kind, name, expected, actual_shape, actual_dtype):
    shape = [int(d) for d in actual_shape]
    if list(expected["shape"]) != shape or np.dtype(expected["dtype"]) != np.dtype(actual_dtype):
        raise ModelError(
            f"model {kind} {name!r} is {shape} {np.dtype(actual_dtype).name} but the metadata says "
            f"{list(expected['shape'])} {expected['dtype']}.")


class _Runner:
    def __init__(self, meta):
        self.meta = meta
        self.inputs = meta["inputs"]
        self.output_name = "labels" if "labels" in meta["outputs"] else "logits"
        self.frame_dtype = np.dtype(self.inputs["frame"]["dtype"])

    def initial_state(self):
        if "state" not in self.inputs:
            return None  # a per-frame model
        return np.zeros(self.inputs["state"]["shape"], np.dtype(self.inputs["state"]["dtype"]))

    def __call__(self, frame_rgb, state, reset):
        inputs = {"frame": frame_rgb[None].astype(self.frame_dtype)}
        if "state" in self.inputs:
            inputs.update(state=state, reset=np.array([1.0 if reset else 0.0], np.float32))
        out = self._run(**inputs)
        result = np.asarray(out[self.output_name])[0]
        labels = result if self.output_name == "labels" else result.argmax(-1)
        return labels.astype(np.int32), (np.asarray(out["next_state"]) if "next_state" in out else None)


class LiteRTRunner(_Runner):
    """LiteRT interpreter through the model's serving_default signature."""

    def __init__(self, path, meta, threads=2, delegate=None):
        super().__init__(meta)
        try:
            from ai_edge_litert.interpreter import Interpreter, load_delegate
        except ImportError:
            raise ModelError("ai-edge-litert is not installed: pip install ai-edge-litert")
        delegates = []
        if delegate:
            try:
                delegates.append(load_delegate(delegate))
            except (ValueError, OSError, RuntimeError) as error:
                raise ModelError(f"cannot load delegate {delegate}: {error}")
        try:
            # num_threads=None would mean 1 thread in LiteRT: always pass it.
            self.interpreter = Interpreter(model_path=path, num_threads=threads, experimental_delegates=delegates)
            self.runner = self.interpreter.get_signature_runner()
        except (ValueError, RuntimeError) as error:
            raise ModelError(f"cannot load {path} with LiteRT: {error}")
        details_in = self.runner.get_input_details()
        details_out = self.runner.get_output_details()
        for name, spec in meta["inputs"].items():
            if name not in details_in:
                raise ModelError(f"model has no input {name!r} (it has {sorted(details_in)}).")
            _check("input", name, spec, details_in[name]["shape"], details_in[name]["dtype"])
        for name, spec in meta["outputs"].items():
            if name not in details_out:
                raise ModelError(f"model has no output {name!r} (it has {sorted(details_out)}).")
            _check("output", name, spec, details_out[name]["shape"], details_out[name]["dtype"])

    def _run(self, **inputs):
        return self.runner(**inputs)


class LiteRTGpuRunner(_Runner):
    """LiteRT's GPU accelerator (CompiledModel + HardwareAccelerator.GPU), see edge_demo/litert_gpu.py.

    Ops the GPU refuses run on the CPU (LiteRT's fallback); `fully_accelerated` and
    `op_split` say whether any did.
    """

    def __init__(self, path, meta, threads=2):
        super().__init__(meta)
        try:
            from . import litert_gpu
        except ImportError:
            raise ModelError("ai-edge-litert is not installed: pip install ai-edge-litert")
        reason = litert_gpu.software_vulkan_env()
        if reason:
            raise ModelError(f"GPU accelerator unavailable: {reason}")
        try:
            self.model = litert_gpu.GpuModel(path, cpu_fallback=True, threads=threads)
        except (RuntimeError, ValueError) as error:
            raise ModelError(f"cannot compile {path} for LiteRT's GPU accelerator: {str(error).strip()[-400:]}")
        self.fully_accelerated = bool(self.model.fully_accelerated and not self.model.op_split)
        self.op_split = self.model.op_split
        self.refused = self.model.refused
        for kind, details, specs in (("input", self.model.input_details, meta["inputs"]),
                                     ("output", self.model.output_details, meta["outputs"])):
            for name, spec in specs.items():
                if name not in details:
                    raise ModelError(f"model has no {kind} {name!r} (it has {sorted(details)}).")
                _check(kind, name, spec, details[name]["shape"], details[name]["dtype"])

    def describe(self):
        if self.model.validation_errors:
            return f"GPU accelerator: WebGPU validation errors, results are unreliable: {self.model.validation_errors[0][:200]}"
        if self.fully_accelerated:
            return "GPU accelerator: fully accelerated (no op on the CPU)"
        gpu, cpu = self.op_split or ("?", "?")
        refused = ", ".join(f"{k} x{len(v)} ({v[0]})" for k, v in self.refused.items())
        return f"GPU accelerator: NOT fully accelerated: {gpu} ops on the GPU, {cpu} on the CPU; refused: {refused}"

    def _run(self, **inputs):
        return self.model(**inputs)


class OnnxRunner(_Runner):
    """ONNX Runtime with the best available provider: TensorRT, CUDA, then CPU."""

    PREFERRED = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")

    def __init__(self, path, meta, threads=2):
        super().__init__(meta)
        try:
            import onnxruntime
        except ImportError:
            raise ModelError("onnxruntime is not installed: pip install onnxruntime (onnxruntime-gpu on a Jetson)")
        available = onnxruntime.get_available_providers()
        self.providers = [p for p in self.PREFERRED if p in available] or available
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(path, options, providers=self.providers)
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load {path} with ONNX Runtime: {error}")
        types = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64"}
        for kind, items, specs in (("input", self.session.get_inputs(), meta["inputs"]),
                                   ("output", self.session.get_outputs(), meta["outputs"])):
            found = {i.name: i for i in items}
            for name, spec in specs.items():
                if name not in found:
                    raise ModelError(f"model has no {kind} {name!r} (it has {sorted(found)}).")
                _check(kind, name, spec, found[name].shape, types.get(found[name].type, found[name].type))
        self.output_names = [o.name for o in self.session.get_outputs()]

    def _run(self, **inputs):
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))


def verify_checksum(path, meta):
    """Checks the model file against the SHA-256 stt-export recorded in its metadata (ModelError if it differs)."""
    expected = meta.get("sha256")
    if expected is None:
        print(f"edge_demo: warning: metadata {metadata_path(path)} records no sha256; {path} cannot be verified "
              "(re-export it with a current stt-export).", file=sys.stderr)
        return
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    if digest.hexdigest() != expected:
        raise ModelError(f"model {path} does not match the SHA-256 in {metadata_path(path)}: "
                         "the file was modified or damaged after export; re-export it.")


def load_runner(path, threads=2, delegate=None, accelerator="cpu"):
    """(runner, metadata) for a .tflite or .onnx model, verified against its metadata's checksum;
    accelerator "gpu": LiteRT's GPU accelerator."""
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path}")
    meta = load_metadata(path)
    verify_checksum(path, meta)
    if accelerator == "gpu":
        if not path.endswith(".tflite"):
            raise ModelError("--accelerator gpu runs .tflite models (LiteRT); for ONNX use onnxruntime's providers.")
        if delegate:
            raise ModelError("--accelerator gpu and --delegate exclude each other.")
        return LiteRTGpuRunner(path, meta, threads), meta
    if path.endswith(".onnx"):
        if delegate:
            raise ModelError("--delegate applies to .tflite models; ONNX Runtime picks its execution provider itself.")
        return OnnxRunner(path, meta, threads), meta
    if path.endswith(".tflite"):
        return LiteRTRunner(path, meta, threads, delegate), meta
    raise ModelError(f"unknown model type {path!r}: expected .tflite or .onnx")
