"""Does int8 pay on this CPU? Two 3x3 convolutions, 256 -> 256 channels at 64 x 128, in LiteRT.

float32 vs full int8, each with the default XNNPACK delegate and without any
delegate (LiteRT's builtin kernels), at dilation 1, 2 and 4 (the dilated
convolutions of an output-stride-8 ResNet), 2 threads, side by side in one
process. On a CPU without int8 dot-product instructions (no AVX-VNNI /
AVX512-VNNI / ARM dotprod) XNNPACK's int8 kernels run at float32 speed, which
bounds what int8 can buy for the whole model (docs/performance.md, "Does int8 pay on this CPU?").

Run: python benchmarks/int8_conv.py
"""

import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from stt_keras_cli import load_library_module  # noqa: E402  (TensorFlow-free)

load_library_module("devices", "devices.py").cpu_only_without_cuda_driver()  # no CUDA probe without a driver

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.dirname(__file__))
from timing import timeit  # noqa: E402
from stt_keras.export import tflite  # noqa: E402


def cpu_flags():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("flags"):
                return sorted(f for f in line.split() if "avx" in f or "vnni" in f or f in ("fma", "f16c"))
    except OSError:
        pass
    return []


def main():
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    rng = np.random.default_rng(0)
    x = rng.normal(size=(1, 64, 128, 256)).astype(np.float32)
    print("CPU flags:", " ".join(cpu_flags()))
    for dilation in (1, 2, 4):
        w = tf.constant(rng.normal(size=(3, 3, 256, 256)).astype(np.float32) * 0.05)

        @tf.function(input_signature=[tf.TensorSpec(x.shape, tf.float32, name="x")])
        def convs(x):
            y = tf.nn.relu(tf.nn.conv2d(x, w, 1, "SAME", dilations=dilation))
            return {"y": tf.nn.relu(tf.nn.conv2d(y, w, 1, "SAME", dilations=dilation))}

        def representative():
            yield {"x": x}

        frozen = tflite.frozen_function(convs)
        models = {"float32": tflite.convert(frozen, "float32")[0], "int8": tflite.convert(frozen, "int8", representative)[0]}
        times = {}
        for name, model in models.items():
            for resolver in ("xnnpack", "builtin"):
                kwargs = {} if resolver == "xnnpack" else {
                    "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
                runner = Interpreter(model_content=model, num_threads=2, **kwargs).get_signature_runner()
                times[name, resolver] = timeit(lambda: runner(x=x), 5)
        for resolver in ("xnnpack", "builtin"):
            f32, i8 = times["float32", resolver], times["int8", resolver]
            print(f"dilation {dilation} {resolver:8s} float32 {1000 * f32:7.1f} ms  int8 {1000 * i8:7.1f} ms  "
                  f"int8/float32 {i8 / f32:4.2f}")


if __name__ == "__main__":
    main()
