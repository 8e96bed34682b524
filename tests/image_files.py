"""Writing small image files for the data reader and scan tests."""

import os

import cv2
import numpy as np


def write(path, image):
    """Writes `image` at `path` (its folder made), asserting OpenCV wrote it; returns the path as a string."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return str(path)


def random_rgb(h, w, seed=0):
    """A [h, w, 3] uint8 image of uniform noise."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
