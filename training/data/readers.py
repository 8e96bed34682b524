"""Sample lists for real video datasets, in their exact on-disk layouts.

A sample is (frame paths [T+1] oldest first, label path): a clip of T+1 frames
taken every `frame_stride` frames and ending at an annotated frame. Listing
checks that every frame exists; a missing one raises FileNotFoundError naming it,
unless `skip_incomplete=True`, in which case the sample is dropped and counted
(`SampleList.skipped`).

Cityscapes video:
    leftImg8bit_sequence/{split}/{city}/{city}_{seq:06d}_{frame:06d}_leftImg8bit.png
    gtFine/{split}/{city}/{city}_{seq:06d}_{frame:06d}_gtFine_labelIds.png
  Each 30-frame snippet is annotated at its 20th frame (snippet index 19): the
  gtFine file's frame number. The clip is that frame and the T * stride frames
  before it, by frame number. Labels are labelIds, mapped to the 19 train ids.

CamVid video (our layout; the official release has no video frames):
    {root}/frames/{seq}/{seq}_{frame:06d}.png   every frame of the 30 Hz recordings
    {root}/labels/{split}/{seq}_{frame:06d}.png class indices 0..10, 255 = void
  Produce it from the official files: extract the frames of 0001TP, 0006R0,
  0016E5 and Seq05VD with `ffmpeg -i 0016E5.MXF frames/0016E5/0016E5_%06d.png`
  (frame numbers must match the numbers in the label names, e.g. 0016E5_08550),
  and convert the colour labels (`*_L.png`) with `camvid_colour_to_index`, which
  knows the 11 class colours (Sky, Building, Pole, Road, Sidewalk, Tree,
  SignSymbol, Fence, Car, Pedestrian, Bicyclist); any other colour becomes void.
  The usual split (367 / 101 / 233 labelled frames) goes into labels/train, val
  and test. Check the frame offset of your ffmpeg extraction on one labelled
  frame: some tools number from 1.

Generic folders:
    {root}/frames/{seq}/*.png|*.jpg     every frame, ordered by file name
    {root}/labels/{seq}/{stem}.png      sparse labels, same stem as their frame,
                                        class indices, 255 ignored
  When the frames of a sequence are numbered (a common prefix and a number,
  e.g. img_000.jpg, img_001.jpg, ...), a clip is taken by frame number: a gap in
  the numbering is a missing frame, an error naming it (or, with
  skip_incomplete=True, the clips that need it are skipped), never a clip of
  frames that are not consecutive.
"""

import functools
import glob
import os
import re

import numpy as np

CAMVID_CLASSES = (
    "Sky", "Building", "Column_Pole", "Road", "Sidewalk", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
)
# RGB colours of the 11 CamVid classes in the official colour labels.
CAMVID_COLOURS = np.array(
    [[128, 128, 128], [128, 0, 0], [192, 192, 128], [128, 64, 128], [0, 0, 192], [128, 128, 0],
     [192, 128, 128], [64, 64, 128], [64, 0, 128], [64, 64, 0], [0, 128, 192]],
    np.uint8,
)


class SampleList(list):
    """A list of (frame paths, label path) with the number of samples skipped."""

    skipped = 0


def _clip(frame_path_of, end, num_key_frames, frame_stride):
    return [frame_path_of(end - k * frame_stride) for k in range(num_key_frames, -1, -1)]


def _collect(candidates, num_key_frames, frame_stride, skip_incomplete):
    samples = SampleList()
    for frame_path_of, end, label in candidates:
        if end - num_key_frames * frame_stride < 0:
            missing = f"frame {end - num_key_frames * frame_stride} (before the start of the sequence)"
            paths = None
        else:
            paths = _clip(frame_path_of, end, num_key_frames, frame_stride)
            missing = next((p for p in paths if not os.path.isfile(p)), None)
        if missing is not None:
            if skip_incomplete:
                samples.skipped += 1
                continue
            raise FileNotFoundError(
                f"Clip for label {label} needs {missing}, which does not exist "
                f"(T={num_key_frames}, stride={frame_stride}; pass skip_incomplete=True to skip such clips)."
            )
        samples.append((paths, label))
    return samples


def _label_candidates(label_dir, dataset, label_glob, pattern, frame_path, misnamed=None):
    """(path_of(frame number), labelled frame number, label path) for every label file of a split.

    The labels are the files `label_glob` under `label_dir`, sorted. `pattern` matches a
    label's file name: its "frame" group is the labelled frame's number, and
    `frame_path(match, number)` names a frame of the label's sequence. A label whose
    name does not match is passed over, or, given `misnamed` (how labels are named),
    an error.
    """
    if not os.path.isdir(label_dir):
        raise FileNotFoundError(f"No {dataset} labels at {label_dir}.")
    candidates = []
    for label in sorted(glob.glob(os.path.join(label_dir, label_glob))):
        m = pattern.match(os.path.basename(label))
        if m is None:
            if misnamed is None:
                continue
            raise ValueError(f"{dataset} label {label} is not named {misnamed}.")
        candidates.append((functools.partial(frame_path, m), int(m["frame"]), label))
    return candidates


