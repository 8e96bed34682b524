"""Your own data, start to finish (docs/own_data.md): a 3-class folder dataset with a label on every frame.

stt-train (the CLI, a few steps) -> stt-eval --dataset folder -> stt-export with a labels file and int8
calibrated on the dataset's own frames -> the edge demo on a video made from those frames, showing the
dataset's class names. The pieces are also checked alone (labels files, calibration data sources, the
synthetic-calibration warning, the eval datasets) on small inputs.
"""

import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import ENV

# The generated dataset of docs/own_data.md step 0 (python -m stt_keras_cli.example_data).
from stt_keras_cli.example_data import COLOURS, NAMES, H, W, scene, write_dataset, write_classes_file  # noqa: E402,F401


def run_cli(module, *args):
    result = subprocess.run([sys.executable, "-m", module, *args], env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    return result


# ------------------------------------------------------------------ the whole path


@pytest.mark.slow
def test_own_data_train_eval_export_edge_demo(tmp_path):
    """The walkthrough of docs/own_data.md through the command-line tools (about 3 minutes on 2 busy cores)."""
    data = write_dataset(str(tmp_path / "data"))
    labels_file = write_classes_file(str(tmp_path / "classes.txt"))
    run = str(tmp_path / "run")
    old_umask = os.umask(0o022)
    try:
        trained = run_cli("stt_keras.training.train", "--preset", "stt_psp_tiny", "--dataset", "folder", "--data-root", data,
                          "--num-classes", "3", "--crop", f"{H}x{W}", "--batch-size", "2", "--steps", "6",
                          "--checkpoint-every", "3", "--lr", "0.02", "--verbose", "2", "--out", run)
    finally:
        os.umask(old_umask)
    # No noise: no failing CUDA probe, no Keras shuffle warning; models readable by the group and others.
    assert "cuInit" not in trained.stderr and "shuffle" not in trained.stderr
    model_path = os.path.join(run, "last.keras")
    for name in ("last.keras", "best.keras", "run.json", "history.csv"):
        assert os.stat(os.path.join(run, name)).st_mode & 0o777 == 0o644, name
    # 2 train sequences x 8 frames, every frame labelled and trained on (the first T padded): 16 clips.
    from stt_keras.data import folder_samples

    assert len(folder_samples(os.path.join(data, "train"), num_key_frames=3)) == 16
    check_eval(model_path, data, labels_file, tmp_path)

    # --------------------------------------------------------- save / reload as a preset directory
    import stt_keras
    from stt_keras.models import STTSegmenter

    args = export_args(model_path, str(tmp_path / "export"), data, labels_file)
    trained_model = stt_keras.load_model(model_path, compile=False)
    preset = str(tmp_path / "preset")
    trained_model.save_to_preset(preset, classes=NAMES, colors=COLOURS)
    reloaded = STTSegmenter.from_preset(preset)
    clip = np.stack([read_first_frame_png(data, t) for t in range(4)])[None]
    np.testing.assert_array_equal(np.asarray(reloaded(clip)), np.asarray(trained_model(clip)))
    # Export the preset directory itself, without --classes: its metadata carries the names and colours.
    args[args.index("--model") + 1] = preset
    del args[args.index("--classes"): args.index("--classes") + 2]

    out = str(tmp_path / "export")
    exported = run_cli("stt_keras.export.cli", *args)
    assert "stt-export: WARNING" not in exported.stderr  # calibrated on its own frames: no synthetic warning
    report = check_export(out, data)
    assert report["files"]["stt_int8.tflite"]["parity"]["label_agreement"] >= 0.9
    check_edge_demo(out, data, tmp_path, in_process=False)


def test_own_data_eval_export_edge_demo_fast(tmp_path, capsys, monkeypatch):
    """The same path without training (a random 3-class model saved by hand), in one process: the default suite's variant."""
    import stt_keras  # noqa: F401

    monkeypatch.setenv("STT_KERAS_PROGRESS_SECONDS", "0")  # a progress line at every frame
    from stt_keras.models import STTSegmenter

    data = write_dataset(str(tmp_path / "data"), splits=(("val", 1),), frames=6)
    labels_file = write_classes_file(str(tmp_path / "classes.json"))
    with open(labels_file, "w") as f:  # the JSON form of the same labels file
        json.dump([{"name": n, "color": c} for n, c in zip(NAMES, COLOURS)], f)
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=3)
    model(np.zeros((1, 4, H, W, 3), np.uint8))
    model_path = str(tmp_path / "mine.keras")
    model.save(model_path)
    check_eval(model_path, data, labels_file, tmp_path)
    from stt_keras.export import cli as export_cli

    out = str(tmp_path / "export")
    export_cli.run_export(export_cli.build_parser().parse_args(export_args(model_path, out, data, labels_file)))
    check_export(out, data, calibration=(2, 8), parity=(1, 4))
    err = capsys.readouterr().err
    for line in ("stt-eval: 6/6 frames (100%), ", "stt-export: int8 calibration (pass 1): 8/8 frames (100%), ",
                 "stt-export: parity, stt_int8.tflite: 4/4 frames (100%), ", "stt-export: parity, Keras reference: 1/4 frames (25%)\n"):
        assert line in err, line
    assert "ETA" in err
    check_edge_demo(out, data, tmp_path, in_process=True)


