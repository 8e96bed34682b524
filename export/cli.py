"""stt-export: a trained .keras model -> SavedModel (TF Serving), TFLite and ONNX streaming steps.

    stt-export --model runs/stt/model.keras --out exports/stt_tiny --size 128x256

writes, atomically (a failed or interrupted export leaves `--out` as it was):

    exports/NAME/saved_model/1/            TF Serving layout: serving_default (clip) and step
    exports/NAME/stt_<q>.tflite + .json    default-form step, q in float32 float16 dynamic_range
    exports/NAME/stt_gpu_<q>.tflite + .json  delegate-friendly step, q in float32 float16 dynamic_range
    exports/NAME/stt_int8.tflite + .json   full int8 (convolutions int8, the STT block float32),
                                           built from the loop-free (gpu) graph
    exports/NAME/stt_step.onnx + .json, stt_gpu_step.onnx + .json
    exports/NAME/export_report.json, export_report.md   parity, sizes, op lists, GPU/TensorRT checks
    exports/NAME/export_manifest.json      SHA-256 of every file (each model's .json also holds its own)

`--out` must be new, empty, or an earlier export (its manifest lists every file
in it): any other folder is refused, never deleted. Arguments that would write
no model, and frame sizes whose export needs more memory than the machine has
(estimated up front; `--no-memory-check` to try anyway), are refused before
anything is written.

Every .tflite is checked for Flex ops, variable ops and unfolded BatchNorm (the
export fails if it finds any) and against the GPU delegate's rules (reported).
Parity: each exported model streams the same held-out synthetic sequences as
the Keras model, each carrying its own state.
"""

import argparse
import json
import os
import sys
import time

import numpy as np

from stt_keras.errors import UserError, run_cli

# Full int8 comes from the loop-free "gpu" graph: the TFLite calibrator crashes
# (segfault, TF 2.21) on the default form's WHILE loops.
FORM_QUANTIZATIONS = {"default": ("float32", "float16", "dynamic_range"), "gpu": ("float32", "float16", "dynamic_range", "int8")}


def _parse_size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise UserError(f"stt-export: --size must look like 128x256, got {text!r}.") from None
    if h < 1 or w < 1:
        raise UserError(f"stt-export: --size must be positive (HxW, e.g. 128x256), got {text!r}.")
    return h, w


DEFAULT_QUANTIZATIONS = "float32,float16,dynamic_range,int8"


def plan_files(formats, forms, quantizations, explicit_quantizations=True):
    """The model files the arguments ask for; UserError if a requested format or quantization would write none."""
    files = []
    if "savedmodel" in formats:
        files.append("saved_model/1")
    if "tflite" in formats:
        made = set()
        for form in forms:
            for q in quantizations:
                if q in FORM_QUANTIZATIONS[form]:
                    made.add(q)
                    files.append("stt_int8.tflite" if q == "int8" else f"{'stt_gpu' if form == 'gpu' else 'stt'}_{q}.tflite")
        missing = [q for q in quantizations if q not in made]
        if missing and explicit_quantizations:
            raise UserError(
                f"stt-export: --quantizations {','.join(missing)} with --forms {','.join(forms) or '(none)'} writes no "
                f"TFLite model (int8 is built from the gpu form only); add --forms gpu or drop {','.join(missing)}.")
        if not quantizations:
            raise UserError("stt-export: --formats tflite with an empty --quantizations writes no TFLite model.")
    if "onnx" in formats:
        files += [f"{'stt_gpu' if form == 'gpu' else 'stt'}_step.onnx" for form in forms]
    if not files:
        raise UserError("stt-export: these arguments write no model (--formats, --forms or --quantizations is empty); "
                        "nothing was changed.")
    if formats - {"savedmodel"} and not forms:
        raise UserError("stt-export: --forms is empty: the TFLite and ONNX models need a step form (default, gpu).")
    return files


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


