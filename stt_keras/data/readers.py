"""Sample lists for real video datasets, in their exact on-disk layouts.

A sample is (frame paths [T+1] oldest first, label path): a clip of T+1 frames
taken every `frame_stride` frames and ending at an annotated frame. Listing
checks that every frame exists; a missing one raises FileNotFoundError naming it,
unless `skip_incomplete=True`, in which case the sample is dropped and counted
(`SampleList.skipped`).

First frames (`first_frames`, generic folders and CamVid): a label on one of the
first T * stride frames of a sequence has a clip that reaches before the
sequence. "pad" (the default) fills the missing history with the sequence's
first frame, the policy of streaming inference (`StreamingSegmenter` starts its
buffer filled with the first frame): a label on frame k < T trains the model on
[f_0 repeated, ..., f_k], exactly what the deployed stream computes at frame k.
So densely labelled video (a label on every frame) trains on every label.
"skip" drops those labels (counted in `SampleList.skipped`), "error" raises.
Cityscapes snippets always have 19 frames before their label, so they never pad.

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

VSPW (the video scene parsing benchmark, VSPW_480p as released):
    {root}/{split}.txt                       video names, one a line (train, val, test)
    {root}/data/{video}/origin/{stem}.jpg    every frame; stream order = sorted file names
    {root}/data/{video}/mask/{stem}.png      a mask on every frame: 1..124 the classes,
                                             0 "others" and 255 void, both ignored
  Masks become train ids by the toolkit's mapping (`vspw_to_train_ids`): k -> k - 1,
  0 and 255 -> 255 (mmsegmentation's reduce_zero_label); 124 classes (`VSPW_CLASSES`).
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
    """A list of (frame paths, label path) with the number of samples skipped.

    `incomplete`: [(label path, what its clip misses)] of the samples skipped by
    skip_incomplete=True (the pre-flight scan lists them all).
    """

    skipped = 0

    def __init__(self, *args):
        super().__init__(*args)
        self.incomplete = []


def _clip(frame_path_of, end, num_key_frames, frame_stride):
    return [frame_path_of(end - k * frame_stride) for k in range(num_key_frames, -1, -1)]


FIRST_FRAME_POLICIES = ("pad", "skip", "error")


def _check_policy(first_frames):
    if first_frames not in FIRST_FRAME_POLICIES:
        raise ValueError(f"first_frames must be one of {FIRST_FRAME_POLICIES}, got {first_frames!r}.")


def _collect(candidates, num_key_frames, frame_stride, skip_incomplete, first_frames="error"):
    """candidates: (path_of(index), end index, label path, first index of the sequence or None)."""
    _check_policy(first_frames)
    samples = SampleList()
    for frame_path_of, end, label, first in candidates:
        start = end - num_key_frames * frame_stride
        lowest = 0 if first is None else first
        missing, paths = None, None
        if start < lowest and (first is None or first_frames != "pad"):
            if first_frames == "skip":
                samples.skipped += 1
                continue
            missing = f"frame {start} (before the start of the sequence)"
        else:
            indices = [max(lowest, end - k * frame_stride) for k in range(num_key_frames, -1, -1)]
            paths = [frame_path_of(i) for i in indices]
            missing = next((p for p in paths if not os.path.isfile(p)), None)
        if missing is not None:
            if skip_incomplete:
                samples.skipped += 1
                samples.incomplete.append(
                    (label, f"its clip needs {missing}, which does not exist (T={num_key_frames}, stride={frame_stride})"))
                continue
            hint = "pass skip_incomplete=True to skip such clips"
            if paths is None and first is not None:
                hint = "first_frames='pad' repeats the first frame, 'skip' drops such labels"
            raise FileNotFoundError(
                f"Clip for label {label} needs {missing}, which does not exist "
                f"(T={num_key_frames}, stride={frame_stride}; {hint})."
            )
        samples.append((paths, label))
    return samples


def _label_candidates(label_dir, dataset, label_glob, pattern, frame_path, misnamed=None, first_of=None):
    """(path_of(frame number), labelled frame number, label path, first frame) for every label file of a split.

    The labels are the files `label_glob` under `label_dir`, sorted. `pattern` matches a
    label's file name: its "frame" group is the labelled frame's number, and
    `frame_path(match, number)` names a frame of the label's sequence. A label whose
    name does not match is passed over, or, given `misnamed` (how labels are named),
    an error. `first_of(match)` gives the sequence's first frame number (None: not known).
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
        first = None if first_of is None else first_of(m)
        candidates.append((functools.partial(frame_path, m), int(m["frame"]), label, first))
    return candidates


