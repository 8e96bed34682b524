"""Video data, below training and export (both use it; neither imports the other).

Where frames are read: dataset readers and the sequence listings that evaluation and
calibration stream (readers), frame and label files (files, images), video files (video:
`VideoFrames`, the one video reader), the built-in synthetic video (synthetic), the
pre-flight scan (scan), the Cityscapes id table (cityscapes_ids), class sets and classes
files (classes). The tf.data clip pipelines (pipeline, `make_file_dataset`,
`make_sequence_dataset`) live here too: each sits next to the reader of its source and
shares its label checks (`pipeline.check_label_values`), and they are data, not training.
"""

from stt_keras.data.files import make_file_dataset
from stt_keras.data.pipeline import augment, clip_indices, make_synthetic_dataset
from stt_keras.data.readers import (camvid_colour_to_index, camvid_samples, camvid_sequences, cityscapes_samples,
                                    cityscapes_sequences, folder_samples, folder_sequences, frames_by_folder,
                                    vspw_samples, vspw_sequences)
from stt_keras.data.video import VideoFrames, make_sequence_dataset, read_video, read_video_labels
from stt_keras.data.scan import scan_dataset

__all__ = [
    "CLASS_NAMES", "FAMILIES", "Family", "SyntheticVideo", "get_family", "augment", "camvid_colour_to_index", "camvid_samples", "camvid_sequences",
    "cityscapes_samples", "cityscapes_sequences", "clip_indices", "folder_samples", "folder_sequences", "frames_by_folder", "make_file_dataset", "make_sequence_dataset", "make_synthetic_dataset", "palette", "read_video", "read_video_labels", "scan_dataset",
    "vspw_samples", "vspw_sequences", "VideoFrames",
]

# The synthetic video's names are imported on first use: `python -m stt_keras.data.synthetic` (the documented way
# to write a demo video) must find the module not yet imported, or runpy warns that it runs a module twice.
_SYNTHETIC = ("CLASS_NAMES", "FAMILIES", "Family", "SyntheticVideo", "get_family", "palette")


def __getattr__(name):
    if name in _SYNTHETIC:
        from stt_keras.data import synthetic

        return getattr(synthetic, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
