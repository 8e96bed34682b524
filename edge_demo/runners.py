"""Model runners: an exported step on LiteRT or ONNX Runtime, runner(frame, state, reset) -> (labels [H, W] int32, next_state).

A runner is the stateless step (the state goes in, the next state comes out);
`stt_edge_demo.stream.Stream` carries the state from frame to frame for you. All
read the metadata JSON written by stt-export next to the model and check that the
model's real inputs and outputs match it before the first frame. A per-frame model
(no `state` input) gets state None and returns None.
"""

import hashlib
import json
import os
import sys

import numpy as np


class ModelError(Exception):
    """The model, its metadata or its runtime is unusable (exit code 2)."""


class ChecksumError(ModelError, ValueError):
    """A model file whose SHA-256 is not the one recorded when it was exported."""


def check_sha256(data, expected, name, recorded_in):
    """The one checksum rule of the project's model files: ChecksumError unless `data` (the bytes that
    will be used) has SHA-256 `expected` (hex, any case). `name` names the file, `recorded_in` says
    where the SHA-256 comes from ("in its metadata file", "recorded at export")."""
    if not isinstance(expected, str) or hashlib.sha256(data).hexdigest() != expected.lower():
        raise ChecksumError(f"model {name} does not match the SHA-256 {recorded_in}: "
                            "the file was modified or damaged after export; re-export it.")


def metadata_path(model_path):
    return os.path.splitext(model_path)[0] + ".json"


