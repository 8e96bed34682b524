"""Dataset readers on small fixture trees in the exact on-disk layouts."""

import os

import cv2
import numpy as np
import pytest

from stt_keras.data.files import make_file_dataset
from stt_keras.data.readers import (
    CAMVID_COLOURS, camvid_colour_to_index, camvid_samples, cityscapes_samples, folder_samples,
)


def write_frame(path, number, h=16, w=32):
    """A frame whose pixels encode its frame number (to check order and stride)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.full((h, w, 3), number % 256, np.uint8))


def cityscapes_tree(root, split="val", cities=("aachen", "bochum"), annotated=19, frames=30, h=16, w=32):
    for c, city in enumerate(cities):
        seq = 7 + c
        start = 100 * (c + 1)  # real snippets do not start at 0
        for f in range(start, start + frames):
            write_frame(os.path.join(root, "leftImg8bit_sequence", split, city, f"{city}_{seq:06d}_{f:06d}_leftImg8bit.png"), f, h, w)
        label = np.zeros((h, w), np.uint8)
        label[:, : w // 4] = 7
        label[:, w // 4: w // 2] = 33
        label[:, w // 2: 3 * w // 4] = 6
        label[:, 3 * w // 4:] = 26
        path = os.path.join(root, "gtFine", split, city, f"{city}_{seq:06d}_{start + annotated:06d}_gtFine_labelIds.png")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        cv2.imwrite(path, label)


def test_cityscapes_samples_and_clip_order(tmp_path):
    cityscapes_tree(str(tmp_path))
    samples = cityscapes_samples(str(tmp_path), "val", num_key_frames=3, frame_stride=2)
    assert len(samples) == 2
    frames, label = samples[0]
    assert label.endswith("aachen_000007_000119_gtFine_labelIds.png")
    assert [os.path.basename(f) for f in frames] == [f"aachen_000007_{n:06d}_leftImg8bit.png" for n in (113, 115, 117, 119)]
    clip, lab = next(iter(make_file_dataset(samples, 19, batch_size=2, training=False, label_format="cityscapes")))
    np.testing.assert_array_equal(clip.numpy()[0, :, 0, 0, 0], [113, 115, 117, 119])
    np.testing.assert_array_equal(clip.numpy()[1, :, 0, 0, 0], [213 % 256, 215 % 256, 217 % 256, 219 % 256])
    # labelIds 7 -> road (0), 33 -> bicycle (18), 6 -> ignored, 26 -> car (13)
    np.testing.assert_array_equal(lab.numpy()[0, 0, [0, 8, 16, 24]], [0, 18, 255, 13])


def test_cityscapes_missing_frame_is_named_or_skipped(tmp_path):
    cityscapes_tree(str(tmp_path))
    missing = tmp_path / "leftImg8bit_sequence" / "val" / "bochum" / "bochum_000008_000217_leftImg8bit.png"
    os.remove(missing)
    with pytest.raises(FileNotFoundError, match="bochum_000008_000217_leftImg8bit.png"):
        cityscapes_samples(str(tmp_path), "val", num_key_frames=3)
    samples = cityscapes_samples(str(tmp_path), "val", num_key_frames=3, skip_incomplete=True)
    assert len(samples) == 1 and samples.skipped == 1


def test_cityscapes_sequence_too_short(tmp_path):
    cityscapes_tree(str(tmp_path), annotated=2)
    with pytest.raises(FileNotFoundError, match="needs"):
        cityscapes_samples(str(tmp_path), "val", num_key_frames=7)


def test_missing_dataset_root_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="gtFine"):
        cityscapes_samples(str(tmp_path), "train", 3)
    with pytest.raises(FileNotFoundError, match="labels"):
        camvid_samples(str(tmp_path), "train", 3)


def test_corrupt_frame_and_bad_label_are_named(tmp_path):
    cityscapes_tree(str(tmp_path), cities=("aachen",))
    samples = cityscapes_samples(str(tmp_path), "val", num_key_frames=1)
    with open(samples[0][0][0], "wb") as f:
        f.write(b"\x89PNG not really")
    with pytest.raises(Exception, match="aachen_000007_000118_leftImg8bit.png"):
        next(iter(make_file_dataset(samples, 19, 1, training=False, label_format="cityscapes")))
    cityscapes_tree(str(tmp_path), cities=("aachen",))
    label = np.full((16, 32), 40, np.uint8)
    cv2.imwrite(samples[0][1], label)
    with pytest.raises(Exception, match="above 33"):
        next(iter(make_file_dataset(samples, 19, 1, training=False, label_format="cityscapes")))


def test_camvid_layout_and_colour_conversion(tmp_path):
    root = str(tmp_path)
    for f in range(8540, 8551):
        write_frame(os.path.join(root, "frames", "0016E5", f"0016E5_{f:06d}.png"), f)
    colour = np.zeros((16, 32, 3), np.uint8)
    colour[:, :16] = CAMVID_COLOURS[3]  # Road
    colour[:, 16:] = [10, 20, 30]  # not one of the 11 classes: void
    index = camvid_colour_to_index(colour)
    assert set(np.unique(index)) == {3, 255}
    os.makedirs(os.path.join(root, "labels", "train"))
    cv2.imwrite(os.path.join(root, "labels", "train", "0016E5_008550.png"), index)
    samples = camvid_samples(root, "train", num_key_frames=2, frame_stride=5)
    assert [os.path.basename(p) for p in samples[0][0]] == ["0016E5_008540.png", "0016E5_008545.png", "0016E5_008550.png"]
    clip, lab = next(iter(make_file_dataset(samples, 11, 1, training=False)))
    np.testing.assert_array_equal(clip.numpy()[0, :, 0, 0, 0], [8540 % 256, 8545 % 256, 8550 % 256])
    assert set(np.unique(lab.numpy())) == {3, 255}


def test_generic_folders(tmp_path):
    root = str(tmp_path)
    for i in range(6):
        write_frame(os.path.join(root, "frames", "walk", f"img_{i:03d}.jpg"), 40 * i)
    os.makedirs(os.path.join(root, "labels", "walk"))
    cv2.imwrite(os.path.join(root, "labels", "walk", "img_004.png"), np.ones((16, 32), np.uint8))
    samples = folder_samples(root, num_key_frames=2)
    assert [os.path.basename(p) for p in samples[0][0]] == ["img_002.jpg", "img_003.jpg", "img_004.jpg"]
    clip, lab = next(iter(make_file_dataset(samples, 3, 1, training=False)))
    assert np.abs(clip.numpy()[0, :, 8, 8, 0].astype(int) - [80, 120, 160]).max() <= 3  # jpeg
    cv2.imwrite(os.path.join(root, "labels", "walk", "img_004.png"), np.full((16, 32), 9, np.uint8))
    with pytest.raises(Exception, match=r"\[9\]"):
        next(iter(make_file_dataset(samples, 3, 1, training=False)))


def test_training_file_pipeline_augments_and_is_deterministic(tmp_path):
    cityscapes_tree(str(tmp_path), h=32, w=64)
    samples = cityscapes_samples(str(tmp_path), "val", num_key_frames=1)

    def first(seed):
        c, l = next(iter(make_file_dataset(samples, 19, 2, crop_size=(24, 40), seed=seed, label_format="cityscapes")))
        return c.numpy(), l.numpy()

    a, b = first(3), first(3)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert a[0].shape == (2, 2, 24, 40, 3) and a[1].shape == (2, 24, 40)


def test_dense_labels_pad_with_the_first_frame_like_streaming(tmp_path):
    """A label on every frame: the first T labels train on clips padded with the sequence's first frame."""
    root = str(tmp_path)
    for i in range(5):
        write_frame(os.path.join(root, "frames", "walk", f"img_{i:03d}.png"), 40 * i)
    os.makedirs(os.path.join(root, "labels", "walk"))
    for i in range(5):
        cv2.imwrite(os.path.join(root, "labels", "walk", f"img_{i:03d}.png"), np.full((16, 32), i % 3, np.uint8))
    samples = folder_samples(root, num_key_frames=3, frame_stride=1)
    assert len(samples) == 5 and samples.skipped == 0
    names = [[os.path.basename(p)[4:7] for p in frames] for frames, _ in samples]
    assert names == [["000"] * 4, ["000", "000", "000", "001"], ["000", "000", "001", "002"],
                     ["000", "001", "002", "003"], ["001", "002", "003", "004"]]
    # The padded clip of label 1 holds frame 0 three times, then frame 1 (pixel values 0, 0, 0, 40).
    clip, lab = next(iter(make_file_dataset(samples[1:2], 3, 1, training=False)))
    np.testing.assert_array_equal(clip.numpy()[0, :, 0, 0, 0], [0, 0, 0, 40])
    assert (lab.numpy() == 1).all()
    # With stride 2, frame 3 needs frames -3, -1, 1, 3: padded to 0, 0, 1, 3.
    assert [os.path.basename(p) for p in folder_samples(root, 3, 2)[3][0]] == [
        "img_000.png", "img_000.png", "img_001.png", "img_003.png"]
    skipped = folder_samples(root, num_key_frames=3, first_frames="skip")
    assert len(skipped) == 2 and skipped.skipped == 3
    with pytest.raises(FileNotFoundError, match="before the start of the sequence.*first_frames='pad'"):
        folder_samples(root, num_key_frames=3, first_frames="error")
    with pytest.raises(ValueError, match="first_frames must be one of"):
        folder_samples(root, num_key_frames=3, first_frames="repeat")


