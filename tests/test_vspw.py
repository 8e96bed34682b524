"""VSPW: the reader (layout, split files, 0/255 handling) and mVC_8 / mVC_16 against VSPW's own VC_perclip.py.

`vc_perclip` below is a loop-for-loop transcription of the scripts, written apart from
`training.consistency.VideoConsistency` (which streams frame by frame): the VSPW authors'
VSPW-dataset/VSPW_code/VC_perclip.py ("vspw") and its copy in GuoleiSun/VSS-CFFM (and
VSS-MRCFA) VC_perclip.py ("cffm").
"""

import json
import os

import cv2
import numpy as np
import pytest

from stt_keras.data import readers
from stt_keras.data.files import LabelFiles, make_file_dataset
from stt_keras.training.consistency import VideoConsistency, window_consistency
from test_metrics import numpy_miou


# ----------------------------------------------------------------- the scripts, by hand
def get_common(list_, predlist, clip_num, h, w):
    """VC_perclip.py's get_common, as written there (windows i in range(len - clip_num))."""
    accs = []
    for i in range(len(list_) - clip_num):
        global_common = np.ones((h, w))
        predglobal_common = np.ones((h, w))
        for j in range(1, clip_num):
            common = list_[i] == list_[i + j]
            global_common = np.logical_and(global_common, common)
            pred_common = predlist[i] == predlist[i + j]
            predglobal_common = np.logical_and(predglobal_common, pred_common)
        pred = predglobal_common * global_common
        with np.errstate(invalid="ignore", divide="ignore"):
            acc = pred.sum() / global_common.sum()
        accs.append(acc)
    return accs


def vc_perclip(videos, clip_num, protocol="vspw"):
    """mVC_clip_num of [(stored masks [N, H, W], predictions [N, H, W])] as the script computes it."""
    total_acc = []
    for masks, preds in videos:
        if len(masks) <= (clip_num if protocol == "vspw" else 16):  # CFFM's copy skips <= 16 for VC8 too
            continue
        imglist = []
        for img in masks:
            img = img.copy()
            if protocol == "cffm":  # "added by guolei"
                img[img == 0] = 255
                img = img - 1
                img[img == 254] = 255
            imglist.append(img)
        h, w = masks[0].shape
        total_acc.extend(get_common(imglist, list(preds), clip_num, h, w))
    if not total_acc or np.all(np.isnan(total_acc)):
        return None
    return float(np.nanmean(np.array(total_acc)))


def stream(videos, protocol="vspw", windows=(8, 16)):
    """VideoConsistency fed frame by frame; train ids from the stored masks as the VSPW reader maps them."""
    vc = VideoConsistency(windows, protocol=protocol)
    for masks, preds in videos:
        vc.start_sequence()
        for mask, pred in zip(masks, preds):
            vc.update(readers.vspw_to_train_ids(mask), pred, stored=mask)
        vc.end_sequence()
    return vc


# ----------------------------------------------------------------- a fixture worked out on paper
def paper_videos():
    """Four tiny videos whose mVC is worked out by hand in `test_mvc_matches_a_hand_computation`.
    Masks are stored VSPW values (0 others, 255 void, k = class k - 1)."""
    # A: 10 frames, 2x2. p0 class 5 throughout; p1 "others" (0) throughout; p2 void (255) on frames 0-4 and
    # "others" (0) on 5-9; p3 stored 4 on frames 0-8 and 8 on frame 9 (inside no counted window).
    a_mask = np.zeros((10, 2, 2), np.uint8)
    a_mask[:, 0, 0] = 6
    a_mask[:, 0, 1] = 0
    a_mask[:5, 1, 0], a_mask[5:, 1, 0] = 255, 0
    a_mask[:, 1, 1] = 4
    a_mask[9, 1, 1] = 8
    a_pred = np.zeros((10, 2, 2), np.int64)
    a_pred[:, 0, 0] = 1
    a_pred[:, 0, 1] = 2
    a_pred[8, 0, 1] = 4  # breaks p1's prediction in window 1 (frames 1-8) only
    a_pred[:, 1, 0] = 0
    a_pred[:, 1, 1] = 3
    # B: 18 frames, 1x2. q0 void on frames 0-8, "others" on 9-17; q1 stored 3 throughout.
    b_mask = np.zeros((18, 1, 2), np.uint8)
    b_mask[:9, 0, 0], b_mask[9:, 0, 0] = 255, 0
    b_mask[:, 0, 1] = 3
    b_pred = np.zeros((18, 1, 2), np.int64)
    b_pred[3:, 0, 0] = 4  # q0's prediction changes between frames 2 and 3
    b_pred[:, 0, 1] = 1
    b_pred[17, 0, 1] = 5  # only on the last frame: in no counted window
    # C: 5 frames (shorter than 8): no window.
    c_mask = np.full((5, 2, 3), 7, np.uint8)
    c_pred = np.arange(5)[:, None, None] * np.ones((5, 2, 3), np.int64)
    # D: 9 frames, 1x1, the ground truth changes every frame: its one 8-window is 0/0 = NaN.
    d_mask = np.arange(1, 10, dtype=np.uint8).reshape(9, 1, 1)
    d_pred = np.zeros((9, 1, 1), np.int64)
    return [(a_mask, a_pred), (b_mask, b_pred), (c_mask, c_pred), (d_mask, d_pred)]


