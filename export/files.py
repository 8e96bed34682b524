"""What stt-export writes: one description of an exported model file, and the plan of them.

`ExportedFile(format, form, interface, quantization).name` is the file's name in the export
folder, and `ExportedFile.parse(name)` reads a name back; every name stt-export writes or
expects comes from here. The rule (docs/export.md, "Forms, quantizations and files"):

    saved_model/1                          the SavedModel (no form, interface or quantization)
    {prefix}{_edge}_{quantization}.tflite  prefix stt (default form), stt_gpu (dense_masked form), frame
    {stt|frame}{_edge}_int8.tflite         the one int8 model, built from the loop-free graph
                                           (dense_masked form, or a per-frame model's one form)
    {prefix}{_edge}_step.onnx              float32
    the model's name with .json            its metadata

No TensorFlow here.
"""

import dataclasses
import warnings

FORMATS = ("savedmodel", "tflite", "onnx")
# "dense_masked" is the step traced with the STT's dense_masked implementation (loop-free: the form GPUs and
# int8 run); "frame" is the one graph form of a per-frame model (no STT): its graph is loop-free too.
GRAPH_FORMS = ("default", "dense_masked", "frame")
INTERFACES = ("full", "edge")
# Full int8 comes from the loop-free "dense_masked" graph: the TFLite calibrator crashes
# (segfault, TF 2.21) on the default form's WHILE loops.
FORM_QUANTIZATIONS = {"default": ("float32", "float16", "dynamic_range"),
                      "dense_masked": ("float32", "float16", "dynamic_range", "int8"),
                      "frame": ("float32", "float16", "dynamic_range", "int8")}
QUANTIZATIONS = ("float32", "float16", "dynamic_range", "int8")  # TFLite's (export/tflite.py)
GPU_CHECKED = ("float32", "float16")  # quantizations compiled for the GPU accelerator
DEFAULT_QUANTIZATIONS = "float32,float16,dynamic_range,int8"

# The dense_masked form's files keep the prefix stt_gpu: file names are what scripts and the web page look for.
_PREFIXES = {"default": "stt", "dense_masked": "stt_gpu", "frame": "frame"}
SAVED_MODEL = "saved_model/1"
OLD_FORM_NAMES = {"gpu": "dense_masked"}  # deprecated aliases, accepted with a DeprecationWarning


def form_name(form):
    """The form's name: the deprecated alias "gpu" is "dense_masked" (with a DeprecationWarning); others are unchanged.

    >>> form_name("default")
    'default'
    """
    if form in OLD_FORM_NAMES:
        warnings.warn(f"the step form {form!r} is named {OLD_FORM_NAMES[form]!r}; {form!r} will stop working.",
                      DeprecationWarning, stacklevel=3)
        return OLD_FORM_NAMES[form]
    return form


@dataclasses.dataclass(frozen=True)
class ExportedFile:
    """One exported model file: format, graph form, interface, quantization -> `name`, and back (`parse`)."""

    format: str
    form: str = "default"
    interface: str = "full"
    quantization: str = "float32"

    def __post_init__(self):
        if self.format not in FORMATS:
            raise ValueError(f"format must be one of {FORMATS}, got {self.format!r}.")
        if self.format == "savedmodel":
            return
        object.__setattr__(self, "form", form_name(self.form))
        if self.form not in GRAPH_FORMS:
            raise ValueError(f"form must be one of {GRAPH_FORMS}, got {self.form!r}.")
        if self.interface not in INTERFACES:
            raise ValueError(f"interface must be one of {INTERFACES}, got {self.interface!r}.")
        allowed = FORM_QUANTIZATIONS[self.form] if self.format == "tflite" else ("float32",)
        if self.quantization not in allowed:
            raise ValueError(f"a {self.format} file of the {self.form} form is one of {allowed}, "
                             f"got {self.quantization!r}.")

    @property
    def streaming(self):
        return self.form != "frame"

    @property
    def name(self):
        """The file's name in the export folder."""
        if self.format == "savedmodel":
            return SAVED_MODEL
        edge = "_edge" if self.interface == "edge" else ""
        if self.format == "onnx":
            return f"{_PREFIXES[self.form]}{edge}_step.onnx"
        if self.quantization == "int8":  # the only int8 model is named plainly, whatever its graph form
            return f"{'stt' if self.streaming else 'frame'}{edge}_int8.tflite"
        return f"{_PREFIXES[self.form]}{edge}_{self.quantization}.tflite"

    @property
    def metadata_name(self):
        """The name of its metadata file (.json beside it); a SavedModel has none."""
        if self.format == "savedmodel":
            raise ValueError("the SavedModel has no metadata file of its own (its assets hold labels.json).")
        return self.name.rsplit(".", 1)[0] + ".json"

    @property
    def gpu_checked(self):
        """Compiled for LiteRT's GPU accelerator by the export's check: loop-free float TFLite models."""
        return self.format == "tflite" and self.form in ("dense_masked", "frame") and self.quantization in GPU_CHECKED

    @classmethod
    def parse(cls, name):
        """The description of an exported file's name (the inverse of `name`); ValueError if it is not one."""
        try:
            return _BY_NAME[name.rstrip("/")]
        except KeyError:
            raise ValueError(f"{name!r} is not a model file stt-export writes (see `stt-export --help`).") from None


def every_file():
    """Every file an export can hold, one description each (their names are distinct)."""
    return [ExportedFile("savedmodel")] + plan(("tflite", "onnx"), GRAPH_FORMS, QUANTIZATIONS, INTERFACES)


def plan(formats, forms, quantizations, interfaces=("full",)):
    """The files the arguments ask for, in the order stt-export writes them: the SavedModel, then for
    each form and interface its TFLite quantizations (those the form can build) and its ONNX step."""
    files = [ExportedFile("savedmodel")] if "savedmodel" in formats else []
    for form in map(form_name, forms):
        for interface in interfaces:
            if "tflite" in formats:
                files += [ExportedFile("tflite", form, interface, q) for q in quantizations
                          if q in FORM_QUANTIZATIONS[form]]
            if "onnx" in formats:
                files.append(ExportedFile("onnx", form, interface))
    return list(dict.fromkeys(files))  # a form or quantization named twice is written once


_BY_NAME = {file.name: file for file in every_file()}
