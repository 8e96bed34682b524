"""Does the native kernel cost training anything? One train step of `stt_psp_tiny`, both ways.

The native ops' gradients recompute the pure-TF forward in the backward pass, so a
training step runs the native forward on top of the pure-TF forward and backward.
This times the same compiled train step (batch 4, clips of 4 frames at 128x128)
with the native kernels and under `portable_ops()` (pure TF), interleaved in one
process, and prints the medians and their ratio.

Run: python benchmarks/train_step_native.py [--repeats 8]
"""

import argparse
import contextlib
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from stt_keras_cli import load_library_module  # noqa: E402  (TensorFlow-free)

load_library_module("devices", "devices.py").cpu_only_without_cuda_driver()  # no CUDA probe without a driver
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from stt_keras import kernels  # noqa: E402
from stt_keras.models import STTSegmenter  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=8)
    args = p.parse_args()
    print(f"native kernel: {kernels.native_status()}")
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=7)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 255, (4, 4, 128, 128, 3)).astype("uint8")
    y = rng.integers(0, 7, (4, 128, 128))
    model(x[:1])
    optimizer = keras.optimizers.SGD(0.01)
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

    def make(portable):
        @tf.function
        def step(x, y):
            with kernels.portable_ops() if portable else contextlib.nullcontext():
                with tf.GradientTape() as tape:
                    loss = loss_fn(y, model(x, training=True))
                grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables))
            return loss

        return step

    steps = {"native": make(False), "pure TF": make(True)}
    for step in steps.values():
        step(x, y)
    times = {k: [] for k in steps}
    for _ in range(args.repeats):
        for k, step in steps.items():
            start = time.perf_counter()
            step(x, y).numpy()
            times[k].append(time.perf_counter() - start)
    for k, t in times.items():
        print(f"{k:8s} train step {1e3 * np.median(t):7.1f} ms (median of {args.repeats})")
    print(f"native / pure TF: {np.median(times['native']) / np.median(times['pure TF']):.2f}")


if __name__ == "__main__":
    main()