def export_args(model_path, out, data, labels_file):
    return ["--model", model_path, "--out", out, "--size", f"{H}x{W}", "--classes", labels_file,
            "--calibration-data", os.path.join(data, "val"), "--formats", "savedmodel,tflite", "--forms", "dense_masked",
            "--quantizations", "int8", "--calibration-sequences", "2", "--calibration-frames", "4",
            "--parity-sequences", "1", "--parity-frames", "4", "--gpu-check", "off"]


def check_eval(model_path, data, labels_file, tmp_path):
    """stt-eval --dataset folder on the val split equals streaming the val frames by hand."""
    from stt_keras.training.evaluate import build_parser as eval_parser, run as eval_run

    results = eval_run(eval_parser().parse_args([
        "--model", model_path, "--dataset", "folder", "--data-root", data, "--split", "val", "--classes", labels_file,
        "--out", str(tmp_path / "eval"), "--no-history-ablation"]))
    assert results["class_names"] == NAMES and results["data"].startswith("folder ")
    import stt_keras
    from stt_keras.data.files import read_frame
    from test_metrics import numpy_miou

    stream = stt_keras.StreamingSegmenter(stt_keras.load_model(model_path, compile=False))
    trues, preds = [], []
    seq_dir = os.path.join(data, "val", "frames", "val_walk0")
    for name in sorted(os.listdir(seq_dir)):
        preds.append(np.asarray(stream.step(read_frame(os.path.join(seq_dir, name)))).argmax(-1).ravel())
        trues.append(cv2.imread(os.path.join(data, "val", "labels", "val_walk0", name), cv2.IMREAD_UNCHANGED).ravel())
    np.testing.assert_allclose(results["miou"], numpy_miou(np.concatenate(trues).astype(np.int64),
                                                           np.concatenate(preds), 3), rtol=1e-6)
    return results


