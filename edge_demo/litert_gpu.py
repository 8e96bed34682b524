"""LiteRT's GPU accelerator (CompiledModel + HardwareAccelerator.GPU) behind a plain call interface.

No TensorFlow here: edge_demo, the exporter's checks and the tests share this module.

`ai-edge-litert` ships the accelerator as `libLiteRtWebGpuAccelerator.so` (WebGPU on
Vulkan, Metal or D3D). On a machine without a GPU it runs on a software Vulkan device:
Debian's `chromium` package ships SwiftShader, selected with
`VK_ICD_FILENAMES=/usr/lib/chromium/vk_swiftshader_icd.json` (see `software_vulkan_env`).
SwiftShader emulates a GPU on the CPU: use it for correctness, never for speed.

    model = GpuModel("stt_gpu_float32.tflite")      # GPU only: ops the GPU refuses go to the CPU
    model.fully_accelerated                          # True when no op runs on the CPU
    outputs = model(frame=..., state=..., reset=...)  # {name: array}, like a signature runner
"""

import os
import re
import sys
import tempfile

import numpy as np

SWIFTSHADER_ICD = "/usr/lib/chromium/vk_swiftshader_icd.json"
# Chromium ships its own Vulkan loader next to SwiftShader; the system may have none (libvulkan1).
CHROMIUM_VULKAN_LOADER = "/usr/lib/chromium/libvulkan.so.1"

# What the accelerator logs while it compiles (stderr of the native library).
_SPLIT_RE = re.compile(r"(\d+) operations will run on the GPU, and the remaining (\d+) operations will run on the CPU")


def _system_icds():
    """Vulkan drivers installed system-wide, except Mesa's lavapipe (Debian 12's is too old for
    WebGPU: "No adapters found")."""
    import glob

    found = []
    for folder in ("/usr/share/vulkan/icd.d", "/etc/vulkan/icd.d", "/usr/local/share/vulkan/icd.d"):
        found += [p for p in glob.glob(os.path.join(folder, "*.json")) if "lvp" not in os.path.basename(p)]
    return found