def test_mvc_matches_a_hand_computation():
    """By hand (windows start at 0 .. N - n - 1; VC = consistent predictions / consistent ground truth):
    VSPW protocol, n = 8:
      A (2 windows): frames 0-7: consistent GT {p0, p1, p3} (p2 goes 255 -> 0), predictions all consistent: 3/3;
                     frames 1-8: p1's prediction changes at frame 8: 2/3.
      B (10 windows): q0's GT is consistent only in windows 0, 1 (all 255) and 9 (all 0); its prediction
                     changes between frames 2 and 3, so windows 0 and 1 score 1/2, the other 8 score 1.
      C: 5 frames, none.  D: 1 window, NaN, left out.
      mVC_8, the mean over the 12 pooled windows with a value: (1 + 2/3 + 1/2 + 1/2 + 8) / 12 = 8/9.
    n = 16: only B (18 frames) has windows (0-15, 1-16): q0's GT breaks at 8/9, q1 consistent: 1, 1 -> 1.
    CFFM protocol (0 and 255 are both 255; videos of <= 16 frames skipped for every n): only B counts;
      q0's GT is consistent everywhere. n = 8: windows 0, 1, 2 span frames 2-3 (1/2), windows 3-9 score 1:
      (1.5 + 7) / 10 = 0.85. n = 16: both windows span frames 2-3: 0.5.
    """
    videos = paper_videos()
    vspw, cffm = stream(videos, "vspw").result(), stream(videos, "cffm").result()
    assert vspw[8] == pytest.approx(8 / 9, abs=1e-12)
    assert vspw[16] == pytest.approx(1.0, abs=1e-12)
    assert cffm[8] == pytest.approx(0.85, abs=1e-12)
    assert cffm[16] == pytest.approx(0.5, abs=1e-12)
    # The transcribed scripts agree with the paper values...
    assert vc_perclip(videos, 8) == pytest.approx(8 / 9, abs=1e-12)
    assert vc_perclip(videos, 16) == pytest.approx(1.0, abs=1e-12)
    assert vc_perclip(videos, 8, "cffm") == pytest.approx(0.85, abs=1e-12)
    assert vc_perclip(videos, 16, "cffm") == pytest.approx(0.5, abs=1e-12)
    # ...and the quirks are the reason: all windows (N - n + 1) or a mean over videos give other numbers.
    per_video = np.mean([np.mean(get_common(m, p, 8, *m.shape[1:])) for m, p in videos[:2]])  # A, B: 5/6, 0.9
    assert per_video == pytest.approx((5 / 6 + 0.9) / 2) and abs(per_video - 8 / 9) > 0.02
    # A's window on frames 2-9 (the one ending on the last frame, which the script never counts) scores 1/2:
    # p3's GT breaks on frame 9, p1's prediction on frame 8.
    assert window_consistency(videos[0][0][2:], videos[0][1][2:]) == 0.5
    counted = stream(videos, "vspw")
    assert counted.windows_counted() == {8: 2 + 10 + 1, 16: 2} and counted.sequences == 4


