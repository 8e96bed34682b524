"""Frames for int8 calibration and parity checks: the user's own (`--calibration-data`) or the synthetic video.

A streaming step's inputs are (frame, state, reset); a realistic state is the one
the model itself produces while streaming a video, so calibration samples come
from running the (float) step over whole segments, reset on each first frame.

`--calibration-data` takes:
  * a folder in the generic layout (`frames/SEQ/*.png|jpg`, optional
    `labels/SEQ/STEM.png`), or a dataset root whose `SPLIT/` is one (as stt-train
    reads it); a CamVid root (its `frames/`) reads the same way, without labels;
  * a Cityscapes root (`leftImg8bit_sequence/SPLIT/CITY/...`): each run of consecutive frames of a recording
    is a sequence (unlabelled);
  * a VSPW root (`SPLIT.txt`, `data/VIDEO/origin/*.jpg`, `mask/*.png`): each video of the split,
    with its masks mapped to train ids (0 and 255 ignored);
  * a folder of images (one sequence, in file-name order);
  * a video file (anything OpenCV decodes);
  * a glob of frames, quoted (`'shots/*.png'`): one sequence per folder, in file-name order.
Frames are letterboxed to the export size the way the edge demo does it. The
segments (`--calibration-sequences` x `--calibration-frames` consecutive frames)
are spread evenly over the data; the parity segments are other segments of the
same data when there are enough (the report says when they overlap). Labels,
where the data has them, make the parity's mIoU meaningful; unlabelled pixels are
255 (ignored).
"""

import glob
import os

import cv2
import numpy as np

from stt_keras.data import readers
from stt_keras.data.files import read_frame, read_label
from stt_keras.data.synthetic import SyntheticVideo
from stt_keras.data.video import VideoFrames
from stt_keras.export.parity import stream_sequence
from stt_keras.metrics import IGNORE_LABEL
from stt_keras.utils.progress import Progress

CALIBRATION_SEED = 2000  # not the training seeds (0..) nor the evaluation seed (1000)
EVALUATION_SEED = 1000  # stt-eval's held-out synthetic sequences
IGNORE = IGNORE_LABEL  # the library's value (stt_keras.metrics), not a second constant
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")  # any image OpenCV reads; a folder layout takes png and jpeg


def synthetic_frames(height, width, num_sequences, frames_per_sequence, seed):
    """[(frames uint8 [N, H, W, 3], labels uint8 [N, H, W])] of synthetic sequences."""
    video = SyntheticVideo(num_sequences, frames_per_sequence, height, width, seed=seed)
    return [video.sequence(i) for i in range(num_sequences)]


def stream_inputs(step_fn, sequences, frame_dtype=np.uint8, state_shape=None):
    """Yields the (frame, state, reset) dict of every step of streaming `sequences` with `step_fn`.

    The states are the float step's own (`parity.stream_sequence`); a per-frame
    model (`state_shape` None) is not run: its inputs are the frames alone.
    """
    for frames, _ in sequences:
        for inputs, _ in stream_sequence(step_fn if state_shape is not None else None, frames, state_shape,
                                         frame_dtype):
            yield inputs


def representative_dataset(step_fn, height, width, state_shape, num_sequences=4, frames_per_sequence=8,
                           frame_dtype=np.uint8, sequences=None, description=None):
    """A converter `representative_dataset`: real streaming inputs, from `sequences` or synthetic ones.

    Args:
        sequences: [(frames [N, H, W, 3] at the export size, labels)] (e.g. from
            `UserData.segments`); None: synthetic sequences (CALIBRATION_SEED).
        description: what the frames are, for the converter settings and the report.
    """
    if sequences is None:
        sequences = synthetic_frames(height, width, num_sequences, frames_per_sequence, CALIBRATION_SEED)
        description = (
            f"synthetic video, seed {CALIBRATION_SEED}: {num_sequences} sequences x {frames_per_sequence} frames "
            f"at {height}x{width}, states from the float model's own stream"
        )
    total = sum(len(frames) for frames, _ in sequences)
    passes = []

    def generate():
        passes.append(1)
        progress = Progress(f"stt-export: int8 calibration (pass {len(passes)})", total, "frames")
        for inputs in stream_inputs(step_fn, sequences, frame_dtype, state_shape):
            yield inputs
            progress.update()
        progress.close()

    generate.description = description or "custom sequences"
    return generate


# ------------------------------------------------------------------ the user's frames


def letterbox_frame(frame, height, width):
    """(frame resized keeping its aspect ratio and padded with black to height x width, (top, left, h, w))."""
    from stt_edge_demo.overlay import letterbox

    return letterbox(frame, height, width)