def check_export(out, data, calibration=(2, 8), parity=(1, 4)):
    """Labels in the metadata, labels.json and the SavedModel's assets; the report and manifest name the data."""
    report = json.load(open(os.path.join(out, "export_report.json")))
    manifest = json.load(open(os.path.join(out, "export_manifest.json")))
    val_root = os.path.abspath(os.path.join(data, "val"))
    for record in (report, manifest):
        assert record["calibration_data"].startswith(
            f"folder layout {val_root}: {calibration[0]} segment(s), {calibration[1]} frames ({calibration[1]} labelled)")
        assert record["parity_data"].startswith(
            f"folder layout {val_root}: {parity[0]} segment(s), {parity[1]} frames ({parity[1]} labelled)")
    meta = json.load(open(os.path.join(out, "stt_int8.json")))
    assert meta["classes"] == NAMES and meta["palette"] == COLOURS
    assert meta["converter"]["representative_dataset"] == report["calibration_data"]
    assert meta["parity_data"] == report["parity_data"]
    assert "miou" in report["files"]["stt_int8.tflite"]["parity"]  # labelled parity frames: mIoU is meaningful
    assert json.load(open(os.path.join(out, "labels.json")))["classes"] == NAMES
    assert json.load(open(os.path.join(out, "saved_model", "1", "assets", "labels.json")))["classes"] == NAMES
    import tensorflow as tf

    loaded = tf.saved_model.load(os.path.join(out, "saved_model", "1"))
    assert json.load(open(loaded.assets[0].asset_path.numpy().decode()))["palette"] == COLOURS
    return report


