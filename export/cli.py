"""stt-export's export: `run_export(args)` checks the arguments, reads the model, picks the data and writes the files.

The command line (formats, forms, files written, examples: `stt-export --help`)
is parsed in stt_keras_cli/export.py, which imports no TensorFlow. What is written
is named by files.py (`ExportedFile`), written one format at a time by writers.py,
checked on the GPU by gpu_check.py, and summed up by report.py; memory.py
estimates the memory an export needs before anything is built at full size.
"""

import os
import sys

import numpy as np

from stt_keras.utils.errors import UserError, run_cli  # noqa: F401
from stt_keras.metrics import IGNORE_LABEL
from stt_keras.utils.sizes import SizeError, parse_frame_size
from stt_keras.export import memory
from stt_keras.export.files import (DEFAULT_QUANTIZATIONS, FORM_QUANTIZATIONS, GPU_CHECKED,  # noqa: F401
                                    OLD_FORM_NAMES, ExportedFile, plan)
# Importable from here as before the export was split into modules.
from stt_keras.export.gpu_check import GpuChecker as _GpuChecker, gpu_checker as _gpu_checker  # noqa: F401
from stt_keras.export.gpu_check import gpu_text as _gpu_text  # noqa: F401
from stt_keras.export.memory import MEMORY_FACTOR, available_memory, estimate_memory  # noqa: F401
from stt_keras.export.report import markdown_report
from stt_keras.export.writers import int8_block_subscopes  # noqa: F401
from stt_keras_cli.export import build_parser, int8_float_head  # noqa: F401


def planned_files(formats, forms, quantizations, explicit_quantizations=True, interfaces=("full",), streaming=True):
    """The `ExportedFile`s the arguments ask for, in the order they are written; UserError if a requested
    format or quantization would write none.

    Checked twice: before the model is read (as if it were a streaming STT model), and
    after, for what the model is (a per-frame model has the one form "frame": `streaming` False).
    """
    if not streaming:
        forms = ["frame"]
    if formats - {"savedmodel"} and not interfaces:
        raise UserError("stt-export: --interfaces is empty: the TFLite and ONNX models need one (full, edge).")
    files = plan(formats, forms, quantizations, interfaces)
    if "tflite" in formats:
        made = {file.quantization for file in files if file.format == "tflite"}
        missing = [q for q in quantizations if q not in made]
        if missing and explicit_quantizations:
            raise UserError(
                f"stt-export: --quantizations {','.join(missing)} with --forms {','.join(forms) or '(none)'} writes no "
                f"TFLite model (int8 is built from the dense_masked form only); add --forms dense_masked or drop "
                f"{','.join(missing)}.")
        if not quantizations:
            raise UserError("stt-export: --formats tflite with an empty --quantizations writes no TFLite model.")
    if not files:
        raise UserError("stt-export: these arguments write no model (--formats, --forms or --quantizations is empty); "
                        "nothing was changed.")
    if formats - {"savedmodel"} and not forms:
        raise UserError("stt-export: --forms is empty: the TFLite and ONNX models need a step form "
                        "(default, dense_masked).")
    return files


def plan_files(formats, forms, quantizations, explicit_quantizations=True, interfaces=("full",), streaming=True):
    """The names of the model files the arguments ask for, sorted (`planned_files`' names)."""
    return sorted(file.name for file in planned_files(formats, forms, quantizations, explicit_quantizations, interfaces,
                                                      streaming))


def run_export(args):
    """Runs stt-export on parsed arguments; returns the report. A full disk or a folder that turns read-only is one
    line (UserError): --out keeps what it held, the partial export is removed (atomic_directory)."""
    from stt_keras.utils.fileio import concerns, disk_full, read_only, write_error_reason

    try:
        return _run_export(args)
    except UserError:
        raise
    except Exception as error:  # noqa: BLE001 (re-raised unless it is the disk)
        out_folder = os.path.dirname(os.path.abspath(args.out))  # the export is written beside --out, then swapped in
        if not (disk_full(error) or (read_only(error) and concerns(error, out_folder))):
            raise
        reason = write_error_reason(error)
        where = f"the disk holding --out {args.out} is full" if disk_full(error) else f"cannot write --out {args.out}"
        raise UserError(f"stt-export: {where} ({reason}); --out is unchanged and no partial export is left"
                        f"{': free some space and' if disk_full(error) else '; fix that and'} run again.") from None


