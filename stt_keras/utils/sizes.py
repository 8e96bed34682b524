"""Frame sizes written HxW ("128x256"): the one parser of stt-train, stt-eval, stt-export and the benchmarks.

It lives in the library because every program that parses a size already
imports it (they all run TensorFlow). The edge demo, which must not import
stt_keras or TensorFlow, takes no size argument: it reads the size from the
exported model's metadata.
"""

import argparse


class SizeError(ValueError, argparse.ArgumentTypeError):
    """A size that is not two positive integers. A ValueError; as an argparse `type=` it shows its own message."""


def parse_size(value, what="size"):
    """'HxW' (or a (H, W) pair) -> (H, W), two positive integers; a SizeError naming `what` otherwise.

    Usable as an argparse `type=`: the error then reads `argument --crop: size must ...`.

    Example:
    >>> parse_size("128x256")
    (128, 256)
    >>> parse_size("64X64"), parse_size([32, 64])
    ((64, 64), (32, 64))
    >>> parse_size("512", "--crop")
    Traceback (most recent call last):
    ...
    stt_keras.utils.sizes.SizeError: --crop must look like 128x256 (height x width), got '512'
    """
    if isinstance(value, str):
        parts = value.strip().lower().split("x")
    elif isinstance(value, (tuple, list)):
        parts = list(value)
    else:
        raise SizeError(f"{what} must look like 128x256 (height x width), got {value!r}")
    try:
        if len(parts) != 2 or any(isinstance(p, (bool, float)) for p in parts):
            raise ValueError
        h, w = (int(p) for p in parts)
    except (TypeError, ValueError):
        raise SizeError(f"{what} must look like 128x256 (height x width), got {value!r}") from None
    if h < 1 or w < 1:
        raise SizeError(f"{what} must be positive (height x width), got {value!r}")
    return h, w


# The smallest frame side the commands take (--crop, --synthetic-size, stt-export --size): the synthetic
# video (training, evaluation, the export's calibration and parity frames) draws its scenes at 16 pixels or
# more, and below 16 every model's coarsest map (1/8 to 1/32 of the frame) is a single pixel.
MIN_FRAME_SIDE = 16


def parse_frame_size(value, what="size"):
    """`parse_size` for a frame size: also a SizeError when a side is below MIN_FRAME_SIDE.

    >>> parse_frame_size("8x8", "--size")
    Traceback (most recent call last):
    ...
    stt_keras.utils.sizes.SizeError: --size must be at least 16x16 (the synthetic video's smallest frame; below 16 every model's coarsest map is one pixel), got '8x8'
    """
    h, w = parse_size(value, what)
    if min(h, w) < MIN_FRAME_SIDE:
        raise SizeError(f"{what} must be at least {MIN_FRAME_SIDE}x{MIN_FRAME_SIDE} (the synthetic video's smallest "
                        f"frame; below {MIN_FRAME_SIDE} every model's coarsest map is one pixel), got {value!r}")
    return h, w
