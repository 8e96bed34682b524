"""One function per format: each writes its model file (and the file's metadata) and returns its report entry.

`export_savedmodel(job)`, `export_tflite(job, graph, file)`, `export_onnx(job, graph, file)`: `job` is
what every file of one export shares (`ExportJob`), `graph` one traced step function (`StepGraph`, a
form and an interface), `file` the `files.ExportedFile` to write. stt-export (export/cli.py) decides
what to write, with which data, and where; these functions write it.
"""

import dataclasses
import functools
import hashlib
import json
import os
import time

from stt_keras.export import calibration, onnx_export, parity, saved_model, step as step_lib, tflite
from stt_keras.export.atomic import sha256_file
from stt_keras.export.files import ExportedFile
from stt_keras.export.gpu_check import gpu_text


def int8_block_subscopes(float_head):
    """The STT block's sub-scopes an int8 export quantizes: its 1x1 convolutions (`gpu_step.STT_QUANTIZED`),
    none with float_head="decoder", the GPU setting (on LiteRT's GPU accelerator they cost agreement
    with the CPU: docs/gpu_accelerator.md)."""
    from stt_keras.export.gpu_step import STT_QUANTIZED

    return () if float_head == "decoder" else STT_QUANTIZED


def write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=float)


def counted(step, what, sequences):
    """`step` counting its calls on a progress line (parity runs of big models take minutes)."""
    from stt_keras.utils.progress import CountingStep, Progress

    return CountingStep(step, Progress(f"stt-export: parity, {what}", sum(len(f) for f, _ in sequences), "frames"))


@dataclasses.dataclass
class ExportJob:
    """What every file of one export shares: the model, the folder, the classes, the parity and calibration data.

    `reference`: the Keras step's outputs on `sequences`, which every file's parity is compared with.
    """

    model: object
    name: str  # the model's name in the metadata (its file name without extension)
    size: tuple
    folder: str  # where the files go (the atomic export's temporary folder)
    class_names: list
    palette: list  # an RGB colour per class
    sequences: list  # parity sequences: [(frames, labels)]
    parity_text: str
    miou_meaningful: bool  # else the parity entries carry no mIoU (the truth is not in the model's classes)
    threads: int
    gpu: object  # a gpu_check.GpuChecker
    float_head: object = 1  # tflite.convert's float_head for int8
    calibration_sequences: list = None  # int8 calibration segments, None: the synthetic video
    calibration_text: str = None
    calibration_count: int = 4  # --calibration-sequences / --calibration-frames for the synthetic video
    calibration_frames: int = 8
    reference: list = None

    @functools.cached_property
    def state_shape(self):
        """The packed streaming state's shape, `model.state_shape(H, W, packed=True)`; None for a per-frame model."""
        return list(self.model.state_shape(*self.size, packed=True)) if self.streaming else None

    @property
    def streaming(self):
        return self.model.stt is not None

    def path(self, name):
        return os.path.join(self.folder, *name.split("/"))

    def stream_reference(self):
        """Streams the parity sequences through the Keras step (default form, full interface): the reference."""
        fn = step_lib.make_step_function(self.model, *self.size, "default")
        self.reference = parity.stream(counted(fn, "Keras reference", self.sequences), self.sequences, self.state_shape)

    def check_parity(self, step, what, frame_dtype):
        """(outputs streamed by `step` on the parity sequences, their parity against the Keras reference)."""
        outputs = parity.stream(counted(step, what, self.sequences), self.sequences, self.state_shape, frame_dtype)
        return outputs, parity.compare(self.reference, outputs, self.sequences, self.model.num_classes)

    def finish(self, entry, file, graph, converter, **extra):
        """Drops a meaningless mIoU from `entry` and writes the file's metadata (.json beside it)."""
        if not self.miou_meaningful:
            for key in ("miou", "miou_reference", "miou_drop_points"):
                entry["parity"].pop(key, None)
        extra = {"converter": converter, "parity": entry["parity"], "parity_data": self.parity_text, **extra}
        meta = metadata(self.model, self.name, file, self.size, self.class_names, self.palette, graph, extra)
        if "gpu_accelerator" in entry:
            meta["gpu_accelerator"] = entry["gpu_accelerator"]
        write_json(self.path(file.metadata_name), meta)
        return entry


@dataclasses.dataclass
class StepGraph:
    """One step function (`step.make_step_function`) of a form and an interface, traced once for all its files."""

    form: str  # default, dense_masked, or frame (a per-frame model's one form, traced as "default")
    interface: str
    fn: object
    _frozen: object = None

    @classmethod
    def make(cls, model, size, form, interface):
        return cls(form, interface, step_lib.make_step_function(model, *size, cls.graph_form(form), interface))

    @staticmethod
    def graph_form(form):
        return "default" if form == "frame" else form

    @property
    def frame_dtype(self):
        return step_lib.frame_dtype(self.graph_form(self.form), self.interface).as_numpy_dtype

    def io(self):
        """({input: shape and dtype}, {output: shape and dtype})."""
        concrete = self.fn.get_concrete_function()
        inputs = {s.name: {"shape": s.shape.as_list(), "dtype": s.dtype.name} for s in concrete.structured_input_signature[0]}
        outputs = {k: {"shape": v.shape.as_list(), "dtype": v.dtype.name} for k, v in concrete.structured_outputs.items()}
        return inputs, outputs

    def frozen(self):
        """The step's frozen graph for the TFLite converter (made once, on first use)."""
        if self._frozen is None:
            self._frozen = tflite.frozen_function(self.fn)
        return self._frozen


