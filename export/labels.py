"""Kept for old imports: `stt_keras.export.labels` is the module `stt_keras.data.labels` (class sets, labels files)."""

import sys

from stt_keras.data import labels

sys.modules[__name__] = labels  # the same module object: monkeypatching the old path patches the real one
