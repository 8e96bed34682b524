"""Video files through OpenCV, with labels keyed by frame index."""

import os

import cv2
import numpy as np
import pytest

from stt_keras.data.video import VideoFrames, make_sequence_dataset, read_video, read_video_labels


def write_video(path, n=12, h=32, w=48):
    writer = cv2.VideoWriter(path, cv2.VideoWriter_fourcc(*"MJPG"), 10, (w, h))
    assert writer.isOpened()
    for i in range(n):
        writer.write(np.full((h, w, 3), 20 * i, np.uint8))
    writer.release()


def test_read_video_and_clips(tmp_path):
    path = str(tmp_path / "drive.avi")
    write_video(path)
    frames = read_video(path)
    assert frames.shape == (12, 32, 48, 3)
    assert np.abs(frames[:, 5, 5, 0].astype(int) - 20 * np.arange(12)).max() <= 4  # order kept (MJPG is lossy)
    os.makedirs(tmp_path / "labels")
    cv2.imwrite(str(tmp_path / "labels" / "000010.png"), np.full((32, 48), 2, np.uint8))
    labels = read_video_labels(str(tmp_path / "labels"), len(frames), num_classes=3)
    ds = make_sequence_dataset([(frames, labels)], num_key_frames=2, batch_size=1, training=False, frame_stride=3)
    clip, label = next(iter(ds))
    np.testing.assert_array_equal(clip.numpy()[0], frames[[4, 7, 10]])
    assert (label.numpy() == 2).all()


def test_bad_videos_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.avi"):
        read_video(str(tmp_path / "missing.avi"))
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"RIFF....AVI garbage")
    with pytest.raises(ValueError, match="bad.avi"):
        read_video(str(bad))
    path = str(tmp_path / "drive.avi")
    write_video(path)
    data = open(path, "rb").read()
    cut = tmp_path / "cut.avi"
    cut.write_bytes(data[: int(len(data) * 0.9)])  # the last frames and the index are gone
    with pytest.raises(ValueError, match=r"cut.avi is truncated: \d+ frames decoded of 12 declared"):
        read_video(str(cut))
    cut.write_bytes(data[: len(data) // 2])  # so much is gone that the container no longer opens
    with pytest.raises(ValueError, match="cannot open video .*cut.avi"):
        read_video(str(cut))


def test_bad_labels_are_named(tmp_path):
    os.makedirs(tmp_path / "labels")
    cv2.imwrite(str(tmp_path / "labels" / "000003.png"), np.full((4, 4), 7, np.uint8))
    with pytest.raises(ValueError, match="000003.png"):
        read_video_labels(str(tmp_path / "labels"), 10, num_classes=3)
    with pytest.raises(ValueError, match="frame 3"):
        read_video_labels(str(tmp_path / "labels"), 2, num_classes=10)


def test_dense_video_labels_pad_with_the_first_frame(tmp_path):
    """Every frame labelled: labels 0..T-1 train on clips whose history is frame 0 (the streaming policy)."""
    frames = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((1, 8, 8, 3), np.uint8) * 10
    labels = {i: np.full((8, 8), i, np.uint8) for i in range(6)}
    ds = make_sequence_dataset([(frames, labels)], num_key_frames=2, batch_size=6, training=False)
    clip, label = next(iter(ds))
    np.testing.assert_array_equal(clip.numpy()[:, :, 0, 0, 0] // 10,
                                  [[0, 0, 0], [0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5]])
    np.testing.assert_array_equal(label.numpy()[:, 0, 0], np.arange(6))
    skipped = make_sequence_dataset([(frames, labels)], num_key_frames=2, batch_size=6, training=False, first_frames="skip")
    np.testing.assert_array_equal(next(iter(skipped))[1].numpy()[:, 0, 0], [2, 3, 4, 5])


def test_one_video_reader_for_evaluation_calibration_and_serving(tmp_path):
    """VideoFrames, the one reader: the whole video as read_video gives it, a range (calibration's segments),
    at most max_frames, and a truncated video either refused or, for the serving client, stopped where it ends."""
    path = str(tmp_path / "drive.avi")
    write_video(path)
    whole = read_video(path)
    video = VideoFrames(path)
    assert len(video) == 12 and video.declared == 12
    np.testing.assert_array_equal(np.stack(list(video)), whole)
    assert video.read == 12 and not video.ended_early()
    np.testing.assert_array_equal(np.stack(list(video.frames(4, 7))), whole[4:7])
    few = VideoFrames(path, max_frames=5)
    assert len(few) == 5 and len(list(few)) == 5 and not few.ended_early()
    np.testing.assert_array_equal(read_video(path, max_frames=5), whole[:5])
    data = open(path, "rb").read()
    cut = str(tmp_path / "cut.avi")
    open(cut, "wb").write(data[: int(len(data) * 0.9)])
    with pytest.raises(ValueError, match=r"cut.avi is truncated: \d+ frames decoded of 12 declared"):
        list(VideoFrames(cut))
    with pytest.raises(ValueError, match="cut.avi is truncated"):
        list(VideoFrames(cut).frames(0, 12))
    tolerant = VideoFrames(cut, truncated_ok=True)
    decoded = list(tolerant)
    assert 0 < len(decoded) == tolerant.read < 12 and tolerant.ended_early()
    np.testing.assert_array_equal(np.stack(decoded), whole[: len(decoded)])
    empty = str(tmp_path / "empty.avi")
    cv2.VideoWriter(empty, cv2.VideoWriter_fourcc(*"MJPG"), 10, (48, 32)).release()
    with pytest.raises(ValueError, match="empty.avi has no decodable frame"):
        VideoFrames(empty)  # refused when opened, before any work