def build_parser():
    p = argparse.ArgumentParser(prog="stt-export", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="a .keras file from stt-train (loaded in safe mode)")
    p.add_argument("--out", required=True, help="export folder, e.g. exports/stt_psp18")
    p.add_argument("--size", default="128x256", help="frame size HxW the exported models take (default 128x256)")
    p.add_argument("--labels", default=None, help="label set for the metadata: synthetic, cityscapes, camvid (default: by class count)")
    p.add_argument("--formats", default="savedmodel,tflite,onnx", help="comma list of savedmodel, tflite, onnx")
    p.add_argument("--forms", default="default,gpu", help="comma list of step forms: default, gpu")
    p.add_argument("--quantizations", default=None,
                   help="TFLite quantizations (default: float32,float16,dynamic_range,int8, each where the forms allow it;"
                        " a quantization given here that no requested form can build is an error)")
    p.add_argument("--calibration-sequences", type=int, default=4, help="synthetic sequences for int8 calibration")
    p.add_argument("--calibration-frames", type=int, default=8)
    p.add_argument("--parity-sequences", type=int, default=2, help="held-out synthetic sequences for parity")
    p.add_argument("--parity-frames", type=int, default=8)
    p.add_argument("--threads", type=int, default=2, help="LiteRT/ONNX Runtime threads for parity runs")
    p.add_argument("--no-memory-check", action="store_true",
                   help="export even when the up-front memory estimate exceeds the memory available")
    return p


def _io_description(fn):
    concrete = fn.get_concrete_function()
    inputs = {s.name: {"shape": s.shape.as_list(), "dtype": s.dtype.name} for s in concrete.structured_input_signature[0]}
    outputs = {k: {"shape": v.shape.as_list(), "dtype": v.dtype.name} for k, v in concrete.structured_outputs.items()}
    return inputs, outputs


def _metadata(model, name, form, quantization, size, labels, io, extra):
    classes, palette = labels
    inputs, outputs = io
    return {
        "format": "stt-keras-step/1",
        "model": name,
        "form": form,
        "quantization": quantization,
        "input_size": list(size),
        "num_key_frames": model.num_key_frames,
        "classes": classes,
        "palette": palette,
        "normalization": "RGB in [0, 255] (uint8, or float32 for the gpu form); ImageNet mean/std applied inside the model",
        "state_layout": "[1, h, w, T * C]: projected key/value maps of the T previous frames, oldest first, "
                        "C = 2 * d_r; zeros with reset=1 on a stream's first frame",
        "inputs": inputs,
        "outputs": outputs,
        **extra,
    }


def _write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=float)


def _sha256_bytes(data):
    import hashlib

    return hashlib.sha256(data).hexdigest()