_CITYSCAPES_LABEL = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})_gtFine_labelIds\.png$")
_CITYSCAPES_FRAME = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit\.png$")
_CAMVID_LABEL = re.compile(r"^(?P<seq>.+)_(?P<frame>\d+)\.(?i:png)$")


def _cityscapes_frame(root, split, m, number):
    """Where leftImg8bit_sequence keeps frame `number` of the recording whose label or frame name `m` matched."""
    city = m["city"]
    return os.path.join(root, "leftImg8bit_sequence", split, city, f"{city}_{m['seq']}_{number:06d}_leftImg8bit.png")


def cityscapes_labels(root, split):
    """[(path_of(frame number), annotated frame number, label path)] of every *_gtFine_labelIds.png of a split,
    sorted by path ([] without gtFine/SPLIT): the one listing of Cityscapes labels and their recordings' frames
    (`path_of` names a frame of the label's recording in leftImg8bit_sequence, whether or not it exists)."""
    found = []
    for label in sorted(glob.glob(os.path.join(root, "gtFine", split, "*", "*_gtFine_labelIds.png"))):
        m = _CITYSCAPES_LABEL.match(os.path.basename(label))
        if m is not None:
            found.append((functools.partial(_cityscapes_frame, root, split, m), int(m["frame"]), label))
    return found


def cityscapes_samples(root, split, num_key_frames, frame_stride=1, skip_incomplete=False):
    """Clips ending at every annotated frame of a Cityscapes split."""
    label_dir = os.path.join(root, "gtFine", split)
    if not os.path.isdir(label_dir):
        raise FileNotFoundError(f"No Cityscapes labels at {label_dir}.")
    candidates = [(path_of, number, label, None) for path_of, number, label in cityscapes_labels(root, split)]
    if not candidates:
        raise FileNotFoundError(f"No *_gtFine_labelIds.png files under {label_dir}.")
    return _collect(candidates, num_key_frames, frame_stride, skip_incomplete)


def cityscapes_sequences(root, split, before=19, after=10):
    """[(name, frame paths, {index: label path})] of a Cityscapes split, for streaming evaluation and calibration.

    before, after: the snippet around every annotated frame, for streaming evaluation (ETC's TC
    protocol: the 19 frames before the annotated one, the annotated one and the 10 after). A
    missing frame is an error naming it.
    before=None: every recording of leftImg8bit_sequence/SPLIT whole and unlabelled, in runs of
    consecutive frame numbers (a gap starts a new run), for calibration (it needs no gtFine).
    """
    if before is None:
        return _cityscapes_recordings(root, split)
    sequences = []
    for path_of, number, label_path in cityscapes_labels(root, split):
        paths = [path_of(number - before + k) for k in range(before + after + 1)]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError(f"TC clip of {label_path} needs {missing[0]}.")
        sequences.append((os.path.basename(label_path)[:-len("_gtFine_labelIds.png")], paths, {before: label_path}))
    return sequences


def _cityscapes_recordings(root, split):
    """[(city_seq, frame paths, {})]: every run of consecutive frames of every recording of a split."""
    recordings = {}
    for path in sorted(glob.glob(os.path.join(root, "leftImg8bit_sequence", split, "*", "*_leftImg8bit.png"))):
        m = _CITYSCAPES_FRAME.match(os.path.basename(path))
        if m is not None:
            recordings.setdefault(f"{m['city']}_{m['seq']}", []).append((int(m["frame"]), path))
    sequences = []
    for name, frames in sorted(recordings.items()):
        run = [frames[0][1]]
        for (a, _), (b, path) in zip(frames, frames[1:]):
            if b != a + 1:
                sequences.append((name, run, {}))
                run = []
            run.append(path)
        sequences.append((name, run, {}))
    return sequences