def check_edge_demo(out, data, tmp_path, in_process):
    """The edge demo on a video of the val frames: the user's class names in its output and in the overlay's legend."""
    seq_dir = os.path.join(data, "val", "frames", "val_walk0")
    names = sorted(os.listdir(seq_dir))
    video = str(tmp_path / "val.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    for name in names:
        writer.write(cv2.imread(os.path.join(seq_dir, name)))
    writer.release()
    overlay = str(tmp_path / "overlay.mkv")  # lossless: the legend's pixels are exact
    args = ["--model", os.path.join(out, "stt_int8.tflite"), "--video", video, "--out", overlay, "--no-display"]
    if in_process:
        import contextlib
        import io

        from stt_edge_demo import app

        text = io.StringIO()
        with contextlib.redirect_stdout(text):
            code, summary = app.run(app.build_parser().parse_args(args))
        assert code == 0 and summary["frames"] == len(names)
        stdout = text.getvalue()
    else:
        stdout = run_cli("edge_demo", *args).stdout
        assert f"{len(names)} frames" in stdout
    assert f"3 classes: {', '.join(NAMES)}" in stdout
    first = read_first_frame(overlay)
    legend = legend_text_mask(NAMES)
    other = legend_text_mask(["class_0", "class_1", "class_2"])
    assert legend.sum() >= 10 and (first[legend] == 255).all()  # every fully covered pixel of the names is white
    assert (other & ~legend).any() and not (first[other & ~legend] == 255).all()  # not the generic names
    from stt_edge_demo import overlay as drawing

    x0, y0, x1, y1 = drawing.legend_boxes(NAMES, H, W)[0]  # the first legend box: class 0's colour (BGR)
    assert (first[y0:y1 + 1, x0:x1 + 1] == COLOURS[0][::-1]).all()


def read_first_frame_png(data, t):
    return cv2.imread(os.path.join(data, "val", "frames", "val_walk0", f"frame_{t:03d}.png"))[..., ::-1]


def read_first_frame(path):
    capture = cv2.VideoCapture(path)
    ok, frame = capture.read()
    capture.release()
    assert ok
    return frame


def legend_text_mask(names):
    """Pixels the legend's class-name text covers fully (value 255 when drawn white on black)."""
    from stt_edge_demo import overlay

    image = np.zeros((H, W, 3), np.uint8)
    overlay.draw_legend(image, names, [[0, 0, 0]] * len(names), fps=None)
    return (image == 255).all(axis=-1)


# ------------------------------------------------------------------ labels files


def test_labels_file_text_and_json_forms(tmp_path):
    from stt_keras.data.classes import class_names_for, default_palette, read_classes_file

    text = tmp_path / "labels.txt"
    text.write_text("# comment\n\nroad 128 64 128\ntraffic light #FAAA1E\ncar\nsky,70,130,180\n")
    names, palette = read_classes_file(str(text), 4)
    assert names == ["road", "traffic light", "car", "sky"]
    assert palette == [[128, 64, 128], [250, 170, 30], default_palette(1)[0], [70, 130, 180]]
    for data in ([{"name": "road", "color": [128, 64, 128]}, {"name": "car"}],
                 {"classes": ["road", "car"], "palette": [[128, 64, 128], None]},
                 ["road", "car"]):
        path = tmp_path / "labels.json"
        path.write_text(json.dumps(data))
        names, palette = read_classes_file(str(path), 2)
        assert names == ["road", "car"] and len(palette) == 2 and palette[1] not in palette[:1]
        if data != ["road", "car"]:
            assert palette[0] == [128, 64, 128]
    # No --classes and no built-in set of this size: generic names; a built-in set by its class count otherwise.
    assert class_names_for(None, 3)[0] == ["class_0", "class_1", "class_2"]
    assert class_names_for(None, 19)[2] == "built-in cityscapes (by class count)"
    assert len({tuple(c) for c in default_palette(40)}) == 40


def test_the_flag_labels_is_a_deprecated_alias_of_classes(capsys):
    """One word per idea: --classes names the classes; "labels" are per-pixel class indices. --labels still answers."""
    from stt_keras_cli import evaluate as eval_cli, export as export_cli_parser

    for parser, rest in ((export_cli_parser.build_parser(), ["--model", "m.keras", "--out", "x"]),
                         (eval_cli.build_parser(), ["--model", "m.keras", "--out", "x"])):
        assert parser.parse_args(rest + ["--classes", "c.txt"]).classes == "c.txt"
        assert capsys.readouterr().err == ""
        old = parser.parse_args(rest + ["--labels", "c.txt"])
        assert old.classes == "c.txt" and not hasattr(old, "labels")
        assert capsys.readouterr().err == f"{parser.prog}: warning: --labels is named --classes now; --labels will stop working.\n"
        options = [line.split()[0] for line in parser.format_help().splitlines() if line.startswith("  -")]
        assert "--classes" in options and "--labels" not in options  # the alias is not offered


@pytest.mark.parametrize("content, message", [
    ("road\ncar\n", "has 2 classes but the model predicts 3"),
    ("road\ncar\nroad\n", "unique; repeated: \\['road'\\]"),
    ("road 300 0 0\ncar\nsky\n", "0-255"),
    ('[{"color": [1, 2, 3]}, "a", "b"]', "entry 0 has no 'name'"),
    ('{"classes": ["a", "b", "c"], "palette": [[1, 2]]}', "'palette' has 1 colours for 3 classes"),
    ('["a", "b", ', "not valid JSON"),
])
def test_bad_labels_files_are_named(tmp_path, content, message):
    from stt_keras.data.classes import read_classes_file

    path = tmp_path / ("labels.json" if content.startswith(("[", "{")) else "labels.txt")
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_classes_file(str(path), 3)


# ------------------------------------------------------------------ calibration data sources


def test_calibration_data_from_a_folder_layout_is_letterboxed_with_its_labels(tmp_path):
    from stt_edge_demo.overlay import letterbox
    from stt_keras.export.calibration import UserData

    data = write_dataset(str(tmp_path / "data"), splits=(("val", 2),), frames=6)
    user = UserData(str(tmp_path / "data"), 32, 96, 3, split="val")  # the dataset root: its val/ split is used
    assert user.kind == "folder layout (split val)" and user.total_frames == 12 and user.has_labels
    sequences, text, overlaps = user.segments(2, 3)
    assert not overlaps and [len(f) for f, _ in sequences] == [3, 3]
    assert "2 segment(s), 6 frames (6 labelled) of 2 sequence(s) / 12 frames, letterboxed to 32x96" in text
    # Two back-to-back cuts per sequence (0-3, 3-6): spread over the four, the first and the last.
    assert [(c[0].name, c[1]) for c in user.last_cuts] == [("val_walk0", 0), ("val_walk1", 3)]
    frame = cv2.imread(os.path.join(data, "val", "frames", "val_walk0", "frame_000.png"))[..., ::-1]
    expected, box = letterbox(frame, 32, 96)
    np.testing.assert_array_equal(sequences[0][0][0], expected)
    label = cv2.imread(os.path.join(data, "val", "labels", "val_walk0", "frame_000.png"), cv2.IMREAD_UNCHANGED)
    top, left, ch, cw = box
    assert (sequences[0][1][0][:, :left] == 255).all()  # the letterbox's padding is ignored
    np.testing.assert_array_equal(sequences[0][1][0][top:top + ch, left:left + cw],
                                  cv2.resize(label, (cw, ch), interpolation=cv2.INTER_NEAREST))
    # Parity segments avoid the calibration frames while there are others.
    _, _, overlaps = user.segments(2, 3, exclude=user.last_cuts)
    assert not overlaps and [(c[0].name, c[1]) for c in user.last_cuts] == [("val_walk0", 3), ("val_walk1", 0)]


def test_calibration_data_from_a_video_and_a_glob(tmp_path):
    from stt_keras.export.calibration import UserData

    video = str(tmp_path / "drive.avi")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"MJPG"), 10, (W, H))
    for t in range(9):
        writer.write(np.full((H, W, 3), 20 * t, np.uint8))
    writer.release()
    user = UserData(video, H, W, 3)
    sequences, text, _ = user.segments(3, 3)
    assert user.kind == "video file" and not user.has_labels and text.startswith(f"video file {video}: 3 segment(s)")
    # Segments 0-3, 3-6, 6-9 in decoding order (MJPG is lossy: +-4).
    assert np.abs(np.concatenate([f[:, 5, 5, 0] for f, _ in sequences]).astype(int) - 20 * np.arange(9)).max() <= 4
    assert all((labels == 255).all() for _, labels in sequences)
    folder = tmp_path / "shots"
    folder.mkdir()
    for t in range(4):
        cv2.imwrite(str(folder / f"s{t}.png"), np.full((H, W, 3), 50 * t, np.uint8))
    user = UserData(str(folder / "*.png"), H, W, 3)
    sequences, text, _ = user.segments(1, 4)
    assert user.kind == "frames matching a glob" and "4 frames (0 labelled)" in text
    np.testing.assert_array_equal(sequences[0][0][:, 0, 0, 0], [0, 50, 100, 150])
    with pytest.raises(FileNotFoundError, match="matches no image file"):
        UserData(str(tmp_path / "nothing" / "*.png"), H, W, 3)
    (tmp_path / "labels_only").mkdir()
    (tmp_path / "labels_only" / "notes.txt").write_text("no frames here")
    with pytest.raises(FileNotFoundError, match="no frames found"):
        UserData(str(tmp_path / "labels_only"), H, W, 3)