def metadata(model, name, file, size, class_names, palette, graph, extra):
    """A model file's metadata (its .json): what it computes, its inputs and outputs, its classes and palette,
    and `extra`."""
    from stt_keras.export.step import MEANINGS

    inputs, outputs = graph.io()
    input_order, output_order = step_lib.io_order(graph.fn)
    meta = {
        "format": "stt-keras-step/1",
        "model": name,
        "form": file.form,
        "interface": file.interface,
        "quantization": file.quantization,
        "input_size": list(size),
        "streaming": model.stt is not None,
        "num_key_frames": model.num_key_frames,
        "classes": class_names,
        "palette": palette,
        "normalization": "RGB in [0, 255] (uint8, or float32 for the dense_masked form's full interface); "
                         "ImageNet mean/std applied inside the model",
        "inputs": inputs,
        "outputs": outputs,
        # Runtimes list signature inputs in this order and outputs sorted by name.
        "input_order": input_order,
        "output_order": output_order,
        "meaning": {k: MEANINGS[k] for k in [*input_order, *output_order]},
        **extra,
    }
    if model.stt is not None:
        meta["state_layout"] = ("[1, h, w, T * C]: projected key/value maps of the T previous frames, oldest first, "
                                "C = 2 * d_r; zeros with reset=1 on a stream's first frame")
    return meta


def export_savedmodel(job, assets=()):
    """saved_model/1 (TF Serving layout, `assets` copied in); returns the report's "saved_model" entry."""
    start = time.time()
    path = ExportedFile("savedmodel").name
    signatures = saved_model.save(job.model, job.path(path), *job.size, assets=list(assets))
    entry = {"path": path, "signatures": signatures, "seconds": time.time() - start}
    print(f"stt-export: SavedModel with signatures {signatures} ({time.time() - start:.0f} s)", flush=True)
    return entry


def export_tflite(job, graph, file):
    """One .tflite (converted, its ops checked, parity on the file as written, the GPU check); returns its entry."""
    from stt_keras.export.gpu_step import STT_SCOPE

    frozen = graph.frozen()
    start = time.time()
    dataset = None
    if file.quantization == "int8":
        dataset = calibration.representative_dataset(
            graph.fn, *job.size, job.state_shape, job.calibration_count, job.calibration_frames, graph.frame_dtype,
            sequences=job.calibration_sequences, description=job.calibration_text)
    model_bytes, settings = tflite.convert(frozen, file.quantization, dataset,
                                           keep_float_scope=STT_SCOPE if job.streaming else None,
                                           float_head=job.float_head,
                                           quantized_subscopes=int8_block_subscopes(job.float_head))
    ops = tflite.check_ops(model_bytes)  # raises on Flex / variables / unfolded BN
    path = job.path(file.name)
    with open(path, "wb") as f:
        f.write(model_bytes)
    checksum = hashlib.sha256(model_bytes).hexdigest()
    # Parity runs the file as written (checked against its checksum), not the bytes in memory.
    candidate, compared = job.check_parity(parity.TFLiteStep(path, job.threads, expected_sha256=checksum), file.name,
                                      graph.frame_dtype)
    entry = {
        "form": file.form, "interface": file.interface, "quantization": file.quantization,
        "bytes": len(model_bytes), "seconds": time.time() - start,
        "ops": tflite.op_histogram(model_bytes),
        "parity": compared,
    }
    if file.quantization == "int8":
        entry["float_ops"] = tflite.float_ops_in_quantized(model_bytes)
    if file.gpu_checked:
        entry["gpu_accelerator"] = job.gpu.check(model_bytes, len(ops), job.sequences, job.state_shape,
                                                 graph.frame_dtype, candidate)
    job.finish(entry, file, graph, settings, ops=sorted({o for o, _ in ops}), sha256=checksum, bytes=len(model_bytes))
    print(f"stt-export: {file.name}: {len(model_bytes) / 1e6:.2f} MB, labels agree "
          f"{100 * entry['parity']['label_agreement']:.2f}%{gpu_text(entry.get('gpu_accelerator'))} "
          f"({entry['seconds']:.0f} s)", flush=True)
    return entry


def export_onnx(job, graph, file):
    """One .onnx step (tf2onnx, parity with ONNX Runtime, TensorRT's limits); returns its entry."""
    start = time.time()
    path = job.path(file.name)
    onnx_model = onnx_export.export(
        graph.fn, step_lib.input_signature(job.model, *job.size, graph.graph_form(file.form), file.interface), path)
    checksum = sha256_file(path)
    _, compared = job.check_parity(parity.OnnxStep(path, job.threads, expected_sha256=checksum), file.name, graph.frame_dtype)
    entry = {
        "form": file.form, "interface": file.interface, "bytes": os.path.getsize(path), "seconds": time.time() - start,
        "op_types": onnx_export.op_types(onnx_model), "tensorrt_issues": onnx_export.tensorrt_issues(onnx_model),
        "parity": compared,
    }
    job.finish(entry, file, graph, {"tool": "tf2onnx", "opset": onnx_export.OPSET},
               tensorrt_issues=entry["tensorrt_issues"], sha256=checksum, bytes=os.path.getsize(path))
    print(f"stt-export: {file.name}: {entry['bytes'] / 1e6:.2f} MB, labels agree "
          f"{100 * entry['parity']['label_agreement']:.2f}%, TensorRT issues: {len(entry['tensorrt_issues'])}", flush=True)
    return entry


# The step formats: (job, graph, file) -> the file's report entry.
STEP_WRITERS = {"tflite": export_tflite, "onnx": export_onnx}
