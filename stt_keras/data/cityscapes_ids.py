"""Cityscapes labelIds -> the 19 train ids (everything else -> 255, ignored)."""

import numpy as np

# labelIds of road, sidewalk, building, wall, fence, pole, traffic light, traffic sign,
# vegetation, terrain, sky, person, rider, car, truck, bus, train, motorcycle, bicycle.
TRAIN_LABEL_IDS = (7, 8, 11, 12, 13, 17, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 31, 32, 33)
CLASS_NAMES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
)

_LUT = np.full(256, 255, np.uint8)
for _train_id, _label_id in enumerate(TRAIN_LABEL_IDS):
    _LUT[_label_id] = _train_id


def to_train_ids(label_ids):
    """uint8 labelIds [...] -> uint8 train ids [...] (0..18, 255 ignored)."""
    label_ids = np.asarray(label_ids)
    if label_ids.dtype != np.uint8:
        raise ValueError(f"Cityscapes labelIds must be uint8, got {label_ids.dtype}.")
    return _LUT[label_ids]


def to_label_ids(train_ids):
    """Inverse for valid train ids (255 -> 0, 'unlabeled')."""
    ids = np.array((*TRAIN_LABEL_IDS, *([0] * (256 - len(TRAIN_LABEL_IDS)))), np.uint8)
    ids[255] = 0
    return ids[np.asarray(train_ids, np.uint8)]