def load_metadata(model_path):
    """The metadata dict stt-export wrote next to `model_path`, checked for what the demos rely on (ModelError)."""
    path = metadata_path(model_path)
    if not os.path.isfile(path):
        raise ModelError(f"metadata not found: expected {path} next to the model (stt-export writes it).")
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as error:
        raise ModelError(f"metadata {path} is not readable JSON: {error}")
    if not isinstance(meta, dict):
        raise ModelError(f"metadata {path} is not a JSON object.")
    for key in ("input_size", "classes", "palette", "inputs", "outputs"):
        if key not in meta:
            raise ModelError(f"metadata {path} has no {key!r}.")
    check_metadata(meta, path)
    if not {"labels", "logits"} & set(meta["outputs"]):
        raise ModelError(f"metadata {path}: outputs must include labels or logits.")
    if "state" in meta["inputs"] and "next_state" not in meta["outputs"]:
        raise ModelError(f"metadata {path}: a model with a state input must output next_state.")
    return meta


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_metadata(meta, path):
    """ModelError (one line naming `path`) unless classes, palette, input size and tensor specs are usable."""
    size = meta["input_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0 for v in size)):
        raise ModelError(f"metadata {path}: input_size must be [height, width] of positive integers, got {size!r:.80}.")
    classes, palette = meta["classes"], meta["palette"]
    if not isinstance(classes, list) or not classes or len(classes) > 256:
        raise ModelError(f"metadata {path}: classes must be a list of 1 to 256 names, got {classes!r:.80}.")
    if not isinstance(palette, list) or len(palette) != len(classes):
        count = len(palette) if isinstance(palette, list) else type(palette).__name__
        raise ModelError(f"metadata {path}: the palette has {count} colours for {len(classes)} classes "
                         "(one RGB colour per class).")
    for index, colour in enumerate(palette):
        if not (isinstance(colour, list) and len(colour) == 3 and all(_is_int(c) and 0 <= c <= 255 for c in colour)):
            raise ModelError(f"metadata {path}: palette colour {index} is {colour!r:.60}, not [r, g, b] in 0..255.")
    for kind in ("inputs", "outputs"):
        specs = meta[kind]
        if not isinstance(specs, dict) or not all(
                isinstance(s, dict) and isinstance(s.get("shape"), list) and all(_is_int(d) for d in s["shape"])
                and isinstance(s.get("dtype"), str) for s in specs.values()):
            raise ModelError(f"metadata {path}: {kind} must map names to {{shape: [ints], dtype: str}}.")
    frame = meta["inputs"].get("frame")
    if frame is None:
        raise ModelError(f"metadata {path}: inputs have no 'frame'.")
    if frame["shape"][1:3] != size:
        raise ModelError(f"metadata {path}: input_size {size} but the frame input is {frame['shape']}.")
    logits = meta["outputs"].get("logits")
    if logits is not None and logits["shape"][-1:] != [len(classes)]:
        raise ModelError(f"metadata {path} names {len(classes)} classes but the logits output has "
                         f"{logits['shape'][-1:] or '?'}.")


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
    """The {frame, state, reset} inputs of an exported step (docs/models.md, "The streaming state contract").

    frame_rgb [H, W, 3]; state None for a per-frame model (then only `frame`).
    """
    inputs = {"frame": frame_rgb[None].astype(frame_dtype)}
    if state is not None:
        inputs.update(state=state, reset=np.array([1.0 if reset else 0.0], np.float32))
    return inputs


def labels_of(outputs):
    """The labels of a step's outputs: its `labels`, else the argmax of its `logits` (int32, batch kept)."""
    if "labels" in outputs:
        return np.asarray(outputs["labels"]).astype(np.int32, copy=False)
    return np.asarray(outputs["logits"]).argmax(-1).astype(np.int32)


def _argmax_classes(interpreter, tensor):
    """The class count behind labels output `tensor`, read from the graph, or None if not recognised.

    Follows casts, reshapes and the subtraction of stt-export's on-device argmax (`classes -
    max(hits)`, export/step.py) back to the ARG_MAX or REDUCE_MAX over the class axis.
    """
    try:
        ops = interpreter._get_ops_details()
        shapes = {d["index"]: d["shape"] for d in interpreter.get_tensor_details()}
    except Exception:  # a LiteRT without these introspection calls: the per-frame check remains
        return None
    producer = {int(out): op for op in ops for out in op["outputs"]}
    for _ in range(8):
        op = producer.get(int(tensor))
        if op is None:
            return None
        inputs = [int(i) for i in op["inputs"] if int(i) >= 0]
        if op["op_name"] in ("ARG_MAX", "REDUCE_MAX"):
            shape = shapes.get(inputs[0])
            return int(shape[-1]) if shape is not None and len(shape) else None
        if op["op_name"] in ("CAST", "RESHAPE", "SQUEEZE"):
            tensor = inputs[0]
        elif op["op_name"] == "SUB":  # the per-pixel operand, not the constant class count
            tensor = max(inputs, key=lambda i: len(shapes.get(i, ())))
        else:
            return None
    return None


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

    def __init__(self, path, threads=2, providers=("CPUExecutionProvider",), custom_ops_libraries=()):
        import onnxruntime

        available = onnxruntime.get_available_providers()
        self.providers = [p for p in providers if p in available] or available
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        for library in custom_ops_libraries:  # compiled custom ops the file's nodes need
            options.register_custom_ops_library(str(library))
        source = bytes(path) if isinstance(path, (bytes, bytearray)) else str(path)  # the verified bytes, or a file
        self.session = onnxruntime.InferenceSession(source, options, providers=self.providers)
        self.output_names = [o.name for o in self.session.get_outputs()]

    def io_details(self):
        """({input name: (shape, dtype)}, {output name: (shape, dtype)})."""
        return tuple({i.name: (i.shape, self.TYPES.get(i.type, i.type)) for i in items}
                     for items in (self.session.get_inputs(), self.session.get_outputs()))

    def __call__(self, **inputs):
        return dict(zip(self.output_names, self.session.run(self.output_names, inputs)))


class _Runner:
    def __init__(self, meta, name="the model"):
        self.meta = meta
        self.name = name
        self.num_classes = len(meta["classes"])
        self.inputs = meta["inputs"]
        self.output_name = "labels" if "labels" in meta["outputs"] else "logits"
        self.frame_dtype = np.dtype(self.inputs["frame"]["dtype"])

    def initial_state(self):
        if "state" not in self.inputs:
            return None  # a per-frame model
        return np.zeros(self.inputs["state"]["shape"], np.dtype(self.inputs["state"]["dtype"]))

    def run(self, **inputs):
        """The step on its named inputs ({frame, state, reset}: `step_inputs`) -> {output name: array}."""
        return self._run(**inputs)

    def check_labels(self, labels):
        """ModelError if a label lies outside the classes the metadata names."""
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            bad = int(labels.max() if labels.max() >= self.num_classes else labels.min())
            raise ModelError(f"{self.name} output label {bad} but its metadata names {self.num_classes} classes "
                             f"({metadata_path(self.name)}).")

    def __call__(self, frame_rgb, state, reset):
        """One stateless step: (labels [H, W] int32, next_state or None); `Stream` carries the state instead."""
        out = self.run(**step_inputs(frame_rgb, state if "state" in self.inputs else None, reset, self.frame_dtype))
        labels = labels_of(out)[0]
        self.check_labels(labels)
        return labels, (np.asarray(out["next_state"]) if "next_state" in out else None)


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

    def __init__(self, path, meta, threads=2, delegate=None, name=None):
        super().__init__(meta, name or str(path))
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
            raise ModelError(f"cannot load {self.name} with LiteRT: {error}")
        self.interpreter = self.session.interpreter
        _check_io(meta, *self.session.io_details())
        if self.output_name == "labels":
            classes = _argmax_classes(self.interpreter, self.session.runner.get_output_details()["labels"]["index"])
            if classes is not None and classes != self.num_classes:
                raise ModelError(f"{self.name} computes its labels over {classes} classes but its metadata "
                                 f"{metadata_path(self.name)} names {self.num_classes}.")

    def _run(self, **inputs):
        return self.session(**inputs)


class LiteRTGpuRunner(_Runner):
    """LiteRT's GPU accelerator (CompiledModel + HardwareAccelerator.GPU), see edge_demo/litert_gpu.py.

    Ops the GPU refuses run on the CPU (LiteRT's fallback); `fully_accelerated` and
    `op_split` say whether any did.
    """

    def __init__(self, path, meta, threads=2, name=None):
        super().__init__(meta, name or str(path))
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
            raise ModelError(f"cannot compile {self.name} for LiteRT's GPU accelerator: {str(error).strip()[-400:]}")
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

    def __init__(self, path, meta, threads=2, name=None):
        super().__init__(meta, name or str(path))
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            raise ModelError("onnxruntime is not installed: pip install onnxruntime (onnxruntime-gpu on a Jetson)")
        try:
            self.session = OnnxSession(path, threads, self.PREFERRED)
        except Exception as error:  # onnxruntime raises its own exception types
            raise ModelError(f"cannot load {self.name} with ONNX Runtime: {error}")
        self.providers = self.session.providers
        _check_io(meta, *self.session.io_details())

    def _run(self, **inputs):
        return self.session(**inputs)


def verify_checksum(path, expected_sha256, recorded_in="recorded at export"):
    """The bytes of the model file at `path`, checked against `expected_sha256` (hex, any case): the
    project's one file check (the edge demo, the exporter's parity runs). ChecksumError if they
    differ; None checks nothing. The bytes returned are the ones hashed: use them, not the file, so
    that a file changed afterwards is never used. `recorded_in` says where the SHA-256 comes from.

    (The older call `verify_checksum(path, metadata_dict, allow_unverified)` still works, with a
    DeprecationWarning: it is `read_verified`.)
    """
    if isinstance(expected_sha256, dict):
        import warnings

        warnings.warn("verify_checksum(path, metadata) is deprecated: use read_verified(path, metadata) "
                      "or verify_checksum(path, sha256).", DeprecationWarning, stacklevel=2)
        return read_verified(path, expected_sha256, recorded_in if isinstance(recorded_in, bool) else False)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        raise ModelError(f"cannot read model {path}: {error.strerror or error}")
    if expected_sha256 is not None:
        check_sha256(data, expected_sha256, path, recorded_in)
    return data


def read_verified(path, meta, allow_unverified=False):
    """The bytes of the model file, checked (`verify_checksum`) against the SHA-256 stt-export recorded
    in its metadata.

    ModelError if they differ, or if the metadata records no SHA-256 (unless `allow_unverified`,
    for hand-made files: then a warning).
    """
    expected = meta.get("sha256")
    if expected is None:
        data = verify_checksum(path, None)
        if not allow_unverified:
            raise ModelError(f"metadata {metadata_path(path)} records no sha256, so {path} cannot be verified: "
                             "re-export it with stt-export, or pass --allow-unverified for a hand-made file.")
        print(f"edge_demo: warning: {path} is not verified (--allow-unverified: its metadata records no sha256).",
              file=sys.stderr)
        return data
    return verify_checksum(path, expected, f"in {metadata_path(path)}")


def load_runner(path, threads=2, delegate=None, accelerator="cpu", allow_unverified=False):
    """(runner, metadata) for a .tflite or .onnx model, verified against its metadata's checksum
    (a metadata without one is refused unless `allow_unverified`); accelerator "gpu": LiteRT's GPU
    accelerator. The runtime loads the bytes that were verified, not the file a second time."""
    if not os.path.isfile(path):
        raise ModelError(f"model file not found: {path}")
    meta = load_metadata(path)
    data = read_verified(path, meta, allow_unverified)
    if accelerator == "gpu":
        if not path.endswith(".tflite"):
            raise ModelError("--accelerator gpu runs .tflite models (LiteRT); for ONNX use onnxruntime's providers.")
        if delegate:
            raise ModelError("--accelerator gpu and --delegate exclude each other.")
        return LiteRTGpuRunner(data, meta, threads, name=path), meta
    if path.endswith(".onnx"):
        if delegate:
            raise ModelError("--delegate applies to .tflite models; ONNX Runtime picks its execution provider itself.")
        return OnnxRunner(data, meta, threads, name=path), meta
    if path.endswith(".tflite"):
        return LiteRTRunner(data, meta, threads, delegate, name=path), meta
    raise ModelError(f"unknown model type {path!r}: expected .tflite or .onnx")
