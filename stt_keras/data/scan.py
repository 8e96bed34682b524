"""The pre-flight dataset scan: every file a run will read, checked before any model is built.

stt-train and stt-eval run it first on a real dataset (not on the synthetic video):
a bad file found hours into training, inside tf.data, is a stack of
InvalidArgumentError tracebacks; found here, it is one line in one list:

    stt-train: the dataset scan found 2 problems:
      /data/mine/train/frames/a/img_017.jpg: truncated JPEG: the file ends at byte 6144 inside the image data ...
      /data/mine/train/labels/b/img_004.png: label values [9] are outside the 7 classes (0..6, and 255 for ignore)
    stt-train: error: 2 problems in the dataset, listed above; fix them, or pass --skip-scan to run without the scan.

What is checked, for each file the run reads (training: the frames of every clip
and its label; evaluation: every frame of every streamed sequence and its labels):
- frames and labels: the file's structure (a JPEG up to its end-of-image marker,
  a PNG's chunks and CRCs up to IEND; images.py), then one decode;
- labels: single-channel 8-bit, and values within the dataset's classes (or 255,
  ignored): `index` labels 0..N-1, Cityscapes labelIds 0..33, VSPW masks 0..124;
- a label has the size of its frame; the frames of one sequence folder share one size;
- training: every clip's frames exist (each clip that misses one is listed, not
  only the first).

What a file gave (its size, or what is wrong, and which label values it holds) is
cached by (path, file size, mtime), so a second run re-reads only the files that
changed. The cache is one JSON file per dataset root under
`$XDG_CACHE_HOME/stt_keras/scan/` (default `~/.cache/stt_keras/scan/`): never in the
dataset (often read-only, and the user's), and not in the run's --out (every run
and every stt-eval of one dataset share it). If it cannot be written the scan
still runs, uncached.

`scan_dataset(...)` is the library entry point; `check_training_data` and
`check_evaluation_data` are what the commands call.
"""

import concurrent.futures
import hashlib
import json
import os
import sys
import time

import cv2
import numpy as np

from stt_keras.utils.errors import UserError
from stt_keras.utils.fileio import atomic_file
from stt_keras.metrics import IGNORE_LABEL
from stt_keras.data import readers
from stt_keras.data.images import decode_image, label_format_problem

CACHE_FORMAT = "stt-keras-scan/1"
# The raw values a stored label may hold, by label format (IGNORE_LABEL is always allowed).
RAW_LABEL_MAX = {"cityscapes": 33, "vspw": len(readers.VSPW_CLASSES)}
LABEL_FORMATS = {"cityscapes": "cityscapes", "vspw": "vspw"}  # every other dataset: "index"
PROGRESS_FROM = 200  # files to (re-)read before the scan prints progress lines