def camvid_samples(root, split, num_key_frames, frame_stride=1, skip_incomplete=False, first_frames="pad"):
    """Clips ending at every labelled frame of a CamVid split (layout above)."""
    _check_policy(first_frames)

    def frame_path(m, f):
        return os.path.join(root, "frames", m["seq"], f"{m['seq']}_{f:06d}.png")

    firsts = {}

    def first_of(m):
        if m["seq"] not in firsts:
            firsts[m["seq"]] = _first_camvid_frame(root, m["seq"])
        return firsts[m["seq"]]

    candidates = _label_candidates(
        os.path.join(root, "labels", split), "CamVid", "*.[pP][nN][gG]", _CAMVID_LABEL, frame_path,
        misnamed="{sequence}_{frame}.png", first_of=first_of)
    return _collect(candidates, num_key_frames, frame_stride, skip_incomplete, first_frames)


def _first_camvid_frame(root, seq):
    """The lowest frame number extracted for a CamVid sequence (ffmpeg numbers from 1), 0 if none is there."""
    folder = os.path.join(root, "frames", seq)
    pattern = re.compile(re.escape(seq) + r"_(\d+)\.png")
    numbers = [int(m[1]) for m in map(pattern.fullmatch, os.listdir(folder) if os.path.isdir(folder) else []) if m]
    return min(numbers, default=0)


def folder_samples(root, num_key_frames, frame_stride=1, skip_incomplete=False, first_frames="pad"):
    """Clips ending at every labelled frame of the generic folder layout (above)."""
    _check_policy(first_frames)
    candidates = []
    for seq, folder in _sequence_folders(root):
        frames = _frame_files(folder)
        numbering = _numbering(frames)
        if numbering is not None:
            position, path_of = numbering
        else:
            position = {os.path.splitext(os.path.basename(p))[0]: i for i, p in enumerate(frames)}
            path_of = (lambda i, frames=frames: frames[i])
        candidates += [(path_of, index, label, 0) for index, label in _sequence_labels(root, seq, position).items()]
    return _collect(candidates, num_key_frames, frame_stride, skip_incomplete, first_frames)


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


def _ordered_frames(folder):
    """Frame paths of one sequence folder in stream order; FileNotFoundError naming the first gap in a numbering.

    Time and memory grow with the number of files, not with the largest frame number.
    """
    frames = _frame_files(folder)
    numbering = _numbering(frames)
    if numbering is None:
        return frames
    position, path_of = numbering
    indices = sorted(set(position.values()))
    if indices[-1] + 1 != len(indices):  # some index in 0..last has no file
        gap = next(k for k, index in enumerate(indices) if index != k)
        before, after = path_of(indices[gap - 1]), path_of(indices[gap])
        raise FileNotFoundError(
            f"Sequence {folder} has a gap in its frame numbering: {path_of(gap)} does not exist "
            f"({indices[gap] - gap} frames missing between {os.path.basename(before)} and {os.path.basename(after)}, "
            f"{indices[-1] + 1 - len(indices)} in all; streaming needs every frame).")
    return [path_of(i) for i in indices]


FRAME_EXTENSIONS = (".png", ".jpg", ".jpeg")


def frames_by_folder(paths, extensions=FRAME_EXTENSIONS):
    """{folder: its frame files sorted by name} of the files among `paths` whose name ends with one of
    `extensions` (any case): the one grouping of frame files into sequences, one sequence per folder."""
    groups = {}
    for path in sorted(paths):
        if path.lower().endswith(extensions) and os.path.isfile(path):
            groups.setdefault(os.path.dirname(path), []).append(path)
    return groups


def _frame_files(folder):
    """The frame files of a sequence folder (*.png, *.jpg, *.jpeg in any case), sorted by name."""
    return [path for paths in frames_by_folder(glob.glob(os.path.join(folder, "*"))).values() for path in paths]