def test_mvc_matches_the_scripts_on_random_videos():
    """Random clips with blocky, slowly changing labels (long and short videos, 0 and 255 regions): the
    streaming metric equals the transcribed scripts to float rounding, both protocols, both window sizes."""
    rng = np.random.default_rng(0)
    videos = []
    for length in (30, 17, 16, 12, 9, 8, 7, 40):
        h, w = rng.integers(3, 7, 2)
        masks = np.repeat(rng.choice([0, 1, 2, 3, 124, 255], (1, h, w)), length, axis=0).astype(np.uint8)
        preds = np.repeat(rng.integers(0, 4, (1, h, w)), length, axis=0)
        for t in range(1, length):  # a few pixels change per frame, so windows differ
            masks[t:, rng.integers(h), rng.integers(w)] = rng.choice([0, 2, 255])
            preds[t:, rng.integers(h), rng.integers(w)] = rng.integers(0, 4)
        videos.append((masks, preds))
    for protocol in ("vspw", "cffm"):
        result = stream(videos, protocol).result()
        for n in (8, 16):
            assert result[n] == pytest.approx(vc_perclip(videos, n, protocol), abs=1e-12), (protocol, n)
    # Both protocols differ here (0 <-> 255 changes; 9..16-frame videos count for mVC_8 only under "vspw").
    assert stream(videos, "vspw").result()[8] != stream(videos, "cffm").result()[8]


def test_window_consistency_and_sparse_sequences():
    labels = np.array([[[1, 2]], [[1, 3]], [[1, 2]]])
    assert window_consistency(labels, np.array([[[0, 0]], [[0, 0]], [[0, 0]]])) == 1.0
    assert window_consistency(labels, np.array([[[0, 0]], [[5, 0]], [[0, 0]]])) == 0.0
    assert np.isnan(window_consistency(np.array([[[1]], [[2]]]), np.zeros((2, 1, 1))))
    # A sequence with an unlabelled frame is left out whole; nothing counted -> None.
    vc = VideoConsistency()
    vc.start_sequence()
    for t in range(20):
        vc.update(None if t == 10 else np.zeros((2, 2), np.uint8), np.zeros((2, 2)))
    vc.end_sequence()
    assert vc.result() == {8: None, 16: None} and vc.sequences == 0 and vc.sequences_skipped == 1
    with pytest.raises(ValueError, match="protocol"):
        VideoConsistency(protocol="mean")
    vc.start_sequence()
    vc.update(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="Frame 1 is 3x2, the frames before it 2x2"):
        vc.update(np.zeros((2, 3)), np.zeros((2, 3)))


# ----------------------------------------------------------------- a VSPW tree on disk
H, W = 32, 64
LENGTHS = {"1001_abc": 20, "1002_def": 12, "1003_ghi": 5}  # one video shorter than 8 frames