def letterbox_label(label, box, height, width):
    """A label map put through the same letterbox (nearest neighbour), padding 255."""
    top, left, ch, cw = box
    out = np.full((height, width), IGNORE, np.uint8)
    out[top:top + ch, left:left + cw] = cv2.resize(label, (cw, ch), interpolation=cv2.INTER_NEAREST)
    return out


class _Sequence:
    """One sequence of the user's data: frame paths (or a video), labels {index: path}."""

    def __init__(self, name, paths=None, video=None, labels=None, label_format="index"):
        self.name, self.paths = name, paths
        self.labels = labels or {}
        self.label_format = label_format
        if video is not None:
            self.video = VideoFrames(video)  # refused here if it does not open or decode, not later by the converter
            self.length = len(self.video)
        else:
            self.length = len(paths)

    def read(self, start, stop):
        """RGB frames [start, stop) of the sequence."""
        if self.paths is not None:
            return [read_frame(p) for p in self.paths[start:stop]]
        return list(self.video.frames(start, stop))


def _split_folder(spec, split):
    for candidate in (spec, os.path.join(spec, split)):
        if os.path.isdir(os.path.join(candidate, "frames")):
            return candidate
    return None


def read_user_data(spec, split="val"):
    """(sequences, kind) of a --calibration-data SPEC (module docstring); FileNotFoundError/ValueError naming the problem."""
    if any(ch in spec for ch in "*?[") and not os.path.exists(spec):
        groups = readers.frames_by_folder(glob.glob(spec), IMAGE_SUFFIXES)
        if not groups:
            raise FileNotFoundError(f"--calibration-data {spec!r}: the pattern matches no image file "
                                    f"({', '.join(IMAGE_SUFFIXES)}).")
        return [_Sequence(folder, paths) for folder, paths in groups.items()], "frames matching a glob"
    if os.path.isfile(spec):
        return [_Sequence(os.path.basename(spec), video=spec)], "video file"
    if not os.path.isdir(spec):
        raise FileNotFoundError(f"--calibration-data {spec}: no such file, folder or matching frames.")
    root = _split_folder(spec, split)
    if root is not None:
        listed = readers.folder_sequences(root)
        kind = "folder layout" + ("" if root == spec else f" (split {split})")
        return [_Sequence(name, paths, labels=labels) for name, paths, labels in listed], kind
    if os.path.isfile(os.path.join(spec, f"{split}.txt")) and os.path.isdir(os.path.join(spec, "data")):
        listed = readers.vspw_sequences(spec, split, require_labels=False)
        return ([_Sequence(name, paths, labels=labels, label_format="vspw") for name, paths, labels in listed],
                f"VSPW (split {split})")
    if os.path.isdir(os.path.join(spec, "leftImg8bit_sequence", split)):
        listed = readers.cityscapes_sequences(spec, split, before=None)  # every recording, unlabelled
        if listed:
            return [_Sequence(name, paths) for name, paths, _ in listed], f"Cityscapes video (split {split})"
    groups = readers.frames_by_folder((os.path.join(spec, name) for name in os.listdir(spec)), IMAGE_SUFFIXES)
    if groups:
        return [_Sequence(folder, paths) for folder, paths in groups.items()], "folder of frames"
    raise FileNotFoundError(
        f"--calibration-data {spec}: no frames found (expected frames/SEQUENCE/*.png, {split}/frames/SEQUENCE/*.png, "
        f"leftImg8bit_sequence/{split}/, {split}.txt with data/ (VSPW), image files, a video file or a quoted glob such as 'frames/*.png').")


def _segments(sequences, length, overlapping=False):
    """(sequence, start, stop) cuts of `length` consecutive frames (a shorter sequence is one cut).

    Back to back by default; `overlapping`: every start (a short dataset still gives several cuts).
    """
    cuts = []
    for sequence in sequences:
        if sequence.length <= length:
            cuts.append((sequence, 0, sequence.length))
        else:
            step = 1 if overlapping else length
            cuts += [(sequence, s, s + length) for s in range(0, sequence.length - length + 1, step)]
    return [c for c in cuts if c[2] > c[1]]


def _shares_frames(cut, others):
    return any(cut[0] is o[0] and cut[1] < o[2] and o[1] < cut[2] for o in others)


def _spread(items, count):
    """`count` items spread evenly over `items` (all of them if there are fewer)."""
    if len(items) <= count:
        return list(items)
    return [items[int(i)] for i in np.linspace(0, len(items) - 1, count).round().astype(int)]


