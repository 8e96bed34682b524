"""The export's GPU check: a .tflite compiled for LiteRT's GPU accelerator, the parity frames streamed through it."""

import os

import numpy as np

from stt_keras.export import parity
from stt_keras.utils.errors import UserError


class GpuChecker:
    """Compiles a .tflite for LiteRT's GPU accelerator and streams the parity frames through it.

    `mode`: --gpu-check (auto: when a Vulkan device is there; off; require: UserError without one, which
    the command reports as `stt-export: error: ...`, exit 2).
    `status` goes into the report; `check` returns a file's entry (None when not checked).
    """

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
                raise UserError(f"stt-export: --gpu-check require: {reason}")
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


def gpu_checker(mode):
    return GpuChecker(mode)


def gpu_text(result):
    """A file's GPU verdict as the console line's tail ("; GPU accelerator: ..."), "" when it was not checked."""
    if not result:
        return ""
    if "error" in result:
        return "; GPU accelerator: error"
    where = "all ops on the GPU" if result["fully_accelerated"] else f"{result['ops_on_cpu']} ops on the CPU"
    if result.get("validation_errors"):
        where += f" but WebGPU validation errors ({result['validation_errors'][0][:80]})"
    return f"; GPU accelerator: {where}, labels agree with the CPU {100 * result['label_agreement_with_cpu']:.2f}%"