def write_vspw(root, rng=None):
    """ROOT/{train,val}.txt, ROOT/data/VIDEO/origin/*.jpg and mask/*.png; frames numbered as VSPW names them."""
    rng = rng or np.random.default_rng(7)
    videos = {}
    for video, length in LENGTHS.items():
        os.makedirs(os.path.join(root, "data", video, "origin"))
        os.makedirs(os.path.join(root, "data", video, "mask"))
        base = rng.choice([0, 1, 5, 124, 255], (4, 8)).astype(np.uint8)  # 0 "others", 255 void
        masks = []
        for t in range(length):
            block = base.copy()
            block[rng.integers(4), rng.integers(8)] = rng.choice([2, 0, 255])
            base = block if t % 3 == 0 else base
            mask = cv2.resize(block, (W, H), interpolation=cv2.INTER_NEAREST)
            name = f"{t * 15:08d}"  # not 0, 1, 2 ...: the order is the sorted names
            cv2.imwrite(os.path.join(root, "data", video, "origin", name + ".jpg"),
                        rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
            cv2.imwrite(os.path.join(root, "data", video, "mask", name + ".png"), mask)
            masks.append(mask)
        videos[video] = np.stack(masks)
    with open(os.path.join(root, "val.txt"), "w") as f:
        f.write("".join(v + "\n" for v in LENGTHS))
    with open(os.path.join(root, "train.txt"), "w") as f:
        f.write("1002_def\n1003_ghi")  # no final newline
    return videos


def test_reader_lists_every_frame_with_its_mask_and_maps_0_and_255(tmp_path):
    root = str(tmp_path / "VSPW_480p")
    videos = write_vspw(root)
    listed = readers.vspw_sequences(root, "val")
    assert [name for name, _, _ in listed] == list(LENGTHS)
    for name, frames, masks in listed:
        assert len(frames) == LENGTHS[name] and sorted(masks) == list(range(LENGTHS[name]))
        assert frames == sorted(frames) and all(p.endswith(".jpg") for p in frames)
        labels = LabelFiles(masks, len(readers.VSPW_CLASSES), "vspw")
        for t in (0, len(frames) - 1):
            stored = videos[name][t]
            train_ids, raw = labels.with_stored(t)
            np.testing.assert_array_equal(raw, stored)
            expected = np.where((stored == 0) | (stored == 255), 255, stored.astype(np.int64) - 1)
            np.testing.assert_array_equal(train_ids, expected)
            np.testing.assert_array_equal(labels[t], expected)
    assert [name for name, _, _ in readers.vspw_sequences(root, "train")] == ["1002_def", "1003_ghi"]
    assert len(readers.VSPW_CLASSES) == 124
    assert readers.VSPW_CLASSES[0] == "wall" and readers.VSPW_CLASSES[123] == "train"
    mapped = readers.vspw_to_train_ids(np.array([[0, 1, 124, 255]], np.uint8))
    np.testing.assert_array_equal(mapped, [[255, 0, 123, 255]])
    with pytest.raises(ValueError, match=r"\[125\]"):
        readers.vspw_to_train_ids(np.array([[125, 3]], np.uint8))


def test_reader_training_clips_end_at_every_frame(tmp_path):
    root = str(tmp_path / "VSPW_480p")
    videos = write_vspw(root)
    samples = readers.vspw_samples(root, "val", num_key_frames=3)
    assert len(samples) == sum(LENGTHS.values())  # every frame ends a clip, the first T padded
    first = readers.vspw_sequences(root, "val")[0][1]
    assert samples[0][0] == [first[0]] * 4 and samples[5][0] == first[2:6]
    skipped = readers.vspw_samples(root, "val", num_key_frames=3, first_frames="skip")
    assert len(skipped) == sum(n - 3 for n in LENGTHS.values()) and skipped.skipped == 9
    ds = make_file_dataset(samples[:4], 124, batch_size=4, training=False, label_format="vspw")
    clips, labels = next(iter(ds))
    assert clips.shape == (4, 4, H, W, 3)
    stored = videos["1001_abc"][:4]
    np.testing.assert_array_equal(labels.numpy(), np.where((stored == 0) | (stored == 255), 255, stored - 1.0))


def test_reader_names_what_is_missing(tmp_path):
    root = str(tmp_path / "VSPW_480p")
    write_vspw(root)
    with pytest.raises(FileNotFoundError, match="test.txt"):
        readers.vspw_sequences(root, "test")
    os.remove(os.path.join(root, "data", "1002_def", "mask", f"{15:08d}.png"))
    with pytest.raises(FileNotFoundError, match=f"1002_def.origin.{15:08d}.jpg has no mask"):
        readers.vspw_sequences(root, "val")
    cv2.imwrite(os.path.join(root, "data", "1002_def", "mask", "99999999.png"), np.zeros((H, W), np.uint8))
    with pytest.raises(FileNotFoundError, match="99999999.png has no frame"):
        readers.vspw_sequences(root, "train")


# ----------------------------------------------------------------- stt-eval end to end
def test_stt_eval_vspw_end_to_end(tmp_path):
    """stt-eval --dataset vspw on the fixture tree: mIoU over every frame on the mapped labels, mVC_8 / mVC_16
    as the transcribed script computes them on the model's own predictions, both protocols."""
    from stt_keras.models import STTSegmenter
    from stt_keras.training.evaluate import build_parser, run

    root = str(tmp_path / "VSPW_480p")
    videos = write_vspw(root)
    model = STTSegmenter.from_preset("psp_tiny", num_classes=124)
    model(np.zeros((1, H, W, 3), np.uint8))
    path = str(tmp_path / "m.keras")
    model.save(path)
    out = str(tmp_path / "eval")
    results = run(build_parser().parse_args(["--model", path, "--dataset", "vspw", "--data-root", root, "--split", "val",
                                             "--out", out]))
    predicted, trues, preds = [], [], []
    for name, frames, _ in readers.vspw_sequences(root, "val"):
        p = np.stack([np.asarray(model(cv2.imread(f)[None, ..., ::-1])[0]).argmax(-1) for f in frames])
        predicted.append((videos[name], p))
        trues.append(readers.vspw_to_train_ids(videos[name]).ravel().astype(np.int64))
        preds.append(p.ravel())
    np.testing.assert_allclose(results["miou"], numpy_miou(np.concatenate(trues), np.concatenate(preds), 124), rtol=1e-6)
    assert len({int(v) for p in preds for v in np.unique(p)}) > 1  # the predictions are not one class everywhere
    assert results["mvc_8"] == pytest.approx(vc_perclip(predicted, 8), abs=1e-9)
    assert results["mvc_16"] == pytest.approx(vc_perclip(predicted, 16), abs=1e-9)
    assert results["vc_windows"] == {"8": (20 - 8) + (12 - 8), "16": 20 - 16} and results["vc_sequences"] == 3
    assert results["class_names"] == list(readers.VSPW_CLASSES) and results["vc_protocol"] == "vspw"
    saved = json.load(open(os.path.join(out, "results.json")))
    assert saved["mvc_8"] == results["mvc_8"]
    report = open(os.path.join(out, "report.md")).read()
    assert f"| mVC_8 (vspw protocol, 16 windows of 3 densely labelled sequences) | {100 * results['mvc_8']:.1f} |" in report
    cffm = run(build_parser().parse_args(["--model", path, "--dataset", "vspw", "--data-root", root, "--out", out,
                                          "--vc-protocol", "cffm"]))
    assert cffm["mvc_8"] == pytest.approx(vc_perclip(predicted, 8, "cffm"), abs=1e-9)
    assert cffm["vc_windows"] == {"8": 12, "16": 4} and cffm["vc_sequences"] == 1  # only the 20-frame video


def test_stt_eval_reports_mvc_on_the_synthetic_set_and_names_a_missing_split(tmp_path, capsys):
    from stt_keras.models import STTSegmenter
    from stt_keras.training.evaluate import evaluate, main, synthetic_sequences

    model = STTSegmenter.from_preset("psp_tiny", num_classes=7)
    sequences = list(synthetic_sequences(1, frames=18, size=(32, 64)))
    results = evaluate(model, sequences, 7)
    assert results["vc_windows"] == {"8": 10, "16": 2} and 0.0 <= results["mvc_8"] <= 1.0
    # Labelled every other frame: no sequence is densely labelled, so no mVC.
    sparse = evaluate(model, list(synthetic_sequences(1, frames=18, size=(32, 64), labelled_every=2)), 7)
    assert sparse["mvc_8"] is None and sparse["vc_sequences"] == 0
    model(np.zeros((1, 32, 64, 3), np.uint8))
    model.save(str(tmp_path / "m.keras"))
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", str(tmp_path / "m.keras"), "--dataset", "vspw", "--data-root", str(tmp_path),
              "--out", str(tmp_path / "eval")])
    assert exit_info.value.code == 2
    assert "no VSPW split file" in capsys.readouterr().err


