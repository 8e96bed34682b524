"""The pre-flight dataset scan (stt_keras/data/scan.py): every data error tf.data used to hit mid-run, found first.

Each case writes tiny files in tmp_path. The commands' hooks are checked to run the
scan before any model is built (from_preset / load_model replaced by a tripwire).
"""

import json
import os

import numpy as np
import pytest

from stt_keras.data import scan
from image_files import random_rgb, write

NUM_CLASSES = 3


def frame(h=16, w=16, seed=0):
    return random_rgb(h, w, seed)


def label(h=16, w=16, value=1):
    out = np.full((h, w), value, np.uint8)
    out[0, 0] = 255  # the ignore label is always allowed
    return out


def cut(path, keep=0.6):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:int(len(data) * keep)])


def good_split(root, sequences=("a", "b"), frames=5, labelled=(2, 4)):
    for seq in sequences:
        for i in range(frames):
            write(os.path.join(root, "frames", seq, f"img_{i:03d}.jpg"), frame(seed=i))
        for i in labelled:
            write(os.path.join(root, "labels", seq, f"img_{i:03d}.png"), label())


def bad_dataset(root):
    """A folder dataset (train and val) with one of each problem; returns {path: the start of its message}."""
    good_split(os.path.join(root, "train"), ("a", "b", "c", "d", "e", "f"))
    good_split(os.path.join(root, "val"), ("a",))
    t = os.path.join(root, "train")
    cut(os.path.join(t, "frames", "a", "img_001.jpg"))  # truncated JPEG (OpenCV would grey-fill it)
    cut(os.path.join(t, "labels", "b", "img_002.png"))  # truncated PNG
    write(os.path.join(t, "labels", "c", "img_004.png"), label(8, 16))  # a label of another size than its frame
    write(os.path.join(t, "frames", "d", "img_003.jpg"), frame(32, 16))  # mixed sizes in one sequence
    write(os.path.join(t, "labels", "e", "img_002.png"), label().astype(np.uint16))  # a 16-bit label
    write(os.path.join(root, "val", "labels", "a", "img_004.png"), label(value=7))  # a value >= num_classes
    return {
        os.path.join(t, "frames", "a", "img_001.jpg"): "truncated JPEG",
        os.path.join(t, "labels", "b", "img_002.png"): "truncated PNG",
        os.path.join(t, "labels", "c", "img_004.png"): "label is 8x16 but its frame",
        os.path.join(t, "frames", "d"): "frames of mixed sizes in one sequence: 16x16 (4 frames, e.g. img_000.jpg), "
                                        "32x16 (1 frame, e.g. img_003.jpg)",
        os.path.join(t, "labels", "e", "img_002.png"): "label is a 1-channel 16-bit image",
        os.path.join(root, "val", "labels", "a", "img_004.png"): "label values [7] are outside the 3 classes",
    }


def check_problems(problems, expected):
    assert [p for p, _ in problems] == sorted(expected), problems
    for path, message in problems:
        assert message.startswith(expected[path]), (path, message)


def test_every_data_error_is_listed_with_its_path(tmp_path):
    root = str(tmp_path / "data")
    expected = bad_dataset(root)
    report = scan.scan_dataset("folder", root, ("train", "val"), NUM_CLASSES, num_key_frames=3, cache_dir=None)
    check_problems(report.problems, expected)
    # The whole-sequence listing stt-eval streams finds the same (here every frame is in a clip).
    check_problems(scan.scan_dataset("folder", root, ("train", "val"), NUM_CLASSES, cache_dir=None).problems, expected)


def test_a_clean_dataset_has_no_problem_and_only_clip_frames_are_read(tmp_path):
    root = str(tmp_path / "data")
    good_split(os.path.join(root, "train"), ("a",), frames=10, labelled=(9,))
    report = scan.scan_dataset("folder", root, ("train",), NUM_CLASSES, num_key_frames=2, cache_dir=None)
    assert report.problems == [] and report.files == 3 + 1  # frames 7, 8, 9 and the label
    assert scan.scan_dataset("folder", root, ("train",), NUM_CLASSES, cache_dir=None).files == 10 + 1


def test_the_cache_is_outside_the_dataset_and_rereads_only_changed_files(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    root = str(tmp_path / "data")
    good_split(os.path.join(root, "train"))
    before = sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files)
    first = scan.scan_dataset("folder", root, ("train",), NUM_CLASSES, num_key_frames=1)
    assert (first.files, first.cached, first.problems) == (12, 0, [])  # 2 sequences: frames 1..4, 2 labels
    assert sorted(os.path.join(d, f) for d, _, files in os.walk(root) for f in files) == before  # nothing written there
    cached = os.listdir(tmp_path / "xdg" / "stt_keras" / "scan")
    assert len(cached) == 1 and cached[0].endswith(".json")
    assert json.load(open(tmp_path / "xdg" / "stt_keras" / "scan" / cached[0]))["root"] == os.path.realpath(root)
    second = scan.scan_dataset("folder", root, ("train",), NUM_CLASSES, num_key_frames=1)
    assert (second.files, second.cached) == (12, 12)
    bad = os.path.join(root, "train", "labels", "a", "img_004.png")
    write(bad, label(value=9))  # new contents (size and mtime change): read again, and its problem is found
    os.utime(bad, ns=(1, 1))
    third = scan.scan_dataset("folder", root, ("train",), NUM_CLASSES, num_key_frames=1)
    assert third.cached == 11 and [p for p, _ in third.problems] == [bad]
    # The class count is not part of the cache: the same cached values checked against 10 classes are fine.
    assert scan.scan_dataset("folder", root, ("train",), 10, num_key_frames=1).problems == []