def test_camvid_pads_from_its_first_extracted_frame(tmp_path):
    """ffmpeg numbers frames from 1: padding repeats frame 1, not a frame 0 that does not exist."""
    root = str(tmp_path)
    for f in range(1, 6):
        write_frame(os.path.join(root, "frames", "0016E5", f"0016E5_{f:06d}.png"), f)
    os.makedirs(os.path.join(root, "labels", "train"))
    cv2.imwrite(os.path.join(root, "labels", "train", "0016E5_000002.png"), np.full((16, 32), 3, np.uint8))
    samples = camvid_samples(root, "train", num_key_frames=3)
    assert [os.path.basename(p) for p in samples[0][0]] == [
        "0016E5_000001.png", "0016E5_000001.png", "0016E5_000001.png", "0016E5_000002.png"]
    assert len(camvid_samples(root, "train", num_key_frames=3, first_frames="skip")) == 0


def test_cityscapes_snippets_for_evaluation_and_recordings_for_calibration(tmp_path):
    """One listing of a Cityscapes split serves stt-eval (the 30-frame snippet around each annotated frame)
    and calibration (every recording whole, a gap in its frame numbers starting a new run, no labels)."""
    from stt_keras.data.readers import cityscapes_sequences
    from stt_keras.export.calibration import read_user_data
    from stt_keras.training.evaluate import cityscapes_sequences as eval_sequences

    root = str(tmp_path)
    cityscapes_tree(root, frames=31)  # aachen 100..130 (label 119), bochum 200..230 (label 219)
    frame = lambda city, seq, n: os.path.join(root, "leftImg8bit_sequence", "val", city,  # noqa: E731
                                              f"{city}_{seq:06d}_{n:06d}_leftImg8bit.png")
    snippets = cityscapes_sequences(root, "val")
    assert [name for name, _, _ in snippets] == ["aachen_000007_000119", "bochum_000008_000219"]
    name, paths, labels = snippets[1]
    assert paths == [frame("bochum", 8, n) for n in range(200, 230)]
    assert labels == {19: os.path.join(root, "gtFine", "val", "bochum", "bochum_000008_000219_gtFine_labelIds.png")}
    short = cityscapes_sequences(root, "val", before=2, after=1)
    assert short[0][1] == [frame("aachen", 7, n) for n in (117, 118, 119, 120)] and list(short[0][2]) == [2]
    evaluated = eval_sequences(root, "val")
    assert [len(frames) for frames, _ in evaluated] == [30, 30]
    np.testing.assert_array_equal(evaluated[0][1][19][0, [0, 8, 16, 24]], [0, 18, 255, 13])  # train ids

    os.remove(frame("bochum", 8, 210))
    with pytest.raises(FileNotFoundError, match="bochum_000008_000210_leftImg8bit.png"):
        cityscapes_sequences(root, "val")
    sequences, kind = read_user_data(root, "val")
    assert kind == "Cityscapes video (split val)"
    assert [(s.name, s.paths[0], s.length, s.labels) for s in sequences] == [
        ("aachen_000007", frame("aachen", 7, 100), 31, {}),
        ("bochum_000008", frame("bochum", 8, 200), 10, {}), ("bochum_000008", frame("bochum", 8, 211), 20, {})]
    assert sequences[2].paths == [frame("bochum", 8, n) for n in range(211, 231)]
