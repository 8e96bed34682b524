"""Class names and display colours that travel with an exported model (metadata JSON, SavedModel assets).

("Classes" are the names; "labels" are per-pixel class indices: label images, a model's `labels` output.)

`--classes` (stt-export, stt-eval) is a built-in class set (synthetic, cityscapes, camvid, vspw) or a classes file:

* one class per line, in class-index order (line 1 is class 0); optionally a colour
  after the name, `#rrggbb` or three numbers 0-255 (`road 128 64 128`,
  `road,128,64,128`, `road #804080`); blank lines and lines starting with `#` are
  skipped. Names may contain spaces (`traffic light 250 170 30`).
* JSON: a list of names, a list of {"name": ..., "color": [r, g, b]} objects, or
  {"classes": [names], "palette": [[r, g, b], ...]} (the metadata's own format).

Classes without a colour get one from a fixed palette of well-separated colours.
The file must have exactly as many classes as the model predicts; the value 255 in
label images is "ignore" and is not a class.
"""

import json
import os
import re

import numpy as np

from stt_keras.data import cityscapes_ids, readers, synthetic

# The Cityscapes colours of the 19 train classes (cityscapesScripts' labels.py).
CITYSCAPES_PALETTE = [
    (128, 64, 128), (244, 35, 232), (70, 70, 70), (102, 102, 156), (190, 153, 153), (153, 153, 153),
    (250, 170, 30), (220, 220, 0), (107, 142, 35), (152, 251, 152), (70, 130, 180), (220, 20, 60),
    (255, 0, 0), (0, 0, 142), (0, 0, 70), (0, 60, 100), (0, 80, 100), (0, 0, 230), (119, 11, 32),
]

CLASS_SETS = {
    "synthetic": (list(synthetic.CLASS_NAMES), synthetic.palette().tolist()),
    "cityscapes": (list(cityscapes_ids.CLASS_NAMES), [list(c) for c in CITYSCAPES_PALETTE]),
    "camvid": (list(readers.CAMVID_CLASSES), np.asarray(readers.CAMVID_COLOURS).tolist()),
}


def class_set(name, num_classes):
    """(class names, RGB palette) of a named class set, checked against the model's class count."""
    if name not in CLASS_SETS:
        raise ValueError(f"Unknown class set {name!r}; choose one of {sorted(CLASS_SETS)}, or give a classes file.")
    names, colours = CLASS_SETS[name]
    if len(names) != num_classes:
        raise ValueError(f"Class set {name!r} has {len(names)} classes but the model predicts {num_classes}.")
    return names, [list(map(int, c))[:3] for c in colours[:num_classes]]


def guess_class_set(num_classes):
    for name, (names, _) in CLASS_SETS.items():
        if len(names) == num_classes:
            return name
    raise ValueError(f"No built-in class set has {num_classes} classes; pass --classes FILE.")


def default_palette(num_classes):
    """num_classes distinct RGB colours (the PASCAL VOC bit pattern, without black), the same for every call."""
    colours = []
    index = 1
    while len(colours) < num_classes:
        r = g = b = 0
        c = index
        for shift in range(7, -1, -1):
            r |= ((c >> 0) & 1) << shift
            g |= ((c >> 1) & 1) << shift
            b |= ((c >> 2) & 1) << shift
            c >>= 3
        colours.append([r, g, b])
        index += 1
    return colours


# VSPW: its 124 class names; colours from the default palette (the benchmark defines none of its own).
CLASS_SETS["vspw"] = (list(readers.VSPW_CLASSES), default_palette(len(readers.VSPW_CLASSES)))


_COLOUR = re.compile(r"^(?P<name>.*?)[\s,;:]+(?:#(?P<hex>[0-9a-fA-F]{6})|(?P<r>\d{1,3})[\s,]+(?P<g>\d{1,3})[\s,]+(?P<b>\d{1,3}))\s*$")


