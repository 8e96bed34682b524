"""stt-export's export: `run_export(args)` writes the models, checks and reports.

The command line (formats, forms, files written, examples: `stt-export --help`)
is parsed in stt_keras_cli/export.py, which imports no TensorFlow.
"""

import json
import os
import sys
import time

import numpy as np

from stt_keras.errors import UserError, run_cli
from stt_keras.metrics import IGNORE_LABEL
from stt_keras.sizes import SizeError, parse_frame_size
from stt_keras.export import parity

from stt_keras.export.files import (DEFAULT_QUANTIZATIONS, FORM_QUANTIZATIONS, GPU_CHECKED,  # noqa: F401
                                    ExportedFile, plan)


def int8_block_subscopes(float_head):
    """The STT block's sub-scopes an int8 export quantizes: its 1x1 convolutions (`gpu_step.STT_QUANTIZED`),
    none with float_head="decoder", the GPU setting (on LiteRT's GPU accelerator they cost agreement
    with the CPU: docs/gpu_accelerator.md)."""
    from stt_keras.export.gpu_step import STT_QUANTIZED

    return () if float_head == "decoder" else STT_QUANTIZED


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
                f"TFLite model (int8 is built from the gpu form only); add --forms gpu or drop {','.join(missing)}.")
        if not quantizations:
            raise UserError("stt-export: --formats tflite with an empty --quantizations writes no TFLite model.")
    if not files:
        raise UserError("stt-export: these arguments write no model (--formats, --forms or --quantizations is empty); "
                        "nothing was changed.")
    if formats - {"savedmodel"} and not forms:
        raise UserError("stt-export: --forms is empty: the TFLite and ONNX models need a step form (default, gpu).")
    return files


def plan_files(formats, forms, quantizations, explicit_quantizations=True, interfaces=("full",), streaming=True):
    """The names of the model files the arguments ask for, sorted (`planned_files`' names)."""
    return sorted(file.name for file in planned_files(formats, forms, quantizations, explicit_quantizations, interfaces,
                                                      streaming))


# Bytes per pixel of live activations an export holds at once, as a multiple of one
# forward pass's peak: the Keras model, the TFLite converter / calibrator, the LiteRT
# interpreter and ONNX Runtime each hold their own.
MEMORY_FACTOR = 3.0


def _peak_activation_bytes(graph):
    """Peak bytes of live tensors when running `graph`'s ops in creation order (each freed after its last use)."""
    ops = graph.get_operations()
    last_use = {}
    for i, op in enumerate(ops):
        for t in op.inputs:
            last_use[t.ref()] = i
    live, peak, sizes = 0, 0, {}
    for i, op in enumerate(ops):
        if op.type in ("ReadVariableOp", "Const", "VarHandleOp"):
            continue
        for t in op.outputs:
            if t.shape.is_fully_defined() and t.dtype.size:
                sizes[t.ref()] = t.shape.num_elements() * t.dtype.size
                live += sizes[t.ref()]
        peak = max(peak, live)
        for t in list(op.inputs) + list(op.outputs):
            if last_use.get(t.ref(), i) <= i and t.ref() in sizes:
                live -= sizes.pop(t.ref())
    return peak


def estimate_memory(model, size, probe=(64, 128)):
    """Bytes an export at `size` needs, estimated from the model's activation peak at a small probe size."""
    import tensorflow as tf

    frames = model.num_key_frames + 1
    shape = [1, frames, *probe, 3] if model.stt is not None else [1, *probe, 3]
    graph = tf.function(lambda x: model(x, training=False)).get_concrete_function(tf.TensorSpec(shape, tf.uint8)).graph
    per_pixel = _peak_activation_bytes(graph) / (probe[0] * probe[1])
    weights = sum(int(np.prod(w.shape)) * 4 for w in model.weights)
    return int(MEMORY_FACTOR * per_pixel * size[0] * size[1] + 6 * weights)