def test_calibration_labels_outside_the_classes_are_named(tmp_path):
    from stt_keras.export.calibration import UserData

    data = write_dataset(str(tmp_path / "data"), splits=(("val", 1),), frames=3)
    with pytest.raises(ValueError, match=r"label values \[2\] are outside the 2 classes"):
        UserData(os.path.join(data, "val"), H, W, 2).segments(1, 3)


def test_synthetic_calibration_warning_knows_the_training_data(tmp_path):
    from stt_keras.export.calibration import synthetic_mismatch

    model = tmp_path / "run" / "best.keras"
    model.parent.mkdir()
    assert synthetic_mismatch(str(model), 6, 6) is None  # no record, the synthetic class count: no reason to warn
    reason, _ = synthetic_mismatch(str(model), 3, 6)
    assert "predicts 3 classes" in reason
    (model.parent / "run.json").write_text(json.dumps({"settings": {"dataset": "folder", "data_root": "/data/mine",
                                                                    "val_split": "val"}}))
    reason, hint = synthetic_mismatch(str(model), 6, 6)
    assert "--dataset folder" in reason and hint == " (e.g. --calibration-data /data/mine/val)"
    (model.parent / "run.json").write_text(json.dumps({"settings": {"dataset": "synthetic"}}))
    assert synthetic_mismatch(str(model), 6, 6) is None