def _run_export(args):
    """The export as a sequence of steps: each one refuses bad input with one line before the next begins."""
    import stt_keras
    from stt_keras.export import calibration, writers

    request = _read_arguments(args)
    user_data = _check_before_loading(args, request)
    gpu = _gpu_checker(args.gpu_check)  # --gpu-check require without a device: refused before the model loads
    model = stt_keras.load_model(args.model, compile=False)
    planned = request.files(model.stt is not None)
    _check_memory(args, model, request.size)
    class_names, palette, label_source = _class_names(args, model)
    report = {"model": os.path.abspath(args.model), "size": list(request.size), "classes_source": label_source,
              "classes": class_names, "palette": palette, "files": {}, "gpu_accelerator": gpu.status, "warnings": []}
    int8 = any(file.quantization == "int8" for file in planned)
    calibration_sequences, calibration_text, sequences, parity_text, miou_meaningful = _frames_for_checks(
        args, model, request.size, report, calibration, label_source, int8, user_data)
    if not int8:
        calibration_text = None  # no int8 model: nothing is calibrated
    report["calibration_data"] = calibration_text
    report["parity_data"] = parity_text
    job = writers.ExportJob(
        model=model, name=os.path.splitext(os.path.basename(args.model))[0], size=request.size, folder=None,
        class_names=class_names, palette=palette, sequences=sequences, parity_text=parity_text, miou_meaningful=miou_meaningful,
        threads=args.threads, gpu=gpu, float_head=int8_float_head(args.int8_float_head),
        calibration_sequences=calibration_sequences, calibration_text=calibration_text,
        calibration_count=args.calibration_sequences, calibration_frames=args.calibration_frames)
    _write_export(args.out, job, planned, report, {"model": report["model"], "size": list(request.size),
                                                   "classes_source": label_source, "calibration_data": calibration_text,
                                                   "parity_data": parity_text})
    print(markdown_report(report))
    return report


class _Request:
    """The arguments that decide what is written: size, formats, forms, interfaces, quantizations."""

    def __init__(self, args):
        from stt_keras.export import step as step_lib, tflite

        try:
            self.size = parse_frame_size(args.size, "--size")
        except SizeError as error:
            raise UserError(f"stt-export: {error}.") from None
        self.formats = {f.strip() for f in args.formats.split(",") if f.strip()}
        self.forms = [f.strip() for f in args.forms.split(",") if f.strip()]
        for old in sorted(set(self.forms) & set(OLD_FORM_NAMES)):
            print(f"stt-export: warning: --forms {old} is named {OLD_FORM_NAMES[old]} now; {old} will stop working.",
                  file=sys.stderr)
        self.forms = [OLD_FORM_NAMES.get(form, form) for form in self.forms]
        self.interfaces = [f.strip() for f in args.interfaces.split(",") if f.strip()]
        self.explicit_quantizations = args.quantizations is not None
        self.quantizations = [q.strip() for q in (args.quantizations if self.explicit_quantizations
                                                  else DEFAULT_QUANTIZATIONS).split(",") if q.strip()]
        for values, allowed, what in ((self.formats, {"savedmodel", "tflite", "onnx"}, "--formats"),
                                      (self.forms, set(step_lib.FORMS), "--forms"),
                                      (self.interfaces, set(step_lib.INTERFACES), "--interfaces"),
                                      (self.quantizations, set(tflite.QUANTIZATIONS), "--quantizations")):
            unknown = set(values) - allowed
            if unknown:
                raise UserError(f"stt-export: unknown {what} {sorted(unknown)}; allowed: {sorted(allowed)}.")

    def files(self, streaming=True):
        """The planned `ExportedFile`s (UserError if none); a per-frame model (`streaming` False) has the one form "frame"."""
        return planned_files(self.formats, self.forms, self.quantizations, self.explicit_quantizations,
                             self.interfaces, streaming)