def available_memory():
    """Bytes this process may still allocate: MemAvailable, the cgroup limit and RLIMIT_AS/RLIMIT_DATA, the least."""
    import resource

    limits = []
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    limits.append(int(line.split()[1]) * 1024)
    except OSError:
        pass
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes", "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            with open(limit_file) as f:
                text = f.read().strip()
            if text != "max" and int(text) < 1 << 60:
                with open(usage_file) as f:
                    limits.append(int(text) - int(f.read().strip()))
                break
        except (OSError, ValueError):
            continue
    for kind, status_key in ((resource.RLIMIT_AS, "VmSize:"), (resource.RLIMIT_DATA, "VmData:")):
        soft, _ = resource.getrlimit(kind)
        if soft != resource.RLIM_INFINITY:
            used = 0
            try:
                with open("/proc/self/status") as f:
                    used = next((int(l.split()[1]) * 1024 for l in f if l.startswith(status_key)), 0)
            except OSError:
                pass
            limits.append(soft - used)
    return min(limits) if limits else None


from stt_keras_cli.export import build_parser, int8_float_head  # noqa: E402,F401


def _io_description(fn):
    concrete = fn.get_concrete_function()
    inputs = {s.name: {"shape": s.shape.as_list(), "dtype": s.dtype.name} for s in concrete.structured_input_signature[0]}
    outputs = {k: {"shape": v.shape.as_list(), "dtype": v.dtype.name} for k, v in concrete.structured_outputs.items()}
    return inputs, outputs


def _metadata(model, name, form, quantization, size, labels, io, extra, interface="full", order=None):
    from stt_keras.export.step import MEANINGS

    classes, palette = labels
    inputs, outputs = io
    input_order, output_order = order or (list(inputs), sorted(outputs))
    meta = {
        "format": "stt-keras-step/1",
        "model": name,
        "form": form,
        "interface": interface,
        "quantization": quantization,
        "input_size": list(size),
        "streaming": model.stt is not None,
        "num_key_frames": model.num_key_frames,
        "classes": classes,
        "palette": palette,
        "normalization": "RGB in [0, 255] (uint8, or float32 for the gpu form's full interface); "
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


def _write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=float)


def _sha256_bytes(data):
    import hashlib

    return hashlib.sha256(data).hexdigest()