def test_export_of_a_three_class_model_without_labels_or_data_warns(tmp_path, capsys):
    """A model with a non-built-in class count exports (generic names); synthetic calibration of it is flagged loudly."""
    from stt_keras.export import cli as export_cli
    from stt_keras.models import STTSegmenter

    model = STTSegmenter.from_preset("psp_tiny", num_classes=3)
    model(np.zeros((1, H, W, 3), np.uint8))
    path = str(tmp_path / "run" / "last.keras")
    os.makedirs(os.path.dirname(path))
    model.save(path)
    with open(os.path.join(tmp_path, "run", "run.json"), "w") as f:
        json.dump({"settings": {"dataset": "folder", "data_root": "/data/mine", "val_split": "val"}}, f)
    out = str(tmp_path / "export")
    report = export_cli.run_export(export_cli.build_parser().parse_args(
        ["--model", path, "--out", out, "--size", f"{H}x{W}", "--formats", "tflite", "--quantizations", "float32",
         "--parity-sequences", "1", "--parity-frames", "2", "--gpu-check", "off"]))
    err = capsys.readouterr().err
    assert "no built-in class set has 3 classes and no --classes was given" in err
    assert "*" * 100 + "\nstt-export: WARNING: this model is not a synthetic-video model (it was trained on --dataset folder" in err
    assert "--calibration-data /data/mine/val" in err
    assert report["warnings"] and "SYNTHETIC" in report["warnings"][0]
    assert "**WARNING: this model is not a synthetic-video model" in open(os.path.join(out, "export_report.md")).read()
    meta = json.load(open(os.path.join(out, "frame_float32.json")))
    assert meta["classes"] == ["class_0", "class_1", "class_2"] and len(meta["palette"]) == 3
    assert "miou" not in report["files"]["frame_float32.tflite"]["parity"]  # synthetic truth means nothing here
    assert report["parity_data"].startswith("synthetic video, seed 1000: 1 sequences x 2 frames")


# ------------------------------------------------------------------ stt-eval datasets


def test_eval_streams_a_video_like_its_decoded_frames(tmp_path):
    """--dataset video (frames decoded one at a time) gives the numbers of the same frames held in memory."""
    from stt_keras.models import STTSegmenter
    from stt_keras.data.video import read_video
    from stt_keras.training.evaluate import evaluate, video_sequences

    video = str(tmp_path / "walk.mkv")
    writer = cv2.VideoWriter(video, cv2.VideoWriter_fourcc(*"FFV1"), 10, (W, H))
    rng = np.random.default_rng(1)
    os.makedirs(tmp_path / "labels")
    for t in range(5):
        image, label = scene(t, 0, rng)
        writer.write(image[..., ::-1])
        if t % 2 == 0:
            cv2.imwrite(str(tmp_path / "labels" / f"{t:06d}.png"), label)
    writer.release()
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=3)
    lazy = evaluate(model, video_sequences(video, str(tmp_path / "labels"), 3), 3)
    frames = read_video(video)
    labels = {t: cv2.imread(str(tmp_path / "labels" / f"{t:06d}.png"), cv2.IMREAD_UNCHANGED) for t in (0, 2, 4)}
    held = evaluate(model, [(frames, labels)], 3)
    for key in ("miou", "tc", "tc_occlusion_masked"):
        assert lazy[key] == held[key]
    assert lazy["frames_timed"] == 4


