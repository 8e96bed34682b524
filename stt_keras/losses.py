"""The loss `STTSegmenter.compile()` uses by default, and the check of a loss given instead.

The model outputs logits and labels unlabelled pixels 255 (`metrics.IGNORE_LABEL`):
a loss computed on probabilities, or one that counts 255 as a class, would train
the wrong thing without an error, so `check_loss` refuses those at compile time.
"""

import keras

from stt_keras.metrics import IGNORE_LABEL


def segmentation_loss(ignore_label=IGNORE_LABEL):
    """Sparse categorical cross-entropy from logits that skips `ignore_label` pixels (mean over the labelled ones)."""
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=ignore_label)


_PROBABILITY_LOSSES = (
    keras.losses.SparseCategoricalCrossentropy, keras.losses.CategoricalCrossentropy,
    keras.losses.BinaryCrossentropy, keras.losses.CategoricalFocalCrossentropy,
)
_PROBABILITY_FUNCTIONS = (
    keras.losses.sparse_categorical_crossentropy, keras.losses.categorical_crossentropy,
    keras.losses.binary_crossentropy,
)
_WHAT_TO_PASS = ("call compile() without `loss` (sparse cross-entropy from logits that skips label 255, plus "
                 "aux_weight times the same loss on the auxiliary head) or pass "
                 "keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255)")


def check_loss(loss):
    """ValueError for a loss that would silently train the wrong thing on this model's logits."""
    if loss is None:
        return
    if isinstance(loss, str):
        raise ValueError(
            f"STTSegmenter.compile(loss={loss!r}): a loss given by name is computed on probabilities "
            f"(from_logits=False) and counts label 255 as a class, but this model outputs logits; {_WHAT_TO_PASS}.")
    if isinstance(loss, (list, tuple, dict)):
        raise ValueError(f"STTSegmenter has one output (logits); pass one loss, not {type(loss).__name__}. "
                         f"Or {_WHAT_TO_PASS}.")
    if isinstance(loss, _PROBABILITY_LOSSES) and not loss.get_config().get("from_logits", False):
        raise ValueError(f"STTSegmenter.compile: {type(loss).__name__}(from_logits=False) takes probabilities, but this "
                         f"model outputs logits; pass from_logits=True (and ignore_class=255), or {_WHAT_TO_PASS}.")
    if loss in _PROBABILITY_FUNCTIONS:
        raise ValueError(f"STTSegmenter.compile: keras.losses.{loss.__name__} defaults to from_logits=False, but this "
                         f"model outputs logits; {_WHAT_TO_PASS}.")
    if not callable(loss):
        raise ValueError(f"STTSegmenter.compile: loss must be a keras Loss or a function, got {type(loss).__name__}.")
