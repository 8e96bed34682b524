"""Video clip data: the built-in synthetic set and tf.data clip pipelines."""

from training.data.pipeline import augment, clip_indices, make_synthetic_dataset
from training.data.synthetic import CLASS_NAMES, SyntheticVideo, palette

__all__ = ["CLASS_NAMES", "SyntheticVideo", "augment", "clip_indices", "make_synthetic_dataset", "palette"]
