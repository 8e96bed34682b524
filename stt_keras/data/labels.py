"""Kept for old imports: `stt_keras.data.labels` is the module `stt_keras.data.classes` (class sets, classes files)."""

import sys

from stt_keras.data import classes

sys.modules[__name__] = classes  # the same module object: monkeypatching the old path patches the real one
