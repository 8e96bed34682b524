"""Video files read with OpenCV, with sparse labels keyed by frame index.

Layout: any video file OpenCV can decode, and a label folder with
`{frame:06d}.png` class-index images (255 ignored) for the labelled frames,
numbered from 0 in decoding order.
"""

import os

import cv2
import numpy as np
import tensorflow as tf

from stt_keras.data.files import read_raw_label
from stt_keras.data.readers import label_files
from stt_keras.data.pipeline import augment, check_label_values, clip_indices, sample_dataset


def read_video(path, max_frames=None):
    """RGB uint8 [N, H, W, 3] of a video file (at most `max_frames`); clear errors for missing, unreadable or
    truncated files (`VideoFrames`)."""
    return np.stack(list(VideoFrames(path, max_frames)))


def read_video_labels(label_dir, num_frames, num_classes):
    """{frame index: uint8 label} from `{frame:06d}.png` files."""
    labels = {}
    for path in label_files(label_dir):
        stem = os.path.splitext(os.path.basename(path))[0]
        if not stem.isdigit():
            raise ValueError(f"Label {path} is not named by frame index ({{frame:06d}}.png).")
        index = int(stem)
        if index >= num_frames:
            raise ValueError(f"Label {path} is for frame {index}, but the video has {num_frames} frames.")
        if index in labels:
            raise ValueError(f"Two labels for frame {index} in {label_dir}; keep one.")
        label = read_raw_label(path)
        check_label_values(label, num_classes, f"label {path}")
        labels[index] = label
    if not labels:
        raise FileNotFoundError(f"No {{frame:06d}}.png labels in {label_dir}.")
    return labels


def make_sequence_dataset(sequences, num_key_frames, batch_size, crop_size=None, training=True, seed=0,
                          frame_stride=1, repeat=None, skip=0, first_frames="pad"):
    """Batched clips from in-memory sequences [(frames [N, H, W, 3], {index: label})] of one frame size.

    `first_frames`: "pad" (default) lets a label on one of the first T * stride frames
    end a clip whose history before the video is the first frame (the streaming
    first-frame policy); "skip" drops such labels.
    """
    if first_frames not in ("pad", "skip"):
        raise ValueError(f"first_frames must be 'pad' or 'skip', got {first_frames!r}.")
    shapes = {frames.shape[1:] for frames, _ in sequences}
    if len(shapes) != 1:
        raise ValueError(f"All sequences must share one frame size, got {sorted(shapes)}.")
    all_frames, all_labels, clips, label_rows = [], [], [], []
    offset = 0
    for frames, labels in sequences:
        rows = clip_indices(len(frames), sorted(labels), num_key_frames, frame_stride, first_frames == "pad")
        for row in rows:
            clips.append(offset + row)  # frame indices into the concatenated frames
            label_rows.append(len(all_labels))
            all_labels.append(labels[int(row[-1])])
        all_frames.append(frames)
        offset += len(frames)
    if not clips:
        raise ValueError(f"No labelled frame has {num_key_frames * frame_stride} frames before it "
                         "(first_frames='pad' trains on those too)." if first_frames == "skip" else "No labelled frame.")
    frames_t = tf.constant(np.concatenate(all_frames))
    labels_t = tf.constant(np.stack(all_labels))
    size = crop_size or tuple(next(iter(shapes))[:2])

    def load(i, sample):
        clip = tf.gather(frames_t, sample[1:])
        label = tf.cast(labels_t[sample[0]], tf.int32)
        if training:
            clip, label = augment(clip, label, tf.stack([tf.cast(seed, tf.int64), i]), size)
        return clip, label

    # One row per sample: (label row, the clip's frame indices, oldest first).
    samples = np.concatenate([np.array(label_rows, np.int64)[:, None], np.stack(clips)], axis=1)
    return sample_dataset(samples, load, batch_size, training, seed, repeat, skip)


class VideoFrames:
    """The frames of a video file, RGB uint8 [H, W, 3] decoded one at a time: the one reader of video files.

    Opening checks the file at once: FileNotFoundError if it is missing, ValueError naming it if
    OpenCV cannot open it or its first frame does not decode. len() is the frame count the
    container declares (`declared`, 0 if unknown), at most `max_frames`. Iterating decodes from
    the first frame, at most `max_frames` frames; `read` counts the frames the iteration decoded.
    A video that ends before the count it declares is truncated: a ValueError at its end, or
    with `truncated_ok` the iteration just stops there (`ended_early()` says so).
    """

    def __init__(self, path, max_frames=None, truncated_ok=False):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No video file at {path}.")
        self.path, self.max_frames, self.truncated_ok, self.read = path, max_frames, truncated_ok, 0
        capture = self._open()
        try:
            self.declared = max(int(capture.get(cv2.CAP_PROP_FRAME_COUNT)), 0)
            ok, frame = capture.read()
        finally:
            capture.release()
        if not ok or frame is None or frame.size == 0:
            raise ValueError(f"Video {path} has no decodable frame (empty or corrupt).")

    def _open(self):
        capture = cv2.VideoCapture(self.path)
        if not capture.isOpened():
            capture.release()
            raise ValueError(f"OpenCV cannot open video {self.path} (unknown container or codec).")
        return capture

    def __len__(self):
        return self.declared if self.max_frames is None else min(self.declared, self.max_frames)

    def __iter__(self):
        return self.frames()

    def frames(self, start=0, stop=None):
        """Yields frames start, start + 1, ... before `stop` (None: to the end, at most `max_frames`).

        Ending before `stop`, or before the declared count without one, is a truncated video.
        """
        if self.max_frames is not None:
            stop = self.max_frames if stop is None else min(stop, self.max_frames)
        expected = self.declared if stop is None else min(stop, self.declared)
        capture = self._open()
        self.read = index = start
        try:
            if start:
                capture.set(cv2.CAP_PROP_POS_FRAMES, start)
            while stop is None or index < stop:
                ok, frame = capture.read()
                if not ok:
                    break
                index = self.read = index + 1
                yield cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        finally:
            capture.release()
        if index < expected and not self.truncated_ok:
            raise ValueError(f"Video {self.path} is truncated: {index} frames decoded of {self.declared} declared.")

    def ended_early(self):
        """True if the last iteration stopped before the count the header declares (and no `max_frames` cut it)."""
        cut = self.max_frames is not None and self.read >= self.max_frames
        return not cut and self.declared > 0 and self.read < self.declared
