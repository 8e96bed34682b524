"""stt-export's Markdown report (export_report.md, also printed at the end) from its JSON report."""

import os

from stt_keras.export.gpu_check import gpu_text


def markdown_report(report):
    lines = [f"# Export of {os.path.basename(report['model'])} at {report['size'][0]}x{report['size'][1]}", ""]
    for warning in report.get("warnings", []):
        lines += [f"**WARNING: {warning}**", ""]
    if report.get("classes"):
        lines += [f"Classes ({report.get('classes_source')}): {', '.join(report['classes'])}", ""]
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
            gpu = gpu_text(g)[len("; GPU accelerator: "):]
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