def _read_arguments(args):
    request = _Request(args)
    for name in ("calibration_sequences", "calibration_frames", "parity_sequences", "parity_frames", "threads"):
        if getattr(args, name) < 1:
            raise UserError(f"stt-export: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    request.files()  # before the model is read
    return request


def _check_before_loading(args, request):
    """The model file, --out and --calibration-data, checked before the model is loaded; the listed data or None."""
    from stt_keras.export import calibration
    from stt_keras.export.atomic import check_destination
    from stt_keras.utils.fileio import unwritable_reason

    if not (os.path.isfile(args.model) or os.path.isfile(os.path.join(args.model, "config.json"))):
        raise UserError(f"stt-export: model file (or preset directory with config.json) not found: {args.model}")
    check_destination(args.out, protected=[args.model])
    # The new export is made beside --out and swapped in; the old one is deleted: both folders must be writable.
    for folder in [os.path.dirname(os.path.abspath(args.out))] + ([args.out] if os.path.isdir(args.out) else []):
        unwritable = unwritable_reason(folder)
        if unwritable:
            raise UserError(f"stt-export: cannot write --out {args.out} ({unwritable}); choose a writable folder.")
    if not args.calibration_data:
        return None
    try:  # listed (and a video probed) before the model is loaded
        return calibration.UserData(args.calibration_data, *request.size, None, args.calibration_split)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"stt-export: --calibration-data: {error}") from None


def _check_memory(args, model, size):
    """UserError if the export at `size` would not fit (unless --no-memory-check)."""
    if args.no_memory_check:
        return
    needed, available = memory.estimate_memory(model, size, memory.PROBE), memory.available_memory()
    if available is not None and needed > available:
        raise UserError(
            f"stt-export: exporting at --size {size[0]}x{size[1]} needs about {needed / 2**30:.1f} GiB "
            f"(estimate), {available / 2**30:.1f} GiB is available; use a smaller --size or pass --no-memory-check.")


def _class_names(args, model):
    """(class names, palette, where they come from): --classes, a preset's metadata, or a built-in set."""
    from stt_keras.data import classes as class_sets

    try:
        preset = getattr(model, "preset_metadata", None) or {}  # a preset directory's names and colours
        if not args.classes and preset.get("classes"):
            class_names = list(preset["classes"])
            palette = preset.get("colors") or class_sets.default_palette(len(class_names))
            label_source = f"preset metadata {os.path.abspath(args.model)}"
            if len(class_names) != model.num_classes:
                raise ValueError(f"the preset names {len(class_names)} classes, the model predicts {model.num_classes}.")
        else:
            class_names, palette, label_source = class_sets.class_names_for(args.classes, model.num_classes)
    except ValueError as error:
        raise UserError(f"stt-export: --classes: {error}") from None
    if label_source.startswith("generic"):
        print(f"stt-export: warning: no built-in class set has {model.num_classes} classes and no --classes was given; "
              f"the classes are named {', '.join(class_names[:3])}{', ...' if len(class_names) > 3 else ''} "
              "(pass --classes FILE to name them).", file=sys.stderr, flush=True)
    return class_names, palette, label_source


def _write_export(out, job, planned, report, manifest):
    """Writes the `planned` files (`job`: a writers.ExportJob), the reports and the manifest into a new folder
    that replaces `out` at the end (atomic_directory); fills `report`."""
    from stt_keras.export import writers
    from stt_keras.export.atomic import atomic_directory, write_manifest

    with atomic_directory(out) as tmp:
        job.folder = tmp
        labels_json = os.path.join(tmp, "labels.json")
        writers.write_json(labels_json, {"classes": job.class_names, "palette": job.palette, "source": report["classes_source"],
                                         "ignore_label": 255})
        steps = [file for file in planned if file.format != "savedmodel"]
        if len(steps) < len(planned):
            report["saved_model"] = writers.export_savedmodel(job, assets=[labels_json])
        if steps:
            job.stream_reference()
        graph = None
        for file in steps:  # grouped by form and interface: one traced step function for each group
            if graph is None or (graph.form, graph.interface) != (file.form, file.interface):
                graph = writers.StepGraph.make(job.model, job.size, file.form, file.interface)
            report["files"][file.name] = writers.STEP_WRITERS[file.format](job, graph, file)
        writers.write_json(os.path.join(tmp, "export_report.json"), report)
        with open(os.path.join(tmp, "export_report.md"), "w") as f:
            f.write(markdown_report(report))
        missing = sorted(f.name for f in planned if not os.path.exists(os.path.join(tmp, *f.name.split("/"))))
        if missing:  # never replace an export with one that lacks what was asked for
            raise RuntimeError(f"stt-export: the export did not write {missing}; --out is left as it was.")
        write_manifest(tmp, manifest)


