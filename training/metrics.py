"""Kept for old imports: `stt_keras.training.metrics` is the module `stt_keras.training.consistency`.

Temporal and video consistency live in `stt_keras.training.consistency`; mean IoU, the metric a
compiled model carries, in `stt_keras.metrics` (the consistency module re-exports it for these imports).
"""

import sys

from stt_keras.training import consistency

sys.modules[__name__] = consistency  # the same module object: monkeypatching the old path patches the real one