def test_camvid_snippets_around_each_label(tmp_path):
    from stt_keras.data.readers import camvid_sequences

    root = str(tmp_path)
    for f in range(1, 41):
        os.makedirs(os.path.join(root, "frames", "0001TP"), exist_ok=True)
        cv2.imwrite(os.path.join(root, "frames", "0001TP", f"0001TP_{f:06d}.png"), np.zeros((4, 4, 3), np.uint8))
    os.makedirs(os.path.join(root, "labels", "test"))
    for f in (5, 35):
        cv2.imwrite(os.path.join(root, "labels", "test", f"0001TP_{f:06d}.png"), np.zeros((4, 4), np.uint8))
    (a, pa, la), (b, pb, lb) = camvid_sequences(root, "test")
    # Frame 5: frames 1..5 before (the recording starts at 1), 6..15 after; frame 35: 16..35, then 36..40.
    assert [int(p[-10:-4]) for p in pa] == list(range(1, 16)) and la == {4: la[4]}
    assert [int(p[-10:-4]) for p in pb] == list(range(16, 41)) and list(lb) == [19]
    os.remove(os.path.join(root, "frames", "0001TP", "0001TP_000030.png"))
    with pytest.raises(FileNotFoundError, match="0001TP_000030.png"):
        camvid_sequences(root, "test")


def test_eval_folder_sequence_with_a_gap_is_named(tmp_path):
    from stt_keras.data.readers import folder_sequences

    data = write_dataset(str(tmp_path / "data"), splits=(("val", 1),), frames=4)
    os.remove(os.path.join(data, "val", "frames", "val_walk0", "frame_002.png"))
    with pytest.raises(FileNotFoundError, match="frame_002.png does not exist"):
        folder_sequences(os.path.join(data, "val"))


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640)])
def test_run_files_respect_the_umask(tmp_path, umask, mode):
    """last.keras / best.keras / JSON are written through a temporary file and a rename, with the umask's mode."""
    import keras

    from stt_keras.training.callbacks import atomic_save, atomic_write_json

    model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
    old = os.umask(umask)
    try:
        atomic_save(model, str(tmp_path / "last.keras"))
        atomic_write_json(str(tmp_path / "run.json"), {"a": 1})
    finally:
        os.umask(old)
    assert sorted(os.listdir(tmp_path)) == ["last.keras", "run.json"]  # no temporary left
    for name in ("last.keras", "run.json"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == mode


def test_stt_eval_camvid_cli_scores_the_labelled_frames(tmp_path):
    """stt-eval --dataset camvid: snippets around each label, CamVid's class names, mIoU of the labelled frames."""
    from stt_keras.models import STTSegmenter
    from test_metrics import numpy_miou
    from stt_keras.data.readers import CAMVID_CLASSES
    from stt_keras.training.evaluate import build_parser, run

    root = str(tmp_path / "camvid")
    rng = np.random.default_rng(3)
    os.makedirs(os.path.join(root, "frames", "Seq05VD"))
    os.makedirs(os.path.join(root, "labels", "test"))
    for f in range(1, 7):
        cv2.imwrite(os.path.join(root, "frames", "Seq05VD", f"Seq05VD_{f:06d}.png"),
                    rng.integers(0, 255, (32, 64, 3), dtype=np.uint8))
    label = rng.integers(0, 11, (32, 64)).astype(np.uint8)
    label[:4] = 255
    cv2.imwrite(os.path.join(root, "labels", "test", "Seq05VD_000004.png"), label)
    model = STTSegmenter.from_preset("psp_tiny", num_classes=11)
    model(np.zeros((1, 32, 64, 3), np.uint8))
    path = str(tmp_path / "m.keras")
    model.save(path)
    results = run(build_parser().parse_args(["--model", path, "--dataset", "camvid", "--data-root", root,
                                             "--split", "test", "--out", str(tmp_path / "eval")]))
    frame = cv2.imread(os.path.join(root, "frames", "Seq05VD", "Seq05VD_000004.png"))[..., ::-1]
    pred = np.asarray(model(frame[None])[0]).argmax(-1)
    np.testing.assert_allclose(results["miou"], numpy_miou(label.ravel().astype(np.int64), pred.ravel(), 11), rtol=1e-6)
    assert results["class_names"] == list(CAMVID_CLASSES) and results["frames_timed"] == 5  # frames 1..6, one snippet
