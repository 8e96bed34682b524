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


def _check_io(meta, inputs, outputs):
    """ModelError unless the model's {name: (shape, dtype)} inputs and outputs hold the metadata's."""
    for kind, found, specs in (("input", inputs, meta["inputs"]), ("output", outputs, meta["outputs"])):
        for name, spec in specs.items():
            if name not in found:
                raise ModelError(f"model has no {kind} {name!r} (it has {sorted(found)}).")
            _check(kind, name, spec, *found[name])


def step_inputs(frame_rgb, state, reset, frame_dtype):
    """The {frame, state, reset} inputs of an exported step (docs/export.md, "The streaming state contract").

    frame_rgb [H, W, 3]; state None for a per-frame model (then only `frame`).
    """
    inputs = {"frame": frame_rgb[None].astype(frame_dtype)}
    if state is not None:
        inputs.update(state=state, reset=np.array([1.0 if reset else 0.0], np.float32))
    return inputs


class LiteRTSession:
    """A .tflite file or its bytes through its serving signature: session(**inputs) -> {name: array}.

    The plain runtime wrapper the runners below and the exporter's parity checks share.
    """

    def __init__(self, model, threads=2, delegates=()):
        from ai_edge_litert.interpreter import Interpreter

        source = {"model_content": bytes(model)} if isinstance(model, (bytes, bytearray)) else {"model_path": str(model)}
        # num_threads=None would mean 1 thread in LiteRT: always pass it.
        self.interpreter = Interpreter(**source, num_threads=threads, experimental_delegates=list(delegates))
        self.runner = self.interpreter.get_signature_runner()

    def io_details(self):
        """({input name: (shape, dtype)}, {output name: (shape, dtype)})."""
        return tuple({name: (d["shape"], d["dtype"]) for name, d in details.items()}
                     for details in (self.runner.get_input_details(), self.runner.get_output_details()))

    def __call__(self, **inputs):
        return self.runner(**inputs)


class OnnxSession:
    """An .onnx file with ONNX Runtime: session(**inputs) -> {name: array}, on the first available provider listed."""

    TYPES = {"tensor(float)": "float32", "tensor(uint8)": "uint8", "tensor(int32)": "int32", "tensor(int64)": "int64"}

    def __init__(self, path, threads=2, providers=("CPUExecutionProvider",)):
        import onnxruntime

        available = onnxruntime.get_available_providers()
        self.providers = [p for p in providers if p in available] or available
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = onnxruntime.InferenceSession(str(path), options, providers=self.providers)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def io_details(self):
        """({input name: (shape, dtype)}, {output name: (shape, dtype)})."""
        return tuple({i.name: (i.shape, self.TYPES.get(i.type, i.type)) for i in items}
                     for items in (self.session.get_inputs(), self.session.get_outputs()))

    def __call__(self, **inputs):
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))


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
        out = self._run(**step_inputs(frame_rgb, state if "state" in self.inputs else None, reset, self.frame_dtype))
        result = np.asarray(out[self.output_name])[0]
        labels = result if self.output_name == "labels" else result.argmax(-1)
        return labels.astype(np.int32), (np.asarray(out["next_state"]) if "next_state" in out else None)


def _check_delegate_library(library):
    """ModelError unless `library` loads and has LiteRT's external delegate entry points.

    Checked before `load_delegate`: a `Delegate` whose library fails to load is left half made,
    and its `__del__` then raises an AttributeError that Python can only print as a warning.
    """
    import ctypes

    try:
        handle = ctypes.CDLL(library)
    except OSError as error:
        raise ModelError(f"cannot load delegate {library}: {error}")
    missing = [name for name in ("tflite_plugin_create_delegate", "tflite_plugin_destroy_delegate")
               if not hasattr(handle, name)]
    if missing:
        raise ModelError(f"cannot load delegate {library}: not a LiteRT external delegate (no {', '.join(missing)})")


class LiteRTRunner(_Runner):
    """LiteRT interpreter through the model's serving_default signature."""

    def __init__(self, path, meta, threads=2, delegate=None):
        super().__init__(meta)
        try:
            from ai_edge_litert.interpreter import load_delegate
        except ImportError:
            raise ModelError("ai-edge-litert is not installed: pip install ai-edge-litert")
        delegates = []
        if delegate:
            _check_delegate_library(delegate)
            try:
                delegates.append(load_delegate(delegate))
            except (ValueError, OSError, RuntimeError) as error:
                raise ModelError(f"cannot load delegate {delegate}: {error}")
        try:
            self.session = LiteRTSession(path, threads, delegates)
        except (ValueError, RuntimeError) as error:
            raise ModelError(f"cannot load {path} with LiteRT: {error}")
        self.interpreter = self.session.interpreter
        _check_io(meta, *self.session.io_details())

    def _run(self, **inputs):
        return self.session(**inputs)


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
        _check_io(meta, *({name: (d["shape"], d["dtype"]) for name, d in details.items()}
                          for details in (self.model.input_details, self.model.output_details)))

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
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ModelError("onnxruntime is not installed: pip install onnxruntime (onnxruntime-gpu on a Jetson)")
        try:
            self.session = OnnxSession(path, threads, self.PREFERRED)
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load {path} with ONNX Runtime: {error}")
        self.providers = self.session.providers
        _check_io(meta, *self.session.io_details())

    def _run(self, **inputs):
        return self.session(**inputs)


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