def default_cache_dir():
    """$XDG_CACHE_HOME/stt_keras/scan (default ~/.cache/stt_keras/scan)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "stt_keras", "scan")


class ScanReport:
    """What a scan found: `problems` [(path, message)] sorted by path, and counts.

    Attributes:
        files: files checked. cached: of them, answered from the cache.
        seconds: the scan's wall time.
        problems: [(path, message)].
        pending_range: labels whose values are not yet checked (the class count was
            not known: `check_classes(n)` does it from the values already read).
    """

    def __init__(self, files, cached, seconds, problems, label_values, label_format):
        self.files, self.cached, self.seconds = files, cached, seconds
        self.problems = sorted(problems)
        self._values, self._format = label_values, label_format
        self.pending_range = label_values if label_format == "index" else {}

    def check_classes(self, num_classes):
        """Adds the label-range problems for `num_classes` classes (index labels); returns the new ones."""
        new = [(path, range_problem(values, "index", num_classes)) for path, values in self.pending_range.items()]
        new = [(path, message) for path, message in new if message]
        self.pending_range = {}
        self.problems = sorted(self.problems + new)
        return new

    def summary(self):
        found = "no problem" if not self.problems else f"{len(self.problems)} problem" + (
            "" if len(self.problems) == 1 else "s")
        return (f"dataset scan: {self.files} files ({self.cached} from the cache) in {self.seconds:.1f} s, {found}"
                + (" so far (label values are checked once the class count is known)" if self.pending_range else ""))


def values_of(bitmask):
    """The label values a cached bitmask (an int, bit v set when value v occurs) holds."""
    return [v for v in range(256) if bitmask >> v & 1]


def range_problem(bitmask, label_format, num_classes):
    """'label values [...] are outside ...' for a label whose values are `bitmask`, or None."""
    values = values_of(bitmask)
    if label_format == "index":
        bad = [v for v in values if v >= num_classes and v != IGNORE_LABEL]
        what = f"the {num_classes} classes (0..{num_classes - 1}, and {IGNORE_LABEL} for ignore)"
    else:
        top = RAW_LABEL_MAX[label_format]
        bad = [v for v in values if v > top and v != IGNORE_LABEL]
        what = {"cityscapes": f"Cityscapes labelIds (0..{top}, and {IGNORE_LABEL})",
                "vspw": f"VSPW mask values ({readers.VSPW_RAW_VALUES})"}[label_format]
    return f"label values {bad} are outside {what}" if bad else None


def file_facts(path, kind):
    """What one file gives, as cached: {"size": [H, W]} (labels also "values", a bitmask), or {"error": text}."""
    image, problem = decode_image(path, cv2.IMREAD_COLOR if kind == "frame" else cv2.IMREAD_UNCHANGED,
                                  palette_indices=kind == "label")
    if problem is not None:
        return {"error": problem}
    facts = {"size": [int(image.shape[0]), int(image.shape[1])]}
    if kind == "label":
        problem = label_format_problem(image.shape, image.dtype)
        if problem is not None:
            return {"error": f"label {problem}", "size": facts["size"]}
        present = np.flatnonzero(np.bincount(image.ravel(), minlength=256))
        facts["values"] = format(sum(1 << int(v) for v in present), "x")
    return facts


class _Cache:
    """{kind:path: [bytes, mtime_ns, facts]} in one JSON file per dataset root; atomic rewrite, never fatal."""

    def __init__(self, cache_dir, root):
        self.path = None if cache_dir is None else os.path.join(
            cache_dir, hashlib.sha256(os.path.realpath(root).encode()).hexdigest()[:20] + ".json")
        self.root, self.entries, self.changed = root, {}, False
        if self.path and os.path.isfile(self.path):
            try:
                with open(self.path) as f:
                    stored = json.load(f)
                if stored.get("format") == CACHE_FORMAT:
                    self.entries = stored["files"]
            except (OSError, ValueError, KeyError, TypeError):
                self.entries = {}  # a damaged cache is rebuilt

    @staticmethod
    def stamp(path):
        try:
            stat = os.stat(path)
        except OSError:
            return None
        return [stat.st_size, stat.st_mtime_ns]

    def get(self, key, stamp):
        entry = self.entries.get(key)
        return entry[2] if entry and stamp is not None and entry[:2] == stamp else None

    def put(self, key, stamp, facts):
        if stamp is not None:
            self.entries[key] = [*stamp, facts]
            self.changed = True

    def save(self):
        """Writes the cache; returns None, or why it could not (the scan goes on without it)."""
        if not self.path or not self.changed:
            return None
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            with atomic_file(self.path) as tmp, open(tmp, "w") as f:
                json.dump({"format": CACHE_FORMAT, "root": os.path.realpath(self.root), "files": self.entries}, f)
        except OSError as error:
            return f"cannot write the scan cache {self.path} ({error.strerror or error})"
        return None


def scan_units(units, root, label_format="index", num_classes=None, cache_dir=None, prog="stt_keras",
               stream=None, workers=None, frame_size=None, listed_problems=()):
    """Scans `units` [(frame paths, {position in the list: label path})]; returns a ScanReport.

    A unit is a training clip (its label at the last position) or a whole sequence.
    `root` keys the cache file; `cache_dir` None: no cache. `num_classes` None with
    index labels: the range check waits for `ScanReport.check_classes`.
    `frame_size` (H, W): the size of every frame when frames are not files (a video).
    `listed_problems`: [(path, message)] the listing found (clips with a missing frame).
    """
    from stt_keras.utils.progress import Progress

    start = time.perf_counter()
    stream = stream or sys.stderr
    wanted = {}  # key -> (kind, path)
    for frames, labels in units:
        for path in frames:
            wanted[f"frame:{path}"] = ("frame", path)
        for path in labels.values():
            wanted[f"label:{path}"] = ("label", path)
    cache = _Cache(cache_dir, root)
    facts, todo = {}, []
    for key, (kind, path) in wanted.items():
        stamp = cache.stamp(path)
        found = cache.get(key, stamp)
        if found is None:
            todo.append((key, kind, path, stamp))
        else:
            facts[key] = found
    progress = Progress(f"{prog}: scanning the dataset", len(todo), "files", stream=stream) \
        if len(todo) >= PROGRESS_FROM else None
    with concurrent.futures.ThreadPoolExecutor(workers or min(4, os.cpu_count() or 1)) as pool:  # OpenCV frees the GIL
        for (key, kind, path, stamp), result in zip(todo, pool.map(lambda item: file_facts(item[2], item[1]), todo)):
            facts[key] = result
            cache.put(key, stamp, result)
            if progress is not None:
                progress.update()
    if progress is not None:
        progress.close()
    warning = cache.save()
    if warning:
        print(f"{prog}: note: {warning}; the next run scans again.", file=stream, flush=True)

    problems, values = {}, {}

    def add(path, message):  # one entry per path, its messages joined
        problems[path] = f"{problems[path]}; {message}" if path in problems else message

    for path, message in listed_problems:
        add(path, message)
    for key, (kind, path) in wanted.items():
        if "error" in facts[key]:
            add(path, facts[key]["error"])
        elif kind == "label":
            values[path] = int(facts[key]["values"], 16)
    if label_format != "index" or num_classes is not None:
        for path, bitmask in values.items():
            message = range_problem(bitmask, label_format, num_classes)
            if message:
                add(path, message)
    size_of = (lambda path: list(frame_size)) if frame_size else (lambda path: facts[f"frame:{path}"].get("size"))
    for frames, labels in units:  # a label has its frame's size
        for position, label in labels.items():
            frame = frames[position] if frames else None
            want, got = size_of(frame), facts[f"label:{label}"].get("size")
            if want and got and want != got and label not in problems:
                add(label, f"label is {got[0]}x{got[1]} but its frame {frame or 'of the video'} is {want[0]}x{want[1]}")
    if not frame_size:  # the frames of one sequence folder share one size
        sizes = {}
        for key, (kind, path) in wanted.items():
            if kind == "frame" and "size" in facts[key]:
                sizes.setdefault(os.path.dirname(path), {}).setdefault(tuple(facts[key]["size"]), []).append(path)
        for folder, by_size in sizes.items():
            if len(by_size) > 1:
                parts = sorted(by_size.items(), key=lambda item: -len(item[1]))
                add(folder, "frames of mixed sizes in one sequence: " + ", ".join(
                    f"{h}x{w} ({len(paths)} frame{'' if len(paths) == 1 else 's'}, e.g. {os.path.basename(min(paths))})"
                    for (h, w), paths in parts))
    report = ScanReport(len(wanted), len(wanted) - len(todo), time.perf_counter() - start, problems.items(),
                        values, label_format)
    if label_format == "index" and num_classes is not None:
        report.pending_range = {}
    return report


def _clip_units(samples):
    return [(list(paths), {len(paths) - 1: label}) for paths, label in samples], list(samples.incomplete)


def _sequence_units(sequences):
    return [(list(paths), dict(labels)) for _, paths, labels in sequences], []


def dataset_units(dataset, data_root, split, num_key_frames=None, frame_stride=1, first_frames="pad", label_dir=None):
    """(units, problems, label format, frame size or None) of one split: training clips when `num_key_frames` is
    given (problems: every clip that misses a frame), else the whole sequences stt-eval streams. Other listing
    errors (a missing folder, a label without its frame, ...) are raised as is."""
    label_format = LABEL_FORMATS.get(dataset, "index")
    if dataset == "video":  # the frames are in the video file: its labels, checked against its frame size
        capture = cv2.VideoCapture(data_root)
        size = (int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT)), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)))
        capture.release()
        labels = readers.label_files(label_dir)
        return [([], {0: path}) for path in labels], [], label_format, (size if min(size) > 0 else None)
    if dataset == "folder":
        root = os.path.join(data_root, split)
        if num_key_frames is None and not os.path.isdir(os.path.join(root, "frames")):
            root = data_root  # stt-eval also takes a folder of one split
    if num_key_frames is not None:  # skip_incomplete: every clip that misses a frame is listed, not the first alone
        first = {"skip_incomplete": True, **({} if dataset == "cityscapes" else {"first_frames": first_frames})}
        if dataset == "folder":
            samples = readers.folder_samples(root, num_key_frames, frame_stride, **first)
        else:
            lister = {"cityscapes": readers.cityscapes_samples, "camvid": readers.camvid_samples,
                      "vspw": readers.vspw_samples}[dataset]
            samples = lister(data_root, split, num_key_frames, frame_stride, **first)
        return (*_clip_units(samples), label_format, None)
    if dataset == "folder":
        sequences = readers.folder_sequences(root)
    else:
        sequences = {"cityscapes": readers.cityscapes_sequences, "camvid": readers.camvid_sequences,
                     "vspw": readers.vspw_sequences}[dataset](data_root, split)
    return (*_sequence_units(sequences), label_format, None)


def scan_dataset(dataset, data_root, splits=("train",), num_classes=None, num_key_frames=None, frame_stride=1,
                 first_frames="pad", label_dir=None, cache_dir="default", prog="stt_keras", stream=None):
    """Scans the files of a dataset's splits the way a run reads them; returns a ScanReport.

    Args:
        dataset: "folder", "cityscapes", "camvid", "vspw" or "video" (as stt-train / stt-eval).
        data_root: the dataset root (the video file for "video").
        splits: the splits to scan (all in one report).
        num_classes: for "folder" and "video" labels (0..N-1, 255 ignored); None: not
            checked yet (`report.check_classes(n)`). The other datasets know their values.
        num_key_frames: T: scan the frames of the training clips (T+1 frames every
            `frame_stride` ending at each label, `first_frames` as stt-train);
            None: every frame of the sequences stt-eval streams.
        label_dir: the label folder of a "video".
        cache_dir: where the cache lives ("default": `default_cache_dir()`, None: no cache).

    Raises FileNotFoundError / ValueError from the listing (a missing frame or folder, ...).

    Example:
    >>> report = scan_dataset("folder", "data/mine", ["train", "val"], num_classes=7)  # doctest: +SKIP
    >>> report.problems  # doctest: +SKIP
    [('data/mine/train/labels/b/img_004.png', 'label values [9] are outside the 7 classes (0..6, and 255 for ignore)')]
    """
    cache_dir = default_cache_dir() if cache_dir == "default" else cache_dir
    units, listed, label_format, size = [], [], "index", None
    for split in splits:
        more, problems, label_format, size = dataset_units(dataset, data_root, split, num_key_frames, frame_stride,
                                                           first_frames, label_dir)
        units += more
        listed += problems
    return scan_units(units, data_root, label_format, num_classes, cache_dir, prog, stream, frame_size=size,
                      listed_problems=listed)


def raise_for_problems(report, prog, stream=None):
    """Prints the summary and, when the report has problems, the list; then UserError (exit 2) with one line."""
    stream = stream or sys.stderr
    print(f"{prog}: {report.summary()}", file=stream, flush=True)
    if report.problems:
        count = len(report.problems)
        print(f"{prog}: the dataset scan found {count} problem{'' if count == 1 else 's'}:", file=stream)
        for path, message in report.problems:
            print(f"  {path}: {message}", file=stream)
        stream.flush()
        raise UserError(f"{prog}: {count} problem{'' if count == 1 else 's'} in the dataset, listed above; "
                        "fix them, or pass --skip-scan to run without the scan.")


def clip_length(preset, stt_overrides=None):
    """T, the key frames before each frame of a preset's clips, read from the preset (no model is built)."""
    from stt_keras.models.stt.stt_presets import PRESETS

    stt = PRESETS[preset].get("stt")
    if stt is None:
        return 0
    return int((stt_overrides or {}).get("num_key_frames", stt["num_key_frames"]))