def _colour(value, where):
    if isinstance(value, str) and re.fullmatch(r"#?[0-9a-fA-F]{6}", value.strip()):
        text = value.strip().lstrip("#")
        return [int(text[i:i + 2], 16) for i in (0, 2, 4)]
    if isinstance(value, (list, tuple)) and len(value) == 3 and all(isinstance(v, int) and 0 <= v <= 255 for v in value):
        return [int(v) for v in value]
    raise ValueError(f"{where}: colour {value!r} is not [r, g, b] with values 0-255 or '#rrggbb'.")


def _parse_text(text, path):
    names, colours = [], []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = _COLOUR.match(line)
        if m and m["name"].strip():
            name = m["name"].strip()
            colour = _colour(m["hex"], f"{path} line {number}") if m["hex"] else [int(m[k]) for k in "rgb"]
            if max(colour) > 255:
                raise ValueError(f"{path} line {number}: colour values must be 0-255, got {colour}.")
        else:
            name, colour = line, None
        names.append(name)
        colours.append(colour)
    return names, colours


def _parse_json(data, path):
    if isinstance(data, dict):
        if "classes" not in data:
            raise ValueError(f"{path}: a JSON object needs 'classes' (and optionally 'palette').")
        names = data["classes"]
        palette = data.get("palette") or [None] * len(names)
        if len(palette) != len(names):
            raise ValueError(f"{path}: 'palette' has {len(palette)} colours for {len(names)} classes.")
        return list(names), [None if c is None else _colour(c, path) for c in palette]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of names or of {{'name', 'color'}} objects.")
    names, colours = [], []
    for i, entry in enumerate(data):
        if isinstance(entry, dict):
            if "name" not in entry:
                raise ValueError(f"{path}: entry {i} has no 'name'.")
            colour = entry.get("color", entry.get("colour"))
            names.append(entry["name"])
            colours.append(None if colour is None else _colour(colour, f"{path} entry {i}"))
        else:
            names.append(entry)
            colours.append(None)
    return names, colours


def read_classes_file(path, num_classes=None):
    """(class names, RGB palette) of a classes file (module docstring); ValueError naming the problem."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"cannot read classes file {path}: {error}") from None
    if path.lower().endswith(".json") or text.lstrip().startswith(("[", "{")):
        try:
            data = json.loads(text)
        except ValueError as error:
            raise ValueError(f"classes file {path} is not valid JSON: {error}") from None
        names, colours = _parse_json(data, path)
    else:
        names, colours = _parse_text(text, path)
    if not all(isinstance(n, str) and n.strip() for n in names):
        raise ValueError(f"{path}: every class needs a non-empty name.")
    names = [n.strip() for n in names]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"{path}: class names must be unique; repeated: {duplicates}.")
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f"classes file {path} has {len(names)} classes but the model predicts {num_classes} "
                         f"(one class per line, in class-index order; 255 in label images is ignore, not a class).")
    spare = iter(c for c in default_palette(2 * len(names) + 1) if c not in colours)
    return names, [c if c is not None else next(spare) for c in colours]


def class_names_for(spec, num_classes):
    """(names, palette, source) for `--classes` SPEC: a classes file, a built-in set's name, or None.

    None: the built-in set with this many classes, else generic names class_0 ... with
    the default palette (source says so, for a warning).
    """
    if spec and (os.path.isfile(spec) or os.sep in spec or "." in os.path.basename(spec)):
        if not os.path.isfile(spec):
            raise ValueError(f"classes file not found: {spec}")
        names, palette = read_classes_file(spec, num_classes)
        return names, palette, f"file {os.path.abspath(spec)}"
    if spec:
        names, palette = class_set(spec, num_classes)
        return names, palette, f"built-in {spec}"
    try:
        name = guess_class_set(num_classes)
    except ValueError:
        return [f"class_{i}" for i in range(num_classes)], default_palette(num_classes), "generic (no --classes)"
    names, palette = class_set(name, num_classes)
    return names, palette, f"built-in {name} (by class count)"


# Their earlier names (the module was stt_keras.data.labels, which is this module too).
LABEL_SETS = CLASS_SETS
label_set, guess_label_set, read_labels_file = class_set, guess_class_set, read_classes_file
