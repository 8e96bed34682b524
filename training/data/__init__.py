"""Kept for old imports: `stt_keras.training.data` and its submodules are the modules of `stt_keras.data`.

The data code lives in the library (stt_keras/data/), below training and export. Each old name
is registered in sys.modules as the new module object itself, not a copy: `from
stt_keras.training.data.synthetic import SyntheticVideo` gets the same class, and monkeypatching
through the old path patches the real module.
"""

import sys

import stt_keras.data
from stt_keras.data import cityscapes_ids, files, images, pipeline, readers, scan, synthetic, video  # noqa: F401

# `python -m stt_keras.training.data.synthetic` (the old command line) must stay unregistered: runpy then runs
# the file it finds on this package's path, stt_keras/data/synthetic.py, as __main__.
_argv = getattr(sys, "orig_argv", [])
_run_as_main = _argv[_argv.index("-m") + 1] if "-m" in _argv[:-1] else None
for _name in ("cityscapes_ids", "files", "images", "pipeline", "readers", "scan", "synthetic", "video"):
    if f"{__name__}.{_name}" != _run_as_main:
        sys.modules[f"{__name__}.{_name}"] = getattr(stt_keras.data, _name)
sys.modules[__name__] = stt_keras.data  # the import statement returns the module registered under its name