def test_an_unwritable_cache_is_a_note_and_the_scan_still_runs(tmp_path, capsys):
    root = str(tmp_path / "data")
    good_split(os.path.join(root, "train"))
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    report = scan.scan_dataset("folder", root, ("train",), NUM_CLASSES, num_key_frames=1, cache_dir=str(blocker / "c"),
                               prog="stt-train")
    assert report.problems == [] and report.files == 12
    assert "stt-train: note: cannot write the scan cache" in capsys.readouterr().err


def test_a_damaged_cache_file_is_rebuilt(tmp_path):
    root = str(tmp_path / "data")
    good_split(os.path.join(root, "train"))
    cache_dir = str(tmp_path / "cache")
    scan.scan_dataset("folder", root, ("train",), NUM_CLASSES, num_key_frames=1, cache_dir=cache_dir)
    (name,) = os.listdir(cache_dir)
    with open(os.path.join(cache_dir, name), "w") as f:
        f.write('{"format": "stt-keras-scan/1", "files": ')  # cut mid-write
    report = scan.scan_dataset("folder", root, ("train",), NUM_CLASSES, num_key_frames=1, cache_dir=cache_dir)
    assert (report.cached, report.problems) == (0, [])


def test_large_sets_print_progress(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(scan, "PROGRESS_FROM", 5)
    monkeypatch.setenv("STT_KERAS_PROGRESS_SECONDS", "0")
    root = str(tmp_path / "data")
    good_split(os.path.join(root, "train"))
    scan.scan_dataset("folder", root, ("train",), NUM_CLASSES, num_key_frames=1, cache_dir=None, prog="stt-train")
    assert "stt-train: scanning the dataset: 12/12 files (100%)" in capsys.readouterr().err


def test_other_readers_cityscapes_camvid_vspw_video(tmp_path):
    # Cityscapes: labelIds above 33 (other than 255) are named; a truncated sequence frame too.
    city = tmp_path / "cityscapes"
    for f in range(100, 130):
        write(city / "leftImg8bit_sequence" / "val" / "aachen" / f"aachen_000001_{f:06d}_leftImg8bit.png", frame(8, 16, f))
    lab = write(city / "gtFine" / "val" / "aachen" / "aachen_000001_000119_gtFine_labelIds.png", label(8, 16, 40))
    cut(str(city / "leftImg8bit_sequence" / "val" / "aachen" / "aachen_000001_000118_leftImg8bit.png"))
    problems = scan.scan_dataset("cityscapes", str(city), ("val",), num_key_frames=1, cache_dir=None).problems
    assert [p for p, _ in problems] == [lab, str(city / "leftImg8bit_sequence" / "val" / "aachen" /
                                                 "aachen_000001_000118_leftImg8bit.png")]
    assert problems[0][1] == "label values [40] are outside Cityscapes labelIds (0..33, and 255)"
    # CamVid: a label value >= 11.
    camvid = tmp_path / "camvid"
    for f in range(5):
        write(camvid / "frames" / "S" / f"S_{f:06d}.png", frame(8, 8, f))
    lab = write(camvid / "labels" / "test" / "S_000004.png", label(8, 8, 11))
    assert [p for p, _ in scan.scan_dataset("camvid", str(camvid), ("test",), 11, cache_dir=None).problems] == [lab]
    # VSPW: a mask value outside 0..124 and 255.
    vspw = tmp_path / "vspw"
    (vspw / "data").mkdir(parents=True)
    (vspw / "val.txt").write_text("v1\n")
    for i in range(3):
        write(vspw / "data" / "v1" / "origin" / f"{i:08d}.jpg", frame(8, 8, i))
        write(vspw / "data" / "v1" / "mask" / f"{i:08d}.png", label(8, 8, 200 if i == 1 else 124))
    problems = scan.scan_dataset("vspw", str(vspw), ("val",), cache_dir=None).problems
    assert problems == [(str(vspw / "data" / "v1" / "mask" / "00000001.png"),
                         "label values [200] are outside VSPW mask values (0..124 and 255)")]
    # A video: its labels against its frame size.
    from stt_keras.data.synthetic import write_video

    video = str(tmp_path / "drive.avi")
    write_video(video, frames=4, height=32, width=48)
    write(tmp_path / "drive_labels" / "000001.png", label(32, 48))
    wrong = write(tmp_path / "drive_labels" / "000002.png", label(16, 48))
    problems = scan.scan_dataset("video", video, ("val",), NUM_CLASSES, label_dir=str(tmp_path / "drive_labels"),
                                 cache_dir=None).problems
    assert problems == [(wrong, "label is 16x48 but its frame of the video is 32x48")]


def tripwire(*args, **kwargs):
    raise AssertionError("a model was built before the dataset scan answered")


def test_stt_train_lists_every_problem_then_one_line_before_any_model(tmp_path, monkeypatch, capsys):
    from stt_keras.models import STTSegmenter
    from stt_keras.training import train as train_lib

    root = str(tmp_path / "data")
    expected = bad_dataset(root)
    monkeypatch.setattr(STTSegmenter, "from_preset", classmethod(tripwire))
    argv = ["--dataset", "folder", "--data-root", root, "--num-classes", "3", "--out", str(tmp_path / "run"),
            "--steps", "1", "--batch-size", "1"]
    with pytest.raises(SystemExit) as error:
        train_lib.main(argv)
    assert error.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[-1] == ("stt-train: error: 6 problems in the dataset, listed above; fix them, or pass --skip-scan "
                         "to run without the scan.")
    assert lines[-8] == "stt-train: the dataset scan found 6 problems:"
    assert [line.split(": ")[0].strip() for line in lines[-7:-1]] == sorted(expected)
    assert not os.path.exists(tmp_path / "run" / "run.json")  # nothing of a run was stored
    # --skip-scan: the run goes on to build its model (here: the tripwire).
    with pytest.raises(AssertionError, match="before the dataset scan"):
        train_lib.main([*argv, "--skip-scan"])


def test_stt_eval_scans_before_loading_the_model_and_checks_classes_after(tmp_path, monkeypatch, capsys):
    from stt_keras.training import evaluate as eval_lib

    root = str(tmp_path / "data")
    good_split(os.path.join(root, "val"), ("a",))
    cut(os.path.join(root, "val", "frames", "a", "img_003.jpg"))
    model = tmp_path / "m.keras"
    model.write_bytes(b"not read: the scan answers first")
    monkeypatch.setattr(eval_lib, "load_model", tripwire)
    argv = ["--model", str(model), "--dataset", "folder", "--data-root", root, "--out", str(tmp_path / "eval")]
    with pytest.raises(SystemExit) as error:
        eval_lib.main(argv)
    err = capsys.readouterr().err
    assert error.value.code == 2 and "stt-eval: error: 1 problem in the dataset, listed above" in err
    assert f"  {os.path.join(root, 'val', 'frames', 'a', 'img_003.jpg')}: truncated JPEG" in err
    # A folder's labels are checked against the model's class count, read once it is loaded, before any frame runs.
    write(os.path.join(root, "val", "frames", "a", "img_003.jpg"), frame(seed=3))
    write(os.path.join(root, "val", "labels", "a", "img_004.png"), label(value=2))

    class TwoClasses:
        num_classes, stt = 2, None

    monkeypatch.setattr(eval_lib, "load_model", lambda *a, **k: TwoClasses())
    monkeypatch.setattr(eval_lib, "evaluate_with_ablation", tripwire)
    with pytest.raises(SystemExit) as error:
        eval_lib.main(argv)
    err = capsys.readouterr().err
    assert error.value.code == 2 and "stt-eval: error: 1 problem in the dataset, listed above" in err
    assert "img_004.png: label values [2] are outside the 2 classes (0..1, and 255 for ignore)" in err
    assert not os.path.exists(tmp_path / "eval")


def test_every_clip_that_misses_a_frame_is_listed(tmp_path):
    """The listing alone stops at the first missing frame; the scan lists every clip that misses one."""
    root = str(tmp_path / "data")
    good_split(os.path.join(root, "train"), ("a", "b"), frames=10, labelled=(4, 9))
    os.remove(os.path.join(root, "train", "frames", "a", "img_003.jpg"))
    os.remove(os.path.join(root, "train", "frames", "b", "img_008.jpg"))
    write(os.path.join(root, "train", "labels", "b", "img_009.png"), label(value=5))  # also out of range
    report = scan.scan_dataset("folder", root, ("train",), NUM_CLASSES, num_key_frames=2, cache_dir=None)
    labels = os.path.join(root, "train", "labels")
    assert [(os.path.relpath(p, labels), m.split(" (T=")[0]) for p, m in report.problems] == [
        ("a/img_004.png", f"its clip needs {os.path.join(root, 'train', 'frames', 'a', 'img_003.jpg')}, which does not exist"),
        ("b/img_009.png", f"its clip needs {os.path.join(root, 'train', 'frames', 'b', 'img_008.jpg')}, which does not exist"),
    ]
    # The label of a skipped clip is not read (the run would not read it); with T=0 it is, and its values are named.
    report = scan.scan_dataset("folder", root, ("train",), NUM_CLASSES, num_key_frames=0, cache_dir=None)
    assert [(os.path.relpath(p, labels), m) for p, m in report.problems] == [
        ("b/img_009.png", "label values [5] are outside the 3 classes (0..2, and 255 for ignore)")]