def label_files(folder):
    """The label files of a folder, *.png in any case (a.PNG is read like a.png), sorted; [] without the folder.

    Two labels of one stem (a.png and a.PNG) are an error naming both.
    """
    labels = sorted(glob.glob(os.path.join(glob.escape(folder), "*.[pP][nN][gG]")))
    stems = {}
    for path in labels:
        stem = os.path.splitext(os.path.basename(path))[0]
        if stem in stems:
            raise ValueError(f"Two labels for one frame: {stems[stem]} and {path}; keep one.")
        stems[stem] = path
    return labels


def _sequence_labels(root, seq, position):
    """{frame index: label path} of labels/SEQ of the generic layout, each label at the index `position`
    ({frame stem: index}) gives its frame; a label without its frame is an error naming both."""
    labels = {}
    for label in label_files(os.path.join(root, "labels", seq)):
        stem = os.path.splitext(os.path.basename(label))[0]
        if stem not in position:
            raise FileNotFoundError(f"Label {label} has no frame named {stem}.* in {os.path.join(root, 'frames', seq)}.")
        labels[position[stem]] = label
    return labels


def _sequence_folders(root):
    """[(sequence, ROOT/frames/SEQUENCE)] of the generic layout, sorted; FileNotFoundError without ROOT/frames,
    or naming a label folder that has no frame folder."""
    frames_root = os.path.join(root, "frames")
    if not os.path.isdir(frames_root):
        raise FileNotFoundError(f"No frame folders at {frames_root} (expected {root}/frames/SEQUENCE/*.png|jpg).")
    _check_label_folders(root)
    return [(seq, os.path.join(frames_root, seq)) for seq in sorted(os.listdir(frames_root))]


def _check_label_folders(root):
    """FileNotFoundError naming both when a label folder labels/SEQ has no frame folder frames/SEQ (often a typo)."""
    labels_root = os.path.join(root, "labels")
    if not os.path.isdir(labels_root):
        return
    for seq in sorted(os.listdir(labels_root)):
        labels = os.path.join(labels_root, seq)
        if os.path.isdir(labels) and not os.path.isdir(os.path.join(root, "frames", seq)) and label_files(labels):
            raise FileNotFoundError(f"Label folder {labels} has no frame folder {os.path.join(root, 'frames', seq)} "
                                    "(a label folder is named like its sequence's frame folder).")


def folder_sequences(root):
    """[(name, frame paths in stream order, {frame index: label path})] of the generic folder layout, every sequence whole.

    For streaming evaluation and calibration: `{root}/frames/{seq}/` as in
    `folder_samples`, labels optional (`{root}/labels/{seq}/{stem}.png`); a gap in
    a numbered sequence or a label without its frame is an error naming it.
    """
    frames_root = os.path.join(root, "frames")
    sequences = []
    for seq, folder in _sequence_folders(root):
        if not os.path.isdir(folder):
            continue
        paths = _ordered_frames(folder)
        if not paths:
            if label_files(os.path.join(root, "labels", seq)):
                raise FileNotFoundError(f"Labels {os.path.join(root, 'labels', seq)} have no frames: "
                                        f"{folder} holds no *.png or *.jpg file.")
            continue
        position = {os.path.splitext(os.path.basename(p))[0]: i for i, p in enumerate(paths)}
        sequences.append((seq, paths, _sequence_labels(root, seq, position)))
    if not sequences:
        raise FileNotFoundError(f"No frames (*.png, *.jpg) in any folder under {frames_root}.")
    return sequences


