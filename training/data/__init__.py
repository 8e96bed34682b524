"""Video clip data: real dataset readers, the built-in synthetic set, tf.data clip pipelines."""

from stt_keras.training.data.files import make_file_dataset
from stt_keras.training.data.pipeline import augment, clip_indices, make_synthetic_dataset
from stt_keras.training.data.readers import (camvid_colour_to_index, camvid_samples, camvid_sequences, cityscapes_samples,
                                   folder_samples, folder_sequences, vspw_samples, vspw_sequences)
from stt_keras.training.data.synthetic import CLASS_NAMES, FAMILIES, Family, SyntheticVideo, get_family, palette
from stt_keras.training.data.video import make_sequence_dataset, read_video, read_video_labels
from stt_keras.training.data.scan import scan_dataset

__all__ = [
    "CLASS_NAMES", "FAMILIES", "Family", "SyntheticVideo", "get_family", "augment", "camvid_colour_to_index", "camvid_samples", "camvid_sequences",
    "cityscapes_samples", "clip_indices", "folder_samples", "folder_sequences", "make_file_dataset", "make_sequence_dataset", "make_synthetic_dataset", "palette", "read_video", "read_video_labels", "scan_dataset",
    "vspw_samples", "vspw_sequences",
]
