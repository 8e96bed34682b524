"""Image files read whole or refused: a truncated or damaged JPEG/PNG is an error naming the file.

OpenCV decodes a JPEG that ends early into a frame whose missing part is grey,
and says so only on stderr; a PNG that ends early gives None and "libpng error:
Read Error". So before decoding, the file's structure is walked (fast: the bytes
are searched in C, never looped over in Python), and the error says what is wrong:

- JPEG: the marker segments up to every scan, then the scan's entropy-coded data
  up to the next marker, until the end-of-image marker (EOI). A file that ends
  before EOI is truncated. Bytes after EOI (camera trailers, motion photos) are
  allowed.
- PNG: every chunk's length and CRC, until IEND. A chunk that runs past the end
  of the file, or no IEND, is truncated; a wrong CRC is damage.

Other formats go straight to OpenCV. `read_image` is the one function the
readers and the pre-flight scan (scan.py) decode with.
"""

import re
import zlib

import cv2
import numpy as np

IGNORE_LABEL = 255  # stt_keras.metrics.IGNORE_LABEL (this module imports no TensorFlow)
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
JPEG_START = b"\xff\xd8"
# The next marker after entropy-coded data: 0xFF followed by a byte that is not a stuffed 0x00, a restart
# marker (0xD0..0xD7) or another 0xFF (fill bytes may repeat before a marker).
_NEXT_MARKER = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
# Markers without a length field: TEM, RST0..7, SOI, EOI.
_STANDALONE = {0x01, *range(0xD0, 0xD8), 0xD8}


def jpeg_problem(data):
    """None for a JPEG that reaches its end-of-image marker, else what is wrong with it."""
    n = len(data)
    pos = 2
    while True:
        if pos + 2 > n:
            return f"truncated JPEG: the file ends at byte {n} before its end-of-image marker"
        if data[pos] != 0xFF:  # stray bytes between segments: decoders skip to the next marker, so do we
            m = _NEXT_MARKER.search(data, pos)
            if m is None:
                return f"truncated JPEG: the file ends at byte {n} before its end-of-image marker"
            pos = m.start()
            continue
        marker = data[pos + 1]
        if marker == 0xFF:  # a fill byte
            pos += 1
            continue
        if marker == 0xD9:
            return None
        if marker in _STANDALONE:
            pos += 2
            continue
        if pos + 4 > n:
            return f"truncated JPEG: the file ends at byte {n} inside a marker segment"
        length = int.from_bytes(data[pos + 2:pos + 4], "big")
        if length < 2:
            return f"damaged JPEG: a marker segment at byte {pos} has length {length}"
        pos += 2 + length
        if pos > n:
            return f"truncated JPEG: the file ends at byte {n} inside a marker segment"
        if marker == 0xDA:  # start of scan: entropy-coded data runs to the next marker
            m = _NEXT_MARKER.search(data, pos)
            if m is None:
                return f"truncated JPEG: the file ends at byte {n} inside the image data (no end-of-image marker)"
            pos = m.start()


def png_problem(data):
    """None for a PNG whose chunks are whole, with right CRCs, up to IEND; else what is wrong with it."""
    view = memoryview(data)
    n = len(data)
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= n:
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = bytes(data[pos + 4:pos + 8])
        end = pos + 12 + length
        name = kind.decode("latin-1")
        if end > n:
            return f"truncated PNG: chunk {name} at byte {pos} runs past the end of the file ({n} bytes)"
        if zlib.crc32(view[pos + 4:end - 4]) != int.from_bytes(data[end - 4:end], "big"):
            return f"damaged PNG: chunk {name} at byte {pos} has a wrong CRC"
        if kind == b"IEND":
            return None
        pos = end
    return f"truncated PNG: the file ends at byte {n} without its IEND chunk"


def palette_as_grey(data):
    """PNG bytes of a palette image (colour type 3) rewritten as greyscale of the same bit depth, else None.

    Decoded, the greyscale image holds the palette indices: what a palette label
    means (PIL's mode "P", Pascal VOC's and VSPW's masks). OpenCV would expand the
    palette to colours. Only IHDR (colour type 0), IDAT and IEND are kept: the
    other chunks (PLTE, tRNS, bKGD, ...) describe the palette. Call after the
    structure check (`png_problem`).
    """
    if data[:len(PNG_SIGNATURE)] != PNG_SIGNATURE or len(data) < 33 or data[12:16] != b"IHDR" or data[25] != 3:
        return None
    out = [PNG_SIGNATURE]
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        kind = data[pos + 4:pos + 8]
        body = bytearray(data[pos + 8:pos + 8 + length])
        if kind == b"IHDR":
            body[9] = 0  # colour type 3 (palette) -> 0 (greyscale), same bit depth
        if kind in (b"IHDR", b"IDAT", b"IEND"):
            out += [length.to_bytes(4, "big"), kind, bytes(body), zlib.crc32(kind + body).to_bytes(4, "big")]
        if kind == b"IEND":
            break
        pos += 12 + length
    return b"".join(out)


def structure_problem(data):
    """What is wrong with the structure of JPEG or PNG bytes (None if nothing, or another format)."""
    if data[:len(PNG_SIGNATURE)] == PNG_SIGNATURE:
        return png_problem(data)
    if data[:2] == JPEG_START:
        return jpeg_problem(data)
    return None


def decode_image(path, flags, palette_indices=False):
    """(cv2.imdecode of the file at `path` with `flags`, None) after the structure check, or (None, what is wrong).

    `palette_indices`: a palette PNG decodes to its indices (uint8 [H, W]), not its colours (labels).
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as error:
        return None, f"cannot be read ({error.strerror or error})"
    if not data:
        return None, "the file is empty"
    problem = structure_problem(data)
    if problem is not None:
        return None, problem
    grey = palette_as_grey(data) if palette_indices else None
    image = cv2.imdecode(np.frombuffer(grey or data, np.uint8), flags)
    if image is None:
        return None, "not an image OpenCV can decode (damaged, or another format)"
    depth = data[24] if grey else 8
    if depth < 8:  # OpenCV scales 1, 2 and 4-bit greyscale up to 0..255: back to the indices
        image = image // (255 // (2 ** depth - 1))
    return image, None


def read_image(path, flags, what="image", palette_indices=False):
    """cv2.imdecode of the file at `path` with `flags`, after the structure check; ValueError naming the file.

    `what` names the file in the message ("frame", "label"); `palette_indices` as `decode_image`.
    """
    image, problem = decode_image(path, flags, palette_indices)
    if problem is not None:
        raise ValueError(f"Cannot read {what} {path}: {problem}.")
    return image


def label_format_problem(shape, dtype):
    """What makes a decoded label unusable (None: a single-channel 8-bit image), as 'is ...' text."""
    channels = 1 if len(shape) == 2 else shape[2]
    if channels == 1 and np.dtype(dtype) == np.uint8:
        return None
    bits = np.dtype(dtype).itemsize * 8
    return (f"is a {channels}-channel {bits}-bit image; labels must be single-channel 8-bit images "
            f"(class indices, {IGNORE_LABEL} ignored)")