_CITYSCAPES_LABEL = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})_gtFine_labelIds\.png$")
_CAMVID_LABEL = re.compile(r"^(?P<seq>.+)_(?P<frame>\d+)\.png$")


def cityscapes_samples(root, split, num_key_frames, frame_stride=1, skip_incomplete=False):
    """Clips ending at every annotated frame of a Cityscapes split."""
    label_dir = os.path.join(root, "gtFine", split)

    def frame_path(m, f):
        city = m["city"]
        return os.path.join(root, "leftImg8bit_sequence", split, city, f"{city}_{int(m['seq']):06d}_{f:06d}_leftImg8bit.png")

    candidates = _label_candidates(
        label_dir, "Cityscapes", os.path.join("*", "*_gtFine_labelIds.png"), _CITYSCAPES_LABEL, frame_path)
    if not candidates:
        raise FileNotFoundError(f"No *_gtFine_labelIds.png files under {label_dir}.")
    return _collect(candidates, num_key_frames, frame_stride, skip_incomplete)


def camvid_samples(root, split, num_key_frames, frame_stride=1, skip_incomplete=False):
    """Clips ending at every labelled frame of a CamVid split (layout above)."""

    def frame_path(m, f):
        return os.path.join(root, "frames", m["seq"], f"{m['seq']}_{f:06d}.png")

    candidates = _label_candidates(
        os.path.join(root, "labels", split), "CamVid", "*.png", _CAMVID_LABEL, frame_path,
        misnamed="{sequence}_{frame}.png")
    return _collect(candidates, num_key_frames, frame_stride, skip_incomplete)


def folder_samples(root, num_key_frames, frame_stride=1, skip_incomplete=False):
    """Clips ending at every labelled frame of the generic folder layout (above)."""
    frames_root = os.path.join(root, "frames")
    if not os.path.isdir(frames_root):
        raise FileNotFoundError(f"No frame folders at {frames_root}.")
    candidates = []
    for seq in sorted(os.listdir(frames_root)):
        frames = sorted(
            p for p in glob.glob(os.path.join(frames_root, seq, "*")) if p.lower().endswith((".png", ".jpg", ".jpeg"))
        )
        numbering = _numbering(frames)
        if numbering is not None:
            position, path_of = numbering
        else:
            position = {os.path.splitext(os.path.basename(p))[0]: i for i, p in enumerate(frames)}
            path_of = (lambda i, frames=frames: frames[i])
        for label in sorted(glob.glob(os.path.join(root, "labels", seq, "*.png"))):
            stem = os.path.splitext(os.path.basename(label))[0]
            if stem not in position:
                raise FileNotFoundError(f"Label {label} has no frame named {stem}.* in {os.path.join(frames_root, seq)}.")
            candidates.append((path_of, position[stem], label))
    return _collect(candidates, num_key_frames, frame_stride, skip_incomplete)


_NUMBERED = re.compile(r"^(?P<prefix>.*?)(?P<number>\d+)$")


def _numbering(frames):
    """({stem: index}, path_of(index)) when every frame is PREFIX + number with one prefix and extension, else None.

    Index k is frame number first + k * step (step: the smallest gap, usually 1);
    path_of returns the path such a frame would have, whether or not it exists.
    """
    if not frames:
        return None
    parsed = []
    for path in frames:
        stem, ext = os.path.splitext(os.path.basename(path))
        m = _NUMBERED.match(stem)
        if m is None:
            return None
        parsed.append((m["prefix"], int(m["number"]), len(m["number"]), ext, stem))
    if len({(p[0], p[3]) for p in parsed}) != 1:
        return None
    prefix, ext = parsed[0][0], parsed[0][3]
    numbers = sorted(p[1] for p in parsed)
    gaps = [b - a for a, b in zip(numbers, numbers[1:]) if b > a]
    step = min(gaps) if gaps else 1
    first = numbers[0]
    if any((n - first) % step for n in numbers):
        step = 1
    by_number = {p[1]: path for p, path in zip(parsed, frames)}
    width = min(p[2] for p in parsed)
    folder = os.path.dirname(frames[0])

    def path_of(index):
        number = first + index * step
        return by_number.get(number, os.path.join(folder, f"{prefix}{number:0{width}d}{ext}"))

    return {p[4]: (p[1] - first) // step for p in parsed}, path_of


def camvid_colour_to_index(colour_label):
    """RGB colour label [H, W, 3] -> class indices [H, W] (0..10, 255 for every other colour)."""
    colour_label = np.asarray(colour_label)
    if colour_label.ndim != 3 or colour_label.shape[-1] != 3:
        raise ValueError(f"Expected an RGB colour label [H, W, 3], got shape {colour_label.shape}.")
    out = np.full(colour_label.shape[:2], 255, np.uint8)
    for index, colour in enumerate(CAMVID_COLOURS):
        out[np.all(colour_label == colour, axis=-1)] = index
    return out
