"""How the tests compare floats: the one rule, in one place.

Floats computed by TensorFlow (oneDNN), LiteRT/XNNPACK, ONNX Runtime or the native kernels
(compiled for the machine's CPU) are rounded differently on different CPUs: another SIMD width
or FMA availability changes the summation order of every reduction. So a float computed now is
never compared bit for bit with a number committed from another machine, or with another runtime:
it is compared with `assert_float32_close`, whose tolerance follows from float32 arithmetic and
the scale of the values:

    atol = C * eps32 * scale * sqrt(ops_depth)

- eps32 = 2**-23, the float32 machine epsilon (a rounding errs by at most eps32 / 2, relative).
- scale = max |expected|: every rounding is relative to the values it rounds, and in these
  models the intermediate values have the scale of the output (normalisations keep them there).
- ops_depth = the number of float32 roundings on the longest path from the inputs to one output:
  the sum of the reduction lengths of the chained operations (a Dense layer with k inputs adds k,
  a softmax over n keys adds n, a LayerNorm over d channels adds d, an elementwise op adds 1).
  Summation-order differences act like a random walk of that many steps: sqrt(ops_depth).
- C = 4. One run's error has a standard deviation of about (eps32 / 2) / sqrt(3) * scale *
  sqrt(ops_depth) (uniform rounding errors); two runs (two CPUs, two runtimes) differ by sqrt(2)
  times that; the largest of up to a million compared elements lies within 5 standard deviations:
  5 * sqrt(2) / (2 * sqrt(3)) = 2.04. Doubled for the gain of normalisations and softmax: C = 4.
  Measured: the STT block fixture (tests/data/stt_block_*.keras) run on another CPU path
  (AVX2 oneDNN, no oneDNN, the native kernel or not) differs from its committed output and from
  a float64 reference by 0.1-0.15 times that unit: C = 4 leaves a margin of about 30.

Exactness stays where it is a property of the code, not of the CPU: integer labels of the same
runtime, a state round trip (save/load, pack/unpack), the same function run twice in one process.
"""

import math

import numpy as np

EPS32 = float(np.finfo(np.float32).eps)
C = 4.0


def float32_tolerance(expected, ops_depth, scale=None):
    """The absolute tolerance for float32 results of `expected`'s scale after `ops_depth` roundings."""
    if ops_depth < 1:
        raise ValueError(f"ops_depth must be >= 1, got {ops_depth}")
    if scale is None:
        scale = float(np.max(np.abs(np.asarray(expected, np.float64)))) if np.size(expected) else 0.0
    return C * EPS32 * max(scale, np.finfo(np.float32).tiny) * math.sqrt(ops_depth)


def assert_float32_close(actual, expected, ops_depth, scale=None, err_msg=""):
    """Asserts |actual - expected| <= float32_tolerance(expected, ops_depth, scale) everywhere.

    Returns the tolerance, so a test can also check that a real change is far above it.
    """
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{err_msg}: shape {actual.shape} against {expected.shape}"
    finite = np.isfinite(expected)
    np.testing.assert_array_equal(actual[~finite], expected[~finite], err_msg=err_msg)  # inf, nan where expected
    atol = float32_tolerance(expected[finite], ops_depth, scale)
    difference = np.abs(actual[finite] - expected[finite])
    worst = float(np.max(difference)) if difference.size else 0.0
    if not worst <= atol:  # also catches a nan in actual
        used = scale if scale is not None else float(np.max(np.abs(expected[finite])))
        raise AssertionError(
            f"{err_msg}: {int(np.sum(~(difference <= atol)))} / {difference.size} elements differ by more than "
            f"atol = {C:g} * eps32 * {used:.4g} * sqrt({ops_depth}) = {atol:.3g}; max difference {worst:.3g}")
    return atol


def model_ops_depth(model):
    """An upper bound of `ops_depth` for a Keras model: the reduction lengths of all its kernels and
    normalisations summed (every path through the model is shorter than their sum)."""
    depth = 0
    for layer in model._flatten_layers(include_self=False):
        for weight in layer.weights:
            name = weight.path.split("/")[-1]
            if name in ("kernel", "depthwise_kernel") and len(weight.shape) >= 2:
                depth += int(np.prod(weight.shape[:-1])) if name == "kernel" else int(np.prod(weight.shape[:-2]))
            elif name in ("gamma", "moving_variance"):
                depth += int(weight.shape[-1])
    return max(depth, 1)


def assert_labels_match_logits(labels, logits, ops_depth, err_msg=""):
    """Labels computed by one runtime against the logits of another: equal to argmax(logits) except
    where the logit of the label is within float32 rounding (`float32_tolerance`) of the largest one,
    i.e. a near tie that another summation order may break either way.

    Returns the fraction of labels that equal argmax(logits) exactly.
    """
    labels = np.asarray(labels)
    logits = np.asarray(logits, np.float64)
    assert labels.shape == logits.shape[:-1], f"{err_msg}: labels {labels.shape} against logits {logits.shape}"
    atol = float32_tolerance(logits, ops_depth)
    best = logits.max(-1)
    chosen = np.take_along_axis(logits, labels[..., None].astype(np.int64), -1)[..., 0]
    far = best - chosen > 2 * atol  # both sides' roundings
    assert not far.any(), (
        f"{err_msg}: {int(far.sum())} / {labels.size} labels are not the argmax and not within 2 * {atol:.3g} of it "
        f"(largest gap {float((best - chosen).max()):.3g})")
    return float(np.mean(labels == logits.argmax(-1)))