def software_vulkan_env(icd=SWIFTSHADER_ICD, force=False):
    """Prepares the process for the GPU accelerator; returns why it cannot, or None.

    Keeps a VK_ICD_FILENAMES already set and uses a real Vulkan driver when one is installed;
    otherwise (or with `force`) selects SwiftShader. Also sets a private XDG_RUNTIME_DIR when
    there is none and makes a Vulkan loader loadable. Must run before the first CompiledModel
    is created (the Vulkan loader reads the variables once).
    """
    if force or ("VK_ICD_FILENAMES" not in os.environ and not _system_icds()):
        if not os.path.isfile(icd):
            return f"no Vulkan device configured and no SwiftShader ICD at {icd} (apt-get install chromium)"
        os.environ["VK_ICD_FILENAMES"] = icd
    if not os.environ.get("XDG_RUNTIME_DIR") or not os.path.isdir(os.environ["XDG_RUNTIME_DIR"]):
        os.environ["XDG_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="litert-xdg-")  # mkdtemp: mode 0700
    return _load_vulkan_loader()


def _load_vulkan_loader():
    """Makes `libvulkan.so.1` loadable: the system's, else Chromium's (loaded once by path, global
    symbols, so WebGPU's later dlopen("libvulkan.so.1") finds it by its soname)."""
    import ctypes

    try:
        ctypes.CDLL("libvulkan.so.1", mode=ctypes.RTLD_GLOBAL)
        return None
    except OSError:
        pass
    if os.path.isfile(CHROMIUM_VULKAN_LOADER):
        try:
            ctypes.CDLL(CHROMIUM_VULKAN_LOADER, mode=ctypes.RTLD_GLOBAL)
            return None
        except OSError as error:
            return f"cannot load {CHROMIUM_VULKAN_LOADER}: {error}"
    return "no Vulkan loader (libvulkan.so.1): apt-get install chromium (or libvulkan1)"


class _CaptureStderr:
    """Captures the native library's stderr (fd 2) while compiling, and passes it on."""

    def __enter__(self):
        sys.stderr.flush()
        self._saved = os.dup(2)
        self._file = tempfile.TemporaryFile(mode="w+b")
        os.dup2(self._file.fileno(), 2)
        return self

    def __exit__(self, *exc):
        os.dup2(self._saved, 2)
        os.close(self._saved)
        self._file.seek(0)
        self.text = self._file.read().decode(errors="replace")
        self._file.close()
        return False


class GpuModel:
    """A .tflite model compiled for LiteRT's GPU accelerator (serving_default signature).

    Args:
        model: path or bytes of a .tflite model.
        cpu_fallback: also allow the CPU (ops the GPU refuses run there); without it
            LiteRT still runs refused ops on the CPU, and `fully_accelerated` says so.
        enforce_f32: GpuOptions.enforce_f32 (float32 arithmetic on the GPU; default float16
            where the device allows it).
        cpu: compile for the CPU only (the reference path, same API).
    """

    def __init__(self, model, cpu_fallback=False, enforce_f32=False, cpu=False, threads=2, verbose=False):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import CpuOptions, GpuOptions, Options

        if not cpu:
            reason = software_vulkan_env()
            if reason:
                raise RuntimeError(reason)
        accel = HardwareAccelerator.CPU if cpu else HardwareAccelerator.GPU
        if cpu_fallback and not cpu:
            accel = accel | HardwareAccelerator.CPU
        options = Options(hardware_accelerators=accel, cpu_options=CpuOptions(num_threads=threads),
                          gpu_options=None if cpu else GpuOptions(enforce_f32=enforce_f32))
        try:
            with _CaptureStderr() as log:
                if isinstance(model, (bytes, bytearray)):
                    self.model = CompiledModel.from_buffer(bytes(model), options=options)
                else:
                    self.model = CompiledModel.from_file(str(model), options=options)
        finally:
            self.log = getattr(log, "text", "")
            if self.log and verbose:
                sys.stderr.write(self.log)
        self.fully_accelerated = self.model.is_fully_accelerated()
        split = _SPLIT_RE.findall(self.log)
        # (ops on the GPU, ops on the CPU) as the accelerator reports them (None if it did not say)
        self.op_split = tuple(int(v) for v in split[-1]) if split else None
        self.refused = refused_ops(self.log)
        # WebGPU validation errors (e.g. a tensor above the device's texture size): the model still
        # "runs", with wrong numbers or a failed read. Any of them means the compiled model is broken.
        self.validation_errors = [line.split("Validation error:", 1)[1].strip()
                                  for line in self.log.splitlines() if "Validation error:" in line]
        signatures = self.model.get_signature_list()
        self.signature = "serving_default" if "serving_default" in signatures else next(iter(signatures))
        self.input_details = self.model.get_input_tensor_details(self.signature)
        self.output_details = self.model.get_output_tensor_details(self.signature)
        index = self.model.get_signature_index(self.signature)
        self._inputs = dict(zip(signatures[self.signature]["inputs"], self.model.create_input_buffers(index)))
        self._outputs = dict(zip(signatures[self.signature]["outputs"], self.model.create_output_buffers(index)))

    def __call__(self, **inputs):
        for name, buffer in self._inputs.items():
            dtype = np.dtype(self.input_details[name]["dtype"])
            buffer.write(np.ascontiguousarray(inputs[name], dtype))
        self.model.run_by_name(self.signature, self._inputs, self._outputs)
        out = {}
        for name, buffer in self._outputs.items():
            detail = self.output_details[name]
            shape = [int(d) for d in detail["shape"]]
            out[name] = buffer.read(int(np.prod(shape)), np.dtype(detail["dtype"])).reshape(shape)
        return out


def refused_ops(log):
    """{op name: [reasons]} of the ops the accelerator's compile log lists as not supported."""
    refused, inside = {}, False
    for line in log.splitlines():
        if "operations are not supported by GPU delegate" in line:
            inside = True
            continue
        if not inside:
            continue
        match = re.match(r"\s*([A-Z][A-Z_0-9]*): (.*)", line)
        if not match or "operations will run" in line:
            inside = False
            continue
        refused.setdefault(match.group(1), []).append(match.group(2).strip())
    return refused
