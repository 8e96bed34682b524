"""Class names and display colours that travel with an exported model (metadata JSON)."""

import numpy as np

from training.data import cityscapes_ids, readers, synthetic

# The Cityscapes colours of the 19 train classes (cityscapesScripts' labels.py).
CITYSCAPES_PALETTE = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]

LABEL_SETS = {
    "synthetic": (list(synthetic.CLASS_NAMES), synthetic.palette().tolist()),
    "cityscapes": (list(cityscapes_ids.CLASS_NAMES), [list(c) for c in CITYSCAPES_PALETTE]),
    "camvid": (list(readers.CAMVID_CLASSES), np.asarray(readers.CAMVID_COLOURS).tolist()),
}


def label_set(name, num_classes):
    """(class names, RGB palette) of a named label set, checked against the model's class count."""
    if name not in LABEL_SETS:
        raise ValueError(f"Unknown label set {name!r}; choose one of {sorted(LABEL_SETS)}.")
    names, colours = LABEL_SETS[name]
    if len(names) != num_classes:
        raise ValueError(f"Label set {name!r} has {len(names)} classes but the model predicts {num_classes}.")
    return names, [list(map(int, c))[:3] for c in colours[:num_classes]]


def guess_label_set(num_classes):
    for name, (names, _) in LABEL_SETS.items():
        if len(names) == num_classes:
            return name
    raise ValueError(f"No built-in label set has {num_classes} classes; pass --labels.")
