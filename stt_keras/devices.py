"""Device set-up of the command-line tools.

TensorFlow's GPU build looks for CUDA devices when it loads. On a machine
without the NVIDIA driver (no `libcuda.so.1`), that probe cannot succeed and logs
"failed call to cuInit: ... (303)" as an error on every run. Without a driver
TensorFlow can only use the CPU anyway, so the commands tell it so up front
(`TF_ENABLED_DEVICE_TYPES=CPU`, read when TensorFlow loads): the probe never
runs and no other log line is hidden. A machine with the driver is left alone,
and so is a `TF_ENABLED_DEVICE_TYPES` the user set.

Only the commands call it (`stt_keras_cli.prepare_environment`, which loads this
file without importing the library, before TensorFlow loads): importing
`stt_keras` does not change the process's environment. A Python program that
wants the same sets `TF_ENABLED_DEVICE_TYPES=CPU` itself before its first
import of TensorFlow, Keras or `stt_keras` (docs/models.md).
"""

import ctypes
import os
import sys


def cuda_driver_present():
    """True if the NVIDIA driver library can be loaded (Linux; elsewhere always True: nothing to decide)."""
    if not sys.platform.startswith("linux"):
        return True
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def cpu_only_without_cuda_driver():
    """Restricts TensorFlow to the CPU when no CUDA driver is installed; returns True if it did.

    Call before TensorFlow is imported: it reads the variable when it loads.
    """
    if "TF_ENABLED_DEVICE_TYPES" in os.environ or cuda_driver_present():
        return False
    os.environ["TF_ENABLED_DEVICE_TYPES"] = "CPU"
    return True