def camvid_sequences(root, split, before=19, after=10):
    """[(name, frame paths, {index: label path})]: a snippet around every labelled CamVid frame, for streaming evaluation.

    Each snippet is the labelled frame, up to `before` frames before it (fewer at the
    start of a recording) and up to `after` after it (fewer at its end), as the
    Cityscapes protocol does (19 before, 10 after). A missing frame before the label
    is an error naming it.
    """
    label_dir = os.path.join(root, "labels", split)
    if not os.path.isdir(label_dir):
        raise FileNotFoundError(f"No CamVid labels at {label_dir}.")
    sequences, firsts = [], {}
    for label in label_files(label_dir):
        m = _CAMVID_LABEL.match(os.path.basename(label))
        if m is None:
            raise ValueError(f"CamVid label {label} is not named {{sequence}}_{{frame}}.png.")
        seq, frame = m["seq"], int(m["frame"])
        if seq not in firsts:
            firsts[seq] = _first_camvid_frame(root, seq)
        path_of = lambda f, seq=seq: os.path.join(root, "frames", seq, f"{seq}_{f:06d}.png")  # noqa: E731
        paths = [path_of(f) for f in range(max(firsts[seq], frame - before), frame + 1)]
        missing = next((p for p in paths if not os.path.isfile(p)), None)
        if missing is not None:
            raise FileNotFoundError(f"CamVid label {label} needs frame {missing}, which does not exist.")
        labelled = len(paths) - 1
        paths += [p for p in map(path_of, range(frame + 1, frame + after + 1))]
        end = next((i for i, p in enumerate(paths) if not os.path.isfile(p)), len(paths))
        sequences.append((f"{seq}_{frame:06d}", paths[:end], {labelled: label}))
    if not sequences:
        raise FileNotFoundError(f"No CamVid labels (*.png) in {label_dir}.")
    return sequences


# ------------------------------------------------------------------- VSPW
# The 124 classes of VSPW, in train-id order: raw mask value k (1..124) is train id k - 1.
# Raw value 0 is "others" and 255 "void"; both are ignored (VSPW toolkit, see `vspw_to_train_ids`).
VSPW_CLASSES = (
    "wall", "ceiling", "door", "stair", "ladder", "escalator", "Playground_slide", "handrail_or_fence", "window",
    "rail", "goal", "pillar", "pole", "floor", "ground", "grass", "sand", "athletic_field", "road", "path",
    "crosswalk", "building", "house", "bridge", "tower", "windmill", "well_or_well_lid", "other_construction", "sky",
    "mountain", "stone", "wood", "ice", "snowfield", "grandstand", "sea", "river", "lake", "waterfall", "water",
    "billboard_or_Bulletin_Board", "sculpture", "pipeline", "flag", "parasol_or_umbrella", "cushion_or_carpet", "tent",
    "roadblock", "car", "bus", "truck", "bicycle", "motorcycle", "wheeled_machine", "ship_or_boat", "raft", "airplane",
    "tyre", "traffic_light", "lamp", "person", "cat", "dog", "horse", "cattle", "other_animal", "tree", "flower",
    "other_plant", "toy", "ball_net", "backboard", "skateboard", "bat", "ball", "cupboard_or_showcase_or_storage_rack",
    "box", "traveling_case_or_trolley_case", "basket", "bag_or_package", "trash_can", "cage", "plate",
    "tub_or_bowl_or_pot", "bottle_or_cup", "barrel", "fishbowl", "bed", "pillow", "table_or_desk", "chair_or_seat",
    "bench", "sofa", "shelf", "bathtub", "gun", "commode", "roaster", "other_machine", "refrigerator",
    "washing_machine", "Microwave_oven", "fan", "curtain", "textiles", "clothes", "painting_or_poster", "mirror",
    "flower_pot_or_vase", "clock", "book", "tool", "blackboard", "tissue", "screen_or_television", "computer",
    "printer", "Mobile_phone", "keyboard", "other_electronic_product", "fruit", "food", "instrument", "train",
)
VSPW_RAW_VALUES = "0..124 and 255"


def vspw_to_train_ids(mask):
    """A raw VSPW mask (values 0..124, 255) -> train ids: k -> k - 1 for k in 1..124; 0 ("others") and 255 -> 255.

    The mapping the VSPW toolkit recommends (label[label==0]=255; label=label-1;
    label[label==254]=255), mmsegmentation's reduce_zero_label. Other values are an error.
    """
    mask = np.asarray(mask)
    bad = np.unique(mask[(mask > len(VSPW_CLASSES)) & (mask != 255)])
    if bad.size:
        raise ValueError(f"VSPW mask values {bad.tolist()} are outside {VSPW_RAW_VALUES}.")
    out = mask.astype(np.int16) - 1
    out[(mask == 0) | (mask == 255)] = 255
    return out.astype(np.uint8)