def test_stt_train_reads_vspw(tmp_path):
    """stt-train --dataset vspw: 124 classes without --num-classes, clips ending at every frame of the split,
    labels mapped."""
    from stt_keras.utils.errors import UserError
    from stt_keras.training.train import TrainConfig, check_config, make_datasets

    root = str(tmp_path / "VSPW_480p")
    videos = write_vspw(root)
    config = check_config(TrainConfig(preset="stt_psp_tiny", out=str(tmp_path / "run"), dataset="vspw", data_root=root,
                                      batch_size=2, crop="32x32"))
    _, val = make_datasets(config, num_key_frames=3, num_classes=124, start_step=0)
    clips, labels = next(iter(val))  # the val split in order, cropped to 32x32 around the centre
    stored = videos["1001_abc"][:2, :, 16:48]
    np.testing.assert_array_equal(labels.numpy(), np.where((stored == 0) | (stored == 255), 255, stored - 1.0))
    with pytest.raises(UserError, match="has 124 classes"):
        check_config(TrainConfig(preset="stt_psp_tiny", out="x", dataset="vspw", data_root=root, num_classes=19))


@pytest.mark.slow
def test_stt_train_runs_on_vspw(tmp_path):
    """A two-step stt-train run on the fixture tree (about 50 s on 2 busy cores)."""
    from stt_keras.training.train import train

    root = str(tmp_path / "VSPW_480p")
    write_vspw(root)
    model = train("stt_psp_tiny", out=str(tmp_path / "run"), dataset="vspw", data_root=root, steps=2, checkpoint_every=2,
                  batch_size=2, crop="32x32", val_batches=1, verbose=0)
    assert model.num_classes == 124 and os.path.isfile(str(tmp_path / "run" / "last.keras"))


