"""What the int8 benchmarks share (int8_block.py, int8_float_head.py): the model arguments, the dense_masked-form step of a
model, its int8 conversions with the exporter's calibration, the Keras reference step and the interleaved latency.

    --model FILE | --preset NAME (random weights, latency only), --size HxW, --threads, --rounds, --repeats, --save
"""

import functools
import os
import statistics
import time

import numpy as np

from timing import interleaved_rounds


def add_model_arguments(parser, repeats):
    """The arguments both benchmarks take (`repeats`: the default steps per round)."""
    parser.add_argument("--model", default=None, help="a trained .keras file (agreement numbers need trained weights)")
    parser.add_argument("--preset", default=None, help="instead of --model: a preset with random weights (latency)")
    parser.add_argument("--size", default="64x128", help="frame size HxW")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--save", default=None, help="folder to write the int8 models to")


def check_model_arguments(parser, args):
    """(H, W) of --size; `parser.error` (one line, exit 2) for a bad --size, --rounds, --repeats or --threads, or not
    exactly one of --model and --preset."""
    if (args.model is None) == (args.preset is None):
        parser.error("give exactly one of --model and --preset")
    try:
        size = tuple(int(v) for v in args.size.split("x"))
    except ValueError:
        size = ()
    if len(size) != 2 or min(size) < 16:
        parser.error(f"--size {args.size}: expected HxW, both at least 16")
    for name in ("rounds", "repeats", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    return size


class GpuStep:
    """The dense_masked-form step of --model (or --preset, random weights, seed 0) at `size`: `fn` (the Keras step, what the
    exporter converts), `frozen` (its frozen graph), `state_shape` (packed) and `reference` (numpy outputs)."""

    def __init__(self, args, size):
        import tensorflow as tf

        import stt_keras
        from stt_keras.export import step as step_lib, tflite

        tf.config.threading.set_intra_op_parallelism_threads(args.threads)
        if args.model:
            self.model = stt_keras.load_model(args.model, compile=False)
        else:
            from stt_keras.models import STTSegmenter

            tf.keras.utils.set_random_seed(0)
            self.model = STTSegmenter.from_preset(args.preset, num_classes=19)
            self.model.build()
        self.size = size
        self.fn = step_lib.make_step_function(self.model, *size, "dense_masked")
        self.state_shape = list(self.model.state_shape(*size, packed=True))
        self.frozen = tflite.frozen_function(self.fn)

    def reference(self, **inputs):
        """The Keras float32 step on numpy inputs, numpy outputs (what parity.stream drives)."""
        return {k: v.numpy() for k, v in self.fn(**inputs).items()}

    def convert_int8(self, name, calibration_frames=(3, 6), save_as=None, show_block=False, **settings):
        """The int8 .tflite (bytes), calibrated as the exporter does (synthetic sequences x frames), other converter
        `settings` as given; one line with its size, conversion time (and with `show_block` what of the STT block is
        int8) and its float ops; written to the file `save_as` if given."""
        from stt_keras.export import calibration, tflite
        from stt_keras.export.gpu_step import STT_SCOPE

        dataset = calibration.representative_dataset(self.fn, *self.size, self.state_shape, *calibration_frames,
                                                     np.float32)
        start = time.time()
        model_bytes, used = tflite.convert(self.frozen, "int8", dataset, keep_float_scope=STT_SCOPE, **settings)
        block = f"; {used.get('quantized_in_float_scope', 'block float32')}" if show_block else ""
        print(f"{name}: {len(model_bytes) / 1e6:.3f} MB, converted in {time.time() - start:.0f} s{block}; "
              f"float ops {tflite.float_ops_in_quantized(model_bytes)}", flush=True)
        if save_as:
            os.makedirs(os.path.dirname(os.path.abspath(save_as)), exist_ok=True)
            with open(save_as, "wb") as f:
                f.write(model_bytes)
        return model_bytes


def interleaved_latency(runners, inputs, rounds, repeats):
    """{name: [median seconds of `repeats` steps, one per round]} of `runner(**inputs)`, the runners interleaved
    (`timing.interleaved_rounds`)."""
    return interleaved_rounds({name: functools.partial(runner, **inputs) for name, runner in runners.items()},
                              rounds, repeats)


def ratios_to(medians, base):
    """{name: (median, min, max) over the rounds of its time / `base`'s time in the same round}."""
    out = {}
    for name, times in medians.items():
        ratios = [t / b for t, b in zip(times, medians[base])]
        out[name] = (statistics.median(ratios), min(ratios), max(ratios))
    return out
