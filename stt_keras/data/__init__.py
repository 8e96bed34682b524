"""Video data, below training and export (both use it; neither imports the other).

Where frames are read: dataset readers and sequence listings (readers), frame and label
files (files, images), video files (video), the built-in synthetic video (synthetic),
the pre-flight scan (scan), the Cityscapes id table (cityscapes_ids), class sets and
labels files (labels), and the tf.data clip pipelines that training feeds on (pipeline,
`make_file_dataset`, `make_sequence_dataset`): they live here because the frame and
label readers use the same label checks, and one module per reader keeps them together.
"""

from stt_keras.data.files import make_file_dataset
from stt_keras.data.pipeline import augment, clip_indices, make_synthetic_dataset
from stt_keras.data.readers import (camvid_colour_to_index, camvid_samples, camvid_sequences, cityscapes_samples,
                                    folder_samples, folder_sequences, vspw_samples, vspw_sequences)
from stt_keras.data.synthetic import CLASS_NAMES, FAMILIES, Family, SyntheticVideo, get_family, palette
from stt_keras.data.video import make_sequence_dataset, read_video, read_video_labels
from stt_keras.data.scan import scan_dataset

__all__ = [
    "CLASS_NAMES", "FAMILIES", "Family", "SyntheticVideo", "get_family", "augment", "camvid_colour_to_index", "camvid_samples", "camvid_sequences",
    "cityscapes_samples", "clip_indices", "folder_samples", "folder_sequences", "make_file_dataset", "make_sequence_dataset", "make_synthetic_dataset", "palette", "read_video", "read_video_labels", "scan_dataset",
    "vspw_samples", "vspw_sequences",
]