LOUD = "*" * 100


def _frames_for_checks(args, model, size, report, calibration, label_source, int8=True, data=None):
    """(calibration sequences or None, its description, parity sequences, their description, parity mIoU meaningful).

    `int8`: an int8 model is planned (else the calibration frames are not announced). `data`: the
    `--calibration-data` already listed (a `calibration.UserData`), else it is listed here."""
    from stt_keras.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES

    if args.calibration_data:
        try:
            if data is None:
                data = calibration.UserData(args.calibration_data, *size, model.num_classes, args.calibration_split)
            data.num_classes = model.num_classes
            calib, calib_text, _ = data.segments(args.calibration_sequences, args.calibration_frames)
            used = data.last_cuts
            parity_sequences, parity_text, overlaps = data.segments(args.parity_sequences, args.parity_frames, exclude=used)
        except (FileNotFoundError, ValueError) as error:
            raise UserError(f"stt-export: --calibration-data: {error}") from None
        if overlaps:
            parity_text += " (the data is too short for parity segments apart from the calibration ones: some are shared)"
        if int8:
            print(f"stt-export: int8 calibration on {calib_text}", file=sys.stderr, flush=True)
        print(f"stt-export: parity checks on {parity_text}", file=sys.stderr, flush=True)
        meaningful = any((labels != IGNORE_LABEL).any() for _, labels in parity_sequences)
        return calib, calib_text, parity_sequences, parity_text, meaningful
    # The synthetic video: calibration sequences are drawn inside representative_dataset (its own seed).
    calib_text = (f"synthetic video, seed {calibration.CALIBRATION_SEED}: {args.calibration_sequences} sequences x "
                  f"{args.calibration_frames} frames at {size[0]}x{size[1]}, states from the float model's own stream")
    parity_sequences = calibration.synthetic_frames(*size, args.parity_sequences, args.parity_frames,
                                                    calibration.EVALUATION_SEED)
    parity_text = (f"synthetic video, seed {calibration.EVALUATION_SEED}: {args.parity_sequences} sequences x "
                   f"{args.parity_frames} frames at {size[0]}x{size[1]}")
    mismatch = calibration.synthetic_mismatch(args.model, model.num_classes, len(SYNTHETIC_CLASSES))
    if mismatch is not None:
        reason, hint = mismatch
        warning = (f"this model is not a synthetic-video model ({reason}), but its int8 calibration and every parity "
                   f"figure (label agreement, mIoU) use the built-in SYNTHETIC frames: the int8 ranges and the "
                   f"agreement are not measured on the video it will see. Pass --calibration-data with its own "
                   f"frames{hint}.")
        report["warnings"].append(warning)
        print(f"{LOUD}\nstt-export: WARNING: {warning}\n{LOUD}", file=sys.stderr, flush=True)
    meaningful = mismatch is None and label_source.startswith("built-in synthetic")
    if not meaningful:  # the synthetic truth is not in this model's classes: no mIoU (labels all ignored)
        parity_sequences = [(frames, np.full(labels.shape, IGNORE_LABEL, np.uint8))
                            for frames, labels in parity_sequences]
    return None, calib_text, parity_sequences, parity_text, meaningful


def main(argv=None):
    """`python -m stt_keras.export.cli`: the stt-export command (stt_keras_cli.export.main)."""
    from stt_keras_cli.export import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