def run_export(args):
    """Runs stt-export on parsed arguments; returns the report. A full disk or a folder that turns read-only is one
    line (UserError): --out keeps what it held, the partial export is removed (atomic_directory)."""
    from stt_keras.fileio import concerns, disk_full, read_only, write_error_reason

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
    import stt_keras
    from stt_keras.export import atomic, calibration, labels as label_sets, onnx_export, parity, saved_model, step as step_lib, tflite
    from stt_keras.export.atomic import atomic_directory, check_destination, write_manifest

    try:
        size = parse_frame_size(args.size, "--size")
    except SizeError as error:
        raise UserError(f"stt-export: {error}.") from None
    formats = {f.strip() for f in args.formats.split(",") if f.strip()}
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    interfaces = [f.strip() for f in args.interfaces.split(",") if f.strip()]
    explicit_quantizations = args.quantizations is not None
    quantizations = [q.strip() for q in (args.quantizations if explicit_quantizations else DEFAULT_QUANTIZATIONS).split(",")
                     if q.strip()]
    for values, allowed, what in ((formats, {"savedmodel", "tflite", "onnx"}, "--formats"),
                                  (forms, set(step_lib.FORMS), "--forms"),
                                  (interfaces, set(step_lib.INTERFACES), "--interfaces"),
                                  (quantizations, set(tflite.QUANTIZATIONS), "--quantizations")):
        unknown = set(values) - allowed
        if unknown:
            raise UserError(f"stt-export: unknown {what} {sorted(unknown)}; allowed: {sorted(allowed)}.")
    for name in ("calibration_sequences", "calibration_frames", "parity_sequences", "parity_frames", "threads"):
        if getattr(args, name) < 1:
            raise UserError(f"stt-export: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    plan_files(formats, forms, quantizations, explicit_quantizations, interfaces)  # before the model is read
    if not (os.path.isfile(args.model) or os.path.isfile(os.path.join(args.model, "config.json"))):
        raise UserError(f"stt-export: model file (or preset directory with config.json) not found: {args.model}")
    check_destination(args.out, protected=[args.model])
    from stt_keras.fileio import unwritable_reason

    # The new export is made beside --out and swapped in; the old one is deleted: both folders must be writable.
    for folder in [os.path.dirname(os.path.abspath(args.out))] + ([args.out] if os.path.isdir(args.out) else []):
        unwritable = unwritable_reason(folder)
        if unwritable:
            raise UserError(f"stt-export: cannot write --out {args.out} ({unwritable}); choose a writable folder.")
    user_data = None
    if args.calibration_data:  # listed (and a video probed) before the model is loaded
        try:
            user_data = calibration.UserData(args.calibration_data, *size, None, args.calibration_split)
        except (FileNotFoundError, ValueError) as error:
            raise UserError(f"stt-export: --calibration-data: {error}") from None

    model = stt_keras.load_model(args.model, compile=False)
    streaming = model.stt is not None
    if not streaming:
        # A per-frame graph has no loops, top-k or scatter: its one form is also the GPU form.
        forms = ["frame"]
    planned = planned_files(formats, forms, quantizations, explicit_quantizations, interfaces, streaming)
    frames = model.num_key_frames + 1
    probe = (64, 128)
    model(np.zeros((1, frames, *probe, 3), np.uint8) if streaming else np.zeros((1, *probe, 3), np.uint8))
    if not args.no_memory_check:
        needed, available = estimate_memory(model, size, probe), available_memory()
        if available is not None and needed > available:
            raise UserError(
                f"stt-export: exporting at --size {size[0]}x{size[1]} needs about {needed / 2**30:.1f} GiB "
                f"(estimate), {available / 2**30:.1f} GiB is available; use a smaller --size or pass --no-memory-check.")
    try:
        preset = getattr(model, "preset_metadata", None) or {}  # a preset directory's names and colours
        if not args.labels and preset.get("labels"):
            class_names = list(preset["labels"])
            palette = preset.get("colors") or label_sets.default_palette(len(class_names))
            label_source = f"preset metadata {os.path.abspath(args.model)}"
            if len(class_names) != model.num_classes:
                raise ValueError(f"the preset names {len(class_names)} classes, the model predicts {model.num_classes}.")
        else:
            class_names, palette, label_source = label_sets.class_names_for(args.labels, model.num_classes)
    except ValueError as error:
        raise UserError(f"stt-export: --labels: {error}") from None
    labels = (class_names, palette)
    if label_source.startswith("generic"):
        print(f"stt-export: warning: no built-in label set has {model.num_classes} classes and no --labels was given; "
              f"the classes are named {', '.join(class_names[:3])}{', ...' if len(class_names) > 3 else ''} "
              "(pass --labels FILE to name them).", file=sys.stderr, flush=True)
    name = os.path.splitext(os.path.basename(args.model))[0]

    gpu = _gpu_checker(args.gpu_check)
    report = {"model": os.path.abspath(args.model), "size": list(size), "labels": label_source,
              "classes": class_names, "palette": palette, "files": {}, "gpu_accelerator": gpu.status, "warnings": []}
    int8 = any(file.quantization == "int8" for file in planned)
    calibration_sequences, calibration_text, sequences, parity_text, miou_meaningful = _frames_for_checks(
        args, model, size, report, calibration, label_source, int8, user_data)
    if not int8:
        calibration_text = None  # no int8 model: nothing is calibrated
    report["calibration_data"] = calibration_text
    report["parity_data"] = parity_text

    def finish_parity(entry):
        if not miou_meaningful:
            for key in ("miou", "miou_reference", "miou_drop_points"):
                entry["parity"].pop(key, None)

    with atomic_directory(args.out) as tmp:
        labels_json = os.path.join(tmp, "labels.json")
        _write_json(labels_json, {"classes": class_names, "palette": palette, "source": label_source,
                                  "ignore_label": 255})
        if "savedmodel" in formats:
            start = time.time()
            path = ExportedFile("savedmodel").name
            signatures = saved_model.save(model, os.path.join(tmp, *path.split("/")), *size, assets=[labels_json])
            report["saved_model"] = {"path": path, "signatures": signatures, "seconds": time.time() - start}
            print(f"stt-export: SavedModel with signatures {signatures} ({time.time() - start:.0f} s)", flush=True)

        graph_form = {"frame": "default"}
        reference_fn = step_lib.make_step_function(model, *size, "default")
        state_shape = None
        if streaming:
            state_shape = reference_fn.get_concrete_function().structured_input_signature[0][1].shape.as_list()
        if formats - {"savedmodel"}:
            reference = parity.stream(_counted(reference_fn, "Keras reference", sequences), sequences, state_shape)

        for form in forms if formats - {"savedmodel"} else []:
            for interface in interfaces:
                fn = step_lib.make_step_function(model, *size, graph_form.get(form, form), interface)
                io = _io_description(fn)
                order = step_lib.io_order(fn)
                frame_dtype = step_lib.frame_dtype(graph_form.get(form, form), interface).as_numpy_dtype
                if "tflite" in formats:
                    frozen = tflite.frozen_function(fn)
                    for quantization in quantizations:
                        if quantization not in FORM_QUANTIZATIONS[form]:
                            continue
                        start = time.time()
                        dataset = None
                        if quantization == "int8":
                            dataset = calibration.representative_dataset(
                                fn, *size, state_shape, args.calibration_sequences, args.calibration_frames, frame_dtype,
                                sequences=calibration_sequences, description=calibration_text)
                        from stt_keras.export.gpu_step import STT_SCOPE

                        float_head = int8_float_head(args.int8_float_head)
                        model_bytes, settings = tflite.convert(frozen, quantization, dataset,
                                                               keep_float_scope=STT_SCOPE if streaming else None,
                                                               float_head=float_head,
                                                               quantized_subscopes=int8_block_subscopes(float_head))
                        ops = tflite.check_ops(model_bytes)  # raises on Flex / variables / unfolded BN
                        exported = ExportedFile("tflite", form, interface, quantization)
                        filename = exported.name
                        path = os.path.join(tmp, filename)
                        with open(path, "wb") as f:
                            f.write(model_bytes)
                        checksum = _sha256_bytes(model_bytes)
                        # Parity runs the file as written (checked against its checksum), not the bytes in memory.
                        cpu_step = parity.TFLiteStep(path, args.threads, expected_sha256=checksum)
                        candidate = parity.stream(_counted(cpu_step, filename, sequences), sequences, state_shape,
                                                  frame_dtype)
                        entry = {
                            "form": form, "interface": interface, "quantization": quantization,
                            "bytes": len(model_bytes), "seconds": time.time() - start,
                            "ops": tflite.op_histogram(model_bytes),
                            "parity": parity.compare(reference, candidate, sequences, model.num_classes),
                        }
                        if quantization == "int8":
                            entry["float_ops"] = tflite.float_ops_in_quantized(model_bytes)
                        if exported.gpu_checked:
                            entry["gpu_accelerator"] = gpu.check(model_bytes, len(ops), sequences, state_shape,
                                                                 frame_dtype, candidate)
                        finish_parity(entry)
                        meta = _metadata(model, name, form, quantization, size, labels, io,
                                         {"converter": settings, "parity": entry["parity"], "parity_data": parity_text,
                                          "ops": sorted({o for o, _ in ops}), "sha256": checksum, "bytes": len(model_bytes)},
                                         interface, order)
                        if "gpu_accelerator" in entry:
                            meta["gpu_accelerator"] = entry["gpu_accelerator"]
                        _write_json(os.path.join(tmp, exported.metadata_name), meta)
                        report["files"][filename] = entry
                        agreement = entry["parity"]["label_agreement"]
                        print(f"stt-export: {filename}: {len(model_bytes) / 1e6:.2f} MB, labels agree {100 * agreement:.2f}%"
                              f"{_gpu_text(entry.get('gpu_accelerator'))} ({entry['seconds']:.0f} s)", flush=True)
                if "onnx" in formats:
                    start = time.time()
                    exported = ExportedFile("onnx", form, interface)
                    filename = exported.name
                    path = os.path.join(tmp, filename)
                    onnx_model = onnx_export.export(
                        fn, step_lib.input_signature(model, *size, graph_form.get(form, form), interface), path)
                    checksum = atomic.sha256_file(path)
                    candidate = parity.stream(
                        _counted(parity.OnnxStep(path, args.threads, expected_sha256=checksum), filename, sequences),
                        sequences, state_shape, frame_dtype)
                    entry = {
                        "form": form, "interface": interface, "bytes": os.path.getsize(path), "seconds": time.time() - start,
                        "op_types": onnx_export.op_types(onnx_model), "tensorrt_issues": onnx_export.tensorrt_issues(onnx_model),
                        "parity": parity.compare(reference, candidate, sequences, model.num_classes),
                    }
                    finish_parity(entry)
                    meta = _metadata(model, name, form, "float32", size, labels, io,
                                     {"converter": {"tool": "tf2onnx", "opset": onnx_export.OPSET}, "parity": entry["parity"],
                                      "parity_data": parity_text,
                                      "tensorrt_issues": entry["tensorrt_issues"], "sha256": checksum,
                                      "bytes": os.path.getsize(path)}, interface, order)
                    _write_json(os.path.join(tmp, exported.metadata_name), meta)
                    report["files"][filename] = entry
                    print(f"stt-export: {filename}: {entry['bytes'] / 1e6:.2f} MB, labels agree "
                          f"{100 * entry['parity']['label_agreement']:.2f}%, TensorRT issues: {len(entry['tensorrt_issues'])}", flush=True)
        _write_json(os.path.join(tmp, "export_report.json"), report)
        with open(os.path.join(tmp, "export_report.md"), "w") as f:
            f.write(markdown_report(report))
        missing = sorted(f.name for f in planned if not os.path.exists(os.path.join(tmp, f.name)))
        if missing:  # never replace an export with one that lacks what was asked for
            raise RuntimeError(f"stt-export: the export did not write {missing}; --out is left as it was.")
        write_manifest(tmp, {"model": report["model"], "size": list(size), "labels": label_source,
                             "calibration_data": calibration_text, "parity_data": parity_text})
    print(markdown_report(report))
    return report


class _GpuChecker:
    """Compiles a .tflite for LiteRT's GPU accelerator and streams the parity frames through it."""

    def __init__(self, mode):
        self.mode = mode
        self.status = {"checked": False, "reason": "--gpu-check off"}
        if mode == "off":
            return
        try:
            from stt_edge_demo import litert_gpu
        except ImportError as error:  # edge_demo ships with the repository; be explicit if it is broken
            reason = f"edge_demo.litert_gpu unavailable: {error}"
        else:
            reason = litert_gpu.software_vulkan_env()
            self.litert_gpu = litert_gpu
        if reason:
            if mode == "require":
                raise SystemExit(f"stt-export: --gpu-check require: {reason}")
            print(f"stt-export: GPU accelerator not checked: {reason}", flush=True)
            self.status = {"checked": False, "reason": reason}
        else:
            self.status = {"checked": True, "vulkan_icd": os.environ.get("VK_ICD_FILENAMES")}

    def check(self, model_bytes, num_ops, sequences, state_shape, frame_dtype, cpu_results):
        if not self.status["checked"]:
            return None
        result = {"num_ops": num_ops}
        try:
            gpu = self.litert_gpu.GpuModel(model_bytes)
        except RuntimeError:
            try:
                gpu = self.litert_gpu.GpuModel(model_bytes, cpu_fallback=True)
            except RuntimeError as error:
                return {**result, "fully_accelerated": False, "error": str(error).strip()[-500:]}
        on_cpu = gpu.op_split[1] if gpu.op_split else 0
        if gpu.validation_errors:
            result["validation_errors"] = sorted(set(gpu.validation_errors))[:5]
        result.update(fully_accelerated=bool(gpu.fully_accelerated and not gpu.op_split), ops_on_cpu=on_cpu,
                      ops_on_gpu=gpu.op_split[0] if gpu.op_split else num_ops,
                      refused={k: {"count": len(v), "reason": v[0]} for k, v in gpu.refused.items()})
        streamed = parity.stream(gpu, sequences, state_shape, frame_dtype)
        agreement = np.mean(np.concatenate([(a[0] == b[0]).reshape(-1) for a, b in zip(cpu_results, streamed)]))
        result["label_agreement_with_cpu"] = float(agreement)
        if cpu_results[0][1] is not None:
            result["logits_max_abs_diff_to_cpu"] = float(max(np.abs(a[1] - b[1]).max() for a, b in zip(cpu_results, streamed)))
        return result


def _counted(step, what, sequences):
    """`step` counting its calls on a progress line (parity runs of big models take minutes)."""
    from stt_keras.progress import CountingStep, Progress

    return CountingStep(step, Progress(f"stt-export: parity, {what}", sum(len(f) for f, _ in sequences), "frames"))


LOUD = "*" * 100


def _frames_for_checks(args, model, size, report, calibration, label_source, int8=True, data=None):
    """(calibration sequences or None, its description, parity sequences, their description, parity mIoU meaningful).

    `int8`: an int8 model is planned (else the calibration frames are not announced). `data`: the
    `--calibration-data` already listed (a `calibration.UserData`), else it is listed here."""
    from stt_keras.training.data.synthetic import CLASS_NAMES as SYNTHETIC_CLASSES

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


def _gpu_checker(mode):
    return _GpuChecker(mode)


def _gpu_text(result):
    if not result:
        return ""
    if "error" in result:
        return "; GPU accelerator: error"
    where = "all ops on the GPU" if result["fully_accelerated"] else f"{result['ops_on_cpu']} ops on the CPU"
    if result.get("validation_errors"):
        where += f" but WebGPU validation errors ({result['validation_errors'][0][:80]})"
    return f"; GPU accelerator: {where}, labels agree with the CPU {100 * result['label_agreement_with_cpu']:.2f}%"


def markdown_report(report):
    lines = [f"# Export of {os.path.basename(report['model'])} at {report['size'][0]}x{report['size'][1]}", ""]
    for warning in report.get("warnings", []):
        lines += [f"**WARNING: {warning}**", ""]
    if report.get("classes"):
        lines += [f"Classes ({report.get('labels')}): {', '.join(report['classes'])}", ""]
    for key, what in (("calibration_data", "int8 calibration data"), ("parity_data", "Parity data")):
        if report.get(key):
            lines += [f"{what[0].upper() + what[1:]}: {report[key]}", ""]
    status = report.get("gpu_accelerator", {})
    if status and not status.get("checked"):
        lines += [f"GPU accelerator not checked: {status.get('reason')}", ""]
    if "saved_model" in report:
        lines += [f"SavedModel: `{report['saved_model']['path']}`, signatures {report['saved_model']['signatures']}", ""]
    lines += ["| file | size MB | label agreement | logits max abs diff | mIoU (Keras -> exported) | GPU accelerator |",
              "|---|---|---|---|---|---|"]
    for filename, entry in report["files"].items():
        p = entry["parity"]
        diff = f"{p['logits_max_abs_diff']:.2e}" if "logits_max_abs_diff" in p else "n/a"
        miou = f"{100 * p['miou_reference']:.1f} -> {100 * p['miou']:.1f}" if "miou" in p else "n/a"
        if entry.get("gpu_accelerator"):
            g = entry["gpu_accelerator"]
            gpu = _gpu_text(g)[len("; GPU accelerator: "):]
        elif "tensorrt_issues" in entry:
            gpu = "TensorRT: " + ("no issues" if not entry["tensorrt_issues"] else f"{len(entry['tensorrt_issues'])} issue(s)")
        else:
            gpu = "n/a"
        lines.append(f"| {filename} | {entry['bytes'] / 1e6:.2f} | {100 * p['label_agreement']:.2f}% | {diff} | {miou} | {gpu} |")
    for filename, entry in report["files"].items():
        if entry.get("float_ops"):
            lines += ["", f"Ops still computing in float32 inside `{filename}`: "
                      + ", ".join(f"{k} x{v}" for k, v in entry["float_ops"].items())]
    return "\n".join(lines) + "\n"


def main(argv=None):
    """`python -m stt_keras.export.cli`: the stt-export command (stt_keras_cli.export.main)."""
    from stt_keras_cli.export import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