def vspw_videos(root, split):
    """The video names of a VSPW split: ROOT/{split}.txt, one name a line (blank lines skipped)."""
    listing = os.path.join(root, f"{split}.txt")
    if not os.path.isfile(listing):
        raise FileNotFoundError(f"No VSPW split file {listing} (ROOT/{{train,val,test}}.txt, one video name a line).")
    with open(listing) as f:
        videos = [line.strip() for line in f if line.strip()]
    if not videos:
        raise FileNotFoundError(f"VSPW split file {listing} names no video.")
    return videos


def _vspw_frames(root, video):
    """Sorted frame paths of data/{video}/origin (*.jpg, *.png), hidden files skipped, as the toolkit lists them."""
    folder = os.path.join(root, "data", video, "origin")
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"VSPW video {video} has no frame folder {folder}.")
    names = sorted(n for n in os.listdir(folder) if not n.startswith(".") and n.lower().endswith((".jpg", ".jpeg", ".png")))
    if not names:
        raise FileNotFoundError(f"VSPW video {video} has no frames (*.jpg) in {folder}.")
    return [os.path.join(folder, n) for n in names]


def vspw_sequences(root, split, require_labels=True):
    """[(video, frame paths in stream order, {frame index: mask path})] of a VSPW split, every video whole.

    Layout (VSPW_480p as released):
        ROOT/{split}.txt                     video names, one a line
        ROOT/data/{video}/origin/{stem}.jpg  every frame; stream order = sorted file names
        ROOT/data/{video}/mask/{stem}.png    its mask (raw values 0..124, 255), one per frame
    Every frame has its mask (a frame without one, or a mask without its frame, is an
    error naming it); with require_labels=False (the test split has no masks) a video
    without a mask folder gets no labels.
    """
    sequences = []
    for video in vspw_videos(root, split):
        frames = _vspw_frames(root, video)
        mask_dir = os.path.join(root, "data", video, "mask")
        if not os.path.isdir(mask_dir):
            if require_labels:
                raise FileNotFoundError(f"VSPW video {video} has no mask folder {mask_dir}.")
            sequences.append((video, frames, {}))
            continue
        stems = {os.path.splitext(os.path.basename(p))[0]: i for i, p in enumerate(frames)}
        masks = {}
        for name in sorted(os.listdir(mask_dir)):
            if name.startswith(".") or not name.lower().endswith(".png"):
                continue
            stem = os.path.splitext(name)[0]
            if stem not in stems:
                raise FileNotFoundError(f"VSPW mask {os.path.join(mask_dir, name)} has no frame {stem}.* in "
                                        f"{os.path.dirname(frames[0])}.")
            masks[stems[stem]] = os.path.join(mask_dir, name)
        unlabelled = next((p for i, p in enumerate(frames) if i not in masks), None)
        if unlabelled is not None:
            stem = os.path.splitext(os.path.basename(unlabelled))[0]
            raise FileNotFoundError(f"VSPW frame {unlabelled} has no mask {os.path.join(mask_dir, stem + '.png')} "
                                    "(VSPW labels every frame).")
        sequences.append((video, frames, masks))
    return sequences


def vspw_samples(root, split, num_key_frames, frame_stride=1, skip_incomplete=False, first_frames="pad"):
    """Clips ending at every frame of a VSPW split (every frame has a mask): (frame paths [T+1], mask path).

    A clip is its frame and the T * stride frames before it in the video's sorted
    order; before the first frame the history repeats the first frame ("pad", the
    streaming policy), or those frames are dropped ("skip") or an error ("error").
    """
    _check_policy(first_frames)
    candidates = []
    for _, frames, masks in vspw_sequences(root, split):
        path_of = (lambda i, frames=frames: frames[i])
        candidates += [(path_of, index, masks[index], 0) for index in sorted(masks)]
    return _collect(candidates, num_key_frames, frame_stride, skip_incomplete, first_frames)