def test_mvc_on_a_folder_dataset_scores_only_the_densely_labelled_sequences(tmp_path):
    """Folder layout: a sequence labelled on every frame is scored like VSPW's script does; one with a
    frame left unlabelled is left out of mVC (its labelled frames still count for mIoU)."""
    from stt_keras.models import STTSegmenter
    from stt_keras.training.evaluate import evaluate, file_sequences

    rng = np.random.default_rng(5)
    root = str(tmp_path / "mine")
    labels = {}
    for seq, length in (("dense", 11), ("gappy", 11)):
        os.makedirs(os.path.join(root, "frames", seq))
        os.makedirs(os.path.join(root, "labels", seq))
        block = rng.integers(0, 3, (4, 8)).astype(np.uint8)
        labels[seq] = []
        for t in range(length):
            if t % 4 == 3:
                block[rng.integers(4), rng.integers(8)] = 255
            label = cv2.resize(block, (W, H), interpolation=cv2.INTER_NEAREST)
            cv2.imwrite(os.path.join(root, "frames", seq, f"img_{t:03d}.png"),
                        rng.integers(0, 255, (H, W, 3), dtype=np.uint8))
            if not (seq == "gappy" and t == 5):
                cv2.imwrite(os.path.join(root, "labels", seq, f"img_{t:03d}.png"), label)
            labels[seq].append(label)
    model = STTSegmenter.from_preset("psp_tiny", num_classes=3)
    results = evaluate(model, file_sequences(readers.folder_sequences(root), 3), 3)
    frames = sorted(os.listdir(os.path.join(root, "frames", "dense")))
    preds = np.stack([np.asarray(model(cv2.imread(os.path.join(root, "frames", "dense", f))[None, ..., ::-1])[0])
                      .argmax(-1) for f in frames])
    assert results["vc_sequences"] == 1 and results["vc_windows"] == {"8": 3, "16": 0}
    assert results["mvc_8"] == pytest.approx(vc_perclip([(np.stack(labels["dense"]), preds)], 8), abs=1e-9)
    assert results["mvc_16"] is None


def test_export_reads_a_vspw_root_for_calibration_and_names_its_classes(tmp_path):
    """stt-export --calibration-data VSPW_ROOT: every video of the split, masks mapped; --classes vspw."""
    from stt_keras.export.calibration import UserData
    from stt_keras.data.classes import class_names_for

    root = str(tmp_path / "VSPW_480p")
    videos = write_vspw(root)
    data = UserData(root, H, W, 124, split="val")
    assert data.kind == "VSPW (split val)" and data.total_frames == sum(LENGTHS.values()) and data.has_labels
    (frames, labels), = data.segments(1, 4)[0]
    stored = videos["1001_abc"][:4]
    np.testing.assert_array_equal(labels, np.where((stored == 0) | (stored == 255), 255, stored - 1))
    names, palette, source = class_names_for(None, 124)
    assert names == list(readers.VSPW_CLASSES) and len({tuple(c) for c in palette}) == 124 and "vspw" in source