def run_export(args):
    import tensorflow as tf

    import stt_keras
    from export import atomic, calibration, labels as label_sets, onnx_export, parity, saved_model, step as step_lib, tflite
    from export.atomic import atomic_directory, check_destination, write_manifest

    size = _parse_size(args.size)
    formats = {f.strip() for f in args.formats.split(",") if f.strip()}
    forms = [f.strip() for f in args.forms.split(",") if f.strip()]
    explicit_quantizations = args.quantizations is not None
    quantizations = [q.strip() for q in (args.quantizations if explicit_quantizations else DEFAULT_QUANTIZATIONS).split(",")
                     if q.strip()]
    for values, allowed, what in ((formats, {"savedmodel", "tflite", "onnx"}, "--formats"),
                                  (forms, set(step_lib.FORMS), "--forms"),
                                  (quantizations, set(tflite.QUANTIZATIONS), "--quantizations")):
        unknown = set(values) - allowed
        if unknown:
            raise UserError(f"stt-export: unknown {what} {sorted(unknown)}; allowed: {sorted(allowed)}.")
    for name in ("calibration_sequences", "calibration_frames", "parity_sequences", "parity_frames", "threads"):
        if getattr(args, name) < 1:
            raise UserError(f"stt-export: --{name.replace('_', '-')} must be at least 1, got {getattr(args, name)}.")
    planned = plan_files(formats, forms, quantizations, explicit_quantizations)
    if not os.path.isfile(args.model):
        raise UserError(f"stt-export: model file not found: {args.model}")
    check_destination(args.out, protected=[args.model])

    model = stt_keras.load_model(args.model, compile=False)
    if model.stt is None and formats - {"savedmodel"}:
        raise UserError("stt-export: a per-frame model has no streaming step; export it with --formats savedmodel.")
    frames = model.num_key_frames + 1
    probe = (64, 128)
    model(np.zeros((1, frames, *probe, 3), np.uint8) if model.stt is not None else np.zeros((1, *probe, 3), np.uint8))
    if not args.no_memory_check:
        needed, available = estimate_memory(model, size, probe), available_memory()
        if available is not None and needed > available:
            raise UserError(
                f"stt-export: exporting at --size {size[0]}x{size[1]} needs about {needed / 2**30:.1f} GiB "
                f"(estimate), {available / 2**30:.1f} GiB is available; use a smaller --size or pass --no-memory-check.")
    try:
        label_name = args.labels or label_sets.guess_label_set(model.num_classes)
        labels = label_sets.label_set(label_name, model.num_classes)
    except ValueError as error:
        raise UserError(f"stt-export: --labels: {error}") from None
    name = os.path.splitext(os.path.basename(args.model))[0]

    try:
        from export import gpu_compat
    except ImportError:  # the checker is part of the package; keep exporting if it is broken
        gpu_compat = None

    report = {"model": os.path.abspath(args.model), "size": list(size), "labels": label_name, "files": {}}
    # Parity frames: held-out synthetic sequences at the export size.
    sequences = calibration.synthetic_frames(*size, args.parity_sequences, args.parity_frames, calibration.EVALUATION_SEED)
    miou_meaningful = label_name == "synthetic"

    with atomic_directory(args.out) as tmp:
        if "savedmodel" in formats:
            start = time.time()
            signatures = saved_model.save(model, os.path.join(tmp, "saved_model", "1"), *size)
            report["saved_model"] = {"path": "saved_model/1", "signatures": signatures, "seconds": time.time() - start}
            print(f"stt-export: SavedModel with signatures {signatures} ({time.time() - start:.0f} s)", flush=True)
        if model.stt is None:
            _write_json(os.path.join(tmp, "export_report.json"), report)
            write_manifest(tmp, {"model": report["model"], "size": list(size)})
            return report

        reference_fn = step_lib.make_step_function(model, *size, "default")
        state_shape = reference_fn.get_concrete_function().structured_input_signature[0][1].shape.as_list()
        reference = parity.stream(reference_fn, sequences, state_shape)

        for form in forms:
            fn = step_lib.make_step_function(model, *size, form)
            io = _io_description(fn)
            frame_dtype = np.float32 if form == "gpu" else np.uint8
            prefix = "stt_gpu" if form == "gpu" else "stt"
            if "tflite" in formats:
                frozen = tflite.frozen_function(fn)
                for quantization in quantizations:
                    if quantization not in FORM_QUANTIZATIONS[form]:
                        continue
                    start = time.time()
                    dataset = None
                    if quantization == "int8":
                        dataset = calibration.representative_dataset(
                            fn, *size, state_shape, args.calibration_sequences, args.calibration_frames, frame_dtype)
                    from export.gpu_step import STT_SCOPE

                    model_bytes, settings = tflite.convert(frozen, quantization, dataset, keep_float_scope=STT_SCOPE)
                    ops = tflite.check_ops(model_bytes)  # raises on Flex / variables / unfolded BN
                    # The one int8 model is named plainly (it is the only one), whatever its graph form.
                    filename = "stt_int8.tflite" if quantization == "int8" else f"{prefix}_{quantization}.tflite"
                    path = os.path.join(tmp, filename)
                    with open(path, "wb") as f:
                        f.write(model_bytes)
                    checksum = _sha256_bytes(model_bytes)
                    # Parity runs the file as written (checked against its checksum), not the bytes in memory.
                    candidate = parity.stream(parity.TFLiteStep(path, args.threads, expected_sha256=checksum),
                                              sequences, state_shape, frame_dtype)
                    entry = {
                        "form": form, "quantization": quantization, "bytes": len(model_bytes),
                        "seconds": time.time() - start, "ops": tflite.op_histogram(model_bytes),
                        "parity": parity.compare(reference, candidate, sequences, model.num_classes),
                    }
                    if quantization == "int8":
                        entry["float_ops"] = tflite.float_ops_in_quantized(model_bytes)
                    if gpu_compat is not None:
                        gpu = gpu_compat.check_model(model_bytes)
                        entry["gpu_delegate"] = gpu.to_dict()
                        entry["gpu_summary"] = gpu.summary()
                    if not miou_meaningful:
                        for key in ("miou", "miou_reference", "miou_drop_points"):
                            entry["parity"].pop(key, None)
                    meta = _metadata(model, name, form, quantization, size, labels, io,
                                     {"converter": settings, "parity": entry["parity"], "ops": sorted({o for o, _ in ops}),
                                      "sha256": checksum, "bytes": len(model_bytes)})
                    _write_json(os.path.join(tmp, filename.replace(".tflite", ".json")), meta)
                    report["files"][filename] = entry
                    agreement = entry["parity"]["label_agreement"]
                    print(f"stt-export: {filename}: {len(model_bytes) / 1e6:.2f} MB, labels agree {100 * agreement:.2f}%"
                          f" ({entry['seconds']:.0f} s)", flush=True)
            if "onnx" in formats:
                start = time.time()
                filename = f"{prefix}_step.onnx"
                path = os.path.join(tmp, filename)
                onnx_model = onnx_export.export(fn, step_lib.input_signature(model, *size, form), path)
                checksum = atomic.sha256_file(path)
                candidate = parity.stream(parity.OnnxStep(path, args.threads, expected_sha256=checksum),
                                          sequences, state_shape, frame_dtype)
                entry = {
                    "form": form, "bytes": os.path.getsize(path), "seconds": time.time() - start,
                    "op_types": onnx_export.op_types(onnx_model), "tensorrt_issues": onnx_export.tensorrt_issues(onnx_model),
                    "parity": parity.compare(reference, candidate, sequences, model.num_classes),
                }
                if not miou_meaningful:
                    for key in ("miou", "miou_reference", "miou_drop_points"):
                        entry["parity"].pop(key, None)
                meta = _metadata(model, name, form, "float32", size, labels, io,
                                 {"converter": {"tool": "tf2onnx", "opset": onnx_export.OPSET}, "parity": entry["parity"],
                                  "tensorrt_issues": entry["tensorrt_issues"], "sha256": checksum,
                                  "bytes": os.path.getsize(path)})
                _write_json(os.path.join(tmp, filename.replace(".onnx", ".json")), meta)
                report["files"][filename] = entry
                print(f"stt-export: {filename}: {entry['bytes'] / 1e6:.2f} MB, labels agree "
                      f"{100 * entry['parity']['label_agreement']:.2f}%, TensorRT issues: {len(entry['tensorrt_issues'])}", flush=True)
        _write_json(os.path.join(tmp, "export_report.json"), report)
        with open(os.path.join(tmp, "export_report.md"), "w") as f:
            f.write(markdown_report(report))
        missing = [p for p in planned if not os.path.exists(os.path.join(tmp, p))]
        if missing:  # never replace an export with one that lacks what was asked for
            raise RuntimeError(f"stt-export: the export did not write {missing}; --out is left as it was.")
        write_manifest(tmp, {"model": report["model"], "size": list(size)})
    print(markdown_report(report))
    return report


def markdown_report(report):
    lines = [f"# Export of {os.path.basename(report['model'])} at {report['size'][0]}x{report['size'][1]}", ""]
    if "saved_model" in report:
        lines += [f"SavedModel: `{report['saved_model']['path']}`, signatures {report['saved_model']['signatures']}", ""]
    lines += ["| file | size MB | label agreement | logits max abs diff | mIoU (Keras -> exported) | GPU delegate |",
              "|---|---|---|---|---|---|"]
    for filename, entry in report["files"].items():
        p = entry["parity"]
        diff = f"{p['logits_max_abs_diff']:.2e}" if "logits_max_abs_diff" in p else "n/a"
        miou = f"{100 * p['miou_reference']:.1f} -> {100 * p['miou']:.1f}" if "miou" in p else "n/a"
        if "gpu_delegate" in entry:
            g = entry["gpu_delegate"]
            gpu = "all ops" if g.get("compatible") else f"{len(g.get('partitions', []))} partition(s), not all ops"
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
    args = build_parser().parse_args(argv)
    run_cli("stt-export", run_export, args)


if __name__ == "__main__":
    main(sys.argv[1:])