def check_training_data(config, num_classes, prog="stt-train"):
    """stt-train's pre-flight scan of a TrainConfig's train and val splits; UserError listing every problem."""
    try:
        report = scan_dataset(config.dataset, config.data_root, (config.train_split, config.val_split), num_classes,
                              clip_length(config.preset, config.stt_overrides), config.frame_stride,
                              config.first_frames, prog=prog)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"{prog}: {error}") from None
    raise_for_problems(report, prog)
    return report


def check_evaluation_data(args, prog="stt-eval"):
    """stt-eval's pre-flight scan of the sequences it will stream (before the model is loaded).

    Returns the report; for folder and video labels the class count comes from the
    model: call `finish_evaluation_check(report, model.num_classes)` once it is loaded.
    """
    try:
        report = scan_dataset(args.dataset, args.data_root, (args.split,), None, None, label_dir=args.label_dir,
                              prog=prog)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"{prog}: {error}") from None
    raise_for_problems(report, prog)
    return report


def finish_evaluation_check(report, num_classes, prog="stt-eval"):
    """The label-range check the class count was waited for; UserError listing the labels outside it."""
    if report is None or not report.pending_range:
        return
    new = report.check_classes(num_classes)
    if new:
        report.problems = sorted(new)
        raise_for_problems(report, prog)