class UserData:
    """The user's frames for calibration and parity, letterboxed to the export size.

    Args:
        spec: --calibration-data (module docstring).
        height, width: the export size.
        num_classes: the model's classes (labels are checked against them; may be set after listing).
        split: the split of a dataset root.
    """

    def __init__(self, spec, height, width, num_classes, split="val"):
        self.spec, self.height, self.width, self.num_classes = spec, height, width, num_classes
        self.sequences, self.kind = read_user_data(spec, split)
        self.total_frames = sum(s.length for s in self.sequences)
        if self.total_frames == 0:  # e.g. a video container declaring 0 frames: nothing to calibrate or check on
            raise ValueError(f"{spec} ({self.kind}) has no frames.")
        self.has_labels = any(s.labels for s in self.sequences)

    def _load(self, cut):
        sequence, start, stop = cut
        frames, labels = [], []
        for index, frame in zip(range(start, stop), sequence.read(start, stop)):
            boxed, box = letterbox_frame(frame, self.height, self.width)
            frames.append(boxed)
            label = np.full((self.height, self.width), IGNORE, np.uint8)
            if index in sequence.labels:
                raw = read_label(sequence.labels[index], self.num_classes, sequence.label_format)
                if raw.shape != frame.shape[:2]:
                    raise ValueError(f"Label {sequence.labels[index]} is {raw.shape[1]}x{raw.shape[0]}, its frame "
                                     f"{frame.shape[1]}x{frame.shape[0]}.")
                label = letterbox_label(raw, box, self.height, self.width)
            labels.append(label)
        return np.stack(frames), np.stack(labels)

    def segments(self, num_segments, length, exclude=()):
        """(sequences [(frames [n, H, W, 3] uint8, labels [n, H, W] uint8)], description, overlaps).

        The cuts are spread evenly over the data, back to back where there are enough
        frames, overlapping where there are not. `exclude`: cuts already used (by
        calibration): cuts that share no frame with them are preferred; `overlaps`
        says whether some frames had to be reused.
        """
        cuts = _segments(self.sequences, length)
        if len(cuts) < num_segments:
            cuts = _segments(self.sequences, length, overlapping=True)
        fresh = [c for c in cuts if not _shares_frames(c, exclude)]
        overlaps = len(fresh) < min(num_segments, len(cuts))
        chosen = _spread(fresh if not overlaps else cuts, num_segments)
        progress = Progress("stt-export: reading frames", sum(c[2] - c[1] for c in chosen), "frames")
        loaded = []
        for cut in chosen:
            loaded.append(self._load(cut))
            progress.update(cut[2] - cut[1])
        progress.close()
        frames = sum(len(f) for f, _ in loaded)
        labelled = sum(int((l != IGNORE).any(axis=(1, 2)).sum()) for _, l in loaded)
        description = (f"{self.kind} {os.path.abspath(self.spec) if not any(c in self.spec for c in '*?[') else self.spec}"
                       f": {len(loaded)} segment(s), {frames} frames ({labelled} labelled) of {len(self.sequences)} "
                       f"sequence(s) / {self.total_frames} frames, letterboxed to {self.height}x{self.width}")
        self.last_cuts = chosen
        return loaded, description, overlaps


def trained_on(model_path):
    """(dataset, data root, source file) the model's training run recorded, or None if there is no record.

    stt-train writes run.json next to last.keras / best.keras with the run's settings.
    """
    folder = os.path.dirname(os.path.abspath(model_path))
    for candidate in (os.path.join(folder, "run.json"), os.path.join(os.path.dirname(folder), "run.json")):
        if os.path.isfile(candidate):
            import json

            try:
                with open(candidate) as f:
                    settings = json.load(f)["settings"]
                return settings.get("dataset"), settings.get("data_root"), settings.get("val_split"), candidate
            except (OSError, ValueError, KeyError, TypeError):
                return None
    return None


def synthetic_mismatch(model_path, num_classes, synthetic_classes):
    """Why a model calibrated on synthetic frames is probably not a synthetic-data model (a sentence), else None."""
    record = trained_on(model_path)
    if record is not None and record[0] and record[0] != "synthetic":
        dataset, root, split, source = record
        path = os.path.join(root, split or "val") if dataset == "folder" and root else root
        hint = f" (e.g. --calibration-data {path})" if path else ""
        return (f"it was trained on --dataset {dataset} ({source})", hint)
    if num_classes != synthetic_classes:
        return (f"it predicts {num_classes} classes, the synthetic video has {synthetic_classes}", "")
    return None
