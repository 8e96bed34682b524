"""Kept for old imports: `stt_keras.training.data` and its submodules are the modules of `stt_keras.data`.

The data code lives in the library (stt_keras/data/), below training and export. Each old name
is registered in sys.modules as the new module object itself, not a copy: `from
stt_keras.training.data.synthetic import SyntheticVideo` gets the same class, and monkeypatching
through the old path patches the real module.
"""

import sys

import stt_keras.data
from stt_keras.data import cityscapes_ids, files, images, pipeline, readers, scan, synthetic, video  # noqa: F401
from stt_keras.utils.old_names import keep_old_names

# `python -m stt_keras.training.data.synthetic` (the old command line) still runs: keep_old_names leaves the
# module being run unregistered.
keep_old_names(__name__, "stt_keras.data", ("cityscapes_ids", "files", "images", "pipeline", "readers", "scan",
                                            "synthetic", "video"))
sys.modules[__name__] = stt_keras.data  # the import statement returns the module registered under its name
