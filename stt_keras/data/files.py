"""tf.data pipeline over sample lists of image files (Cityscapes, CamVid, generic folders)."""

import cv2
import numpy as np
import tensorflow as tf

from stt_keras.data.images import label_format_problem, read_image
from stt_keras.data.cityscapes_ids import to_train_ids as cityscapes_to_train_ids
from stt_keras.metrics import IGNORE_LABEL
from stt_keras.data.pipeline import augment, check_label_values, sample_dataset
from stt_keras.data.readers import vspw_to_train_ids

LABEL_FORMATS = ("cityscapes", "index", "vspw")


def read_frame(path):
    """RGB uint8 [H, W, 3] of an image file; a clear error if it is missing or unreadable."""
    return read_image(path, cv2.IMREAD_COLOR, "frame")[..., ::-1]


def read_raw_label(path):
    """uint8 [H, W] of a single-channel 8-bit label file, as stored."""
    label = read_image(path, cv2.IMREAD_UNCHANGED, "label", palette_indices=True)
    problem = label_format_problem(label.shape, label.dtype)
    if problem is not None:
        raise ValueError(f"Label {path} {problem}.")
    return label


def to_train_ids(label, num_classes, label_format, path):
    """A stored label -> uint8 train ids ('cityscapes' labelIds, VSPW masks, or plain 'index' labels), checked."""
    if label_format == "vspw":
        try:
            label = vspw_to_train_ids(label)
        except ValueError as error:
            raise ValueError(f"Label {path}: {error}") from None
    elif label_format == "cityscapes":
        if label.max() > 33 and (label[label > 33] != 255).any():
            raise ValueError(f"Label {path} has labelIds above 33: {sorted(set(label[label > 33].tolist()) - {255})}.")
        label = cityscapes_to_train_ids(label)
    check_label_values(label, num_classes, f"label {path}")
    return label


def read_label(path, num_classes, label_format):
    """uint8 [H, W] train ids of a label file ('cityscapes' labelIds, 'vspw' masks or plain 'index' labels)."""
    return to_train_ids(read_raw_label(path), num_classes, label_format, path)


def load_clip(frame_paths, label_path, num_classes, label_format):
    frames = [read_frame(p) for p in frame_paths]
    shapes = {f.shape for f in frames}
    label = read_label(label_path, num_classes, label_format)
    if len(shapes) != 1 or next(iter(shapes))[:2] != label.shape:
        raise ValueError(f"Frames {frame_paths} and label {label_path} differ in size: {sorted(shapes)} vs {label.shape}.")
    return np.stack(frames), label


def make_file_dataset(samples, num_classes, batch_size, crop_size=None, training=True, seed=0,
                      label_format="index", repeat=None, skip=0, target_damage=0.0):
    """Batched (clip uint8 [B, T+1, H, W, 3], label int32 [B, H, W]) from (frame paths, label path) samples.

    Decoding runs in parallel (OpenCV releases the GIL) and any unreadable file
    stops the pipeline with an error naming it. Without a crop, every image must
    have the same size.

    Args:
        samples: list of (frame paths, label path), e.g. from `cityscapes_samples`.
        num_classes: classes of the labels (after mapping).
        label_format: "cityscapes" (labelIds, mapped to train ids), "vspw" (raw VSPW masks,
            mapped by `vspw_to_train_ids`) or "index".
        target_damage: training only: probability of damaging a clip's labelled frame (`augment`).
    """
    if not samples:
        raise ValueError("No samples to read.")
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {LABEL_FORMATS}, got {label_format!r}.")
    frame_paths = tf.constant([list(p) for p, _ in samples])
    label_paths = tf.constant([l for _, l in samples])
    num_frames = len(samples[0][0])

    def decode(frames, label):
        clip, lab = load_clip([f.decode() for f in frames.numpy()], label.numpy().decode(), num_classes, label_format)
        return clip, lab.astype(np.int32)

    def load(i, sample):
        frames, label = sample
        clip, lab = tf.py_function(decode, [frames, label], [tf.uint8, tf.int32])
        clip = tf.ensure_shape(clip, [num_frames, None, None, 3])
        lab = tf.ensure_shape(lab, [None, None])
        if training:
            clip, lab = augment(clip, lab, tf.stack([tf.cast(seed, tf.int64), i]), crop_size or (512, 1024),
                               target_damage=target_damage)
        elif crop_size is not None:
            clip = tf.image.resize_with_crop_or_pad(clip, *crop_size)
            lab = tf.image.resize_with_crop_or_pad(lab[..., None] - IGNORE_LABEL, *crop_size)[..., 0] + IGNORE_LABEL
        return clip, lab

    return sample_dataset((frame_paths, label_paths), load, batch_size, training, seed, repeat, skip)


class FrameFiles:
    """The frames of one sequence read from image files one at a time: len() and iteration, RGB uint8 [H, W, 3].

    Streaming evaluation and calibration hold one frame at a time, whatever the sequence length.
    """

    def __init__(self, paths):
        self.paths = list(paths)

    def __len__(self):
        return len(self.paths)

    def __iter__(self):
        return (read_frame(p) for p in self.paths)

    def __getitem__(self, index):
        if isinstance(index, slice):
            return FrameFiles(self.paths[index])
        return read_frame(self.paths[index])


class LabelFiles(dict):
    """{frame index: label path} that reads a label (checked against the classes) when it is looked up.

    `with_stored(index)` gives (train ids, the label as stored) from one read: the
    video consistency of VSPW's own script compares the stored masks (0 and 255 apart).
    """

    def __init__(self, paths, num_classes, label_format="index"):
        super().__init__(paths)
        self.num_classes, self.label_format = num_classes, label_format

    def __getitem__(self, index):
        return read_label(super().__getitem__(index), self.num_classes, self.label_format)

    def with_stored(self, index):
        path = super().__getitem__(index)
        stored = read_raw_label(path)
        return to_train_ids(stored, self.num_classes, self.label_format, path), stored

    def items(self):
        return ((k, self[k]) for k in self.keys())

    def values(self):
        return (self[k] for k in self.keys())
