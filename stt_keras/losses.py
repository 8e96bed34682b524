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


def consistency_loss(logits, previous_logits, labels, previous_labels, ignore_label=IGNORE_LABEL):
    """How far the worse of two consecutive frames' predictions is from the better one, where their label did not change.

    On the pixels whose label is the same in both frames (and not `ignore_label`), the
    prediction that gives the true class the lower probability is pulled towards the
    other (held fixed): the squared difference of the two class distributions, summed
    over classes, averaged over those pixels; 0 when there is none. A prediction is
    never pulled towards a worse one (a clean frame's towards a damaged neighbour's).

    Example:
    >>> import numpy as np
    >>> logits = np.log(np.array([[[[0.5, 0.5], [0.9, 0.1]]]], "float32"))  # [1, 1, 2, 2]
    >>> previous = np.log(np.array([[[[0.5, 0.5], [0.1, 0.9]]]], "float32"))
    >>> labels, previous_labels = np.array([[[0, 1]]]), np.array([[[0, 0]]])
    >>> round(float(consistency_loss(logits, previous, labels, previous_labels)), 4)  # only the first pixel counts
    0.0
    >>> round(float(consistency_loss(logits, previous, labels, labels)), 4)  # (0 + 0.8 ** 2 * 2) / 2
    0.64
    """
    import tensorflow as tf

    labels, previous_labels = tf.cast(labels, tf.int32), tf.cast(previous_labels, tf.int32)
    same = tf.cast((labels == previous_labels) & (labels != ignore_label), tf.float32)
    current = tf.nn.softmax(tf.cast(logits, tf.float32))
    previous = tf.nn.softmax(tf.cast(previous_logits, tf.float32))
    classes = tf.one_hot(tf.where(labels == ignore_label, 0, labels), tf.shape(current)[-1])
    current_is_better = (tf.reduce_sum(current * classes, -1) >= tf.reduce_sum(previous * classes, -1))[..., None]
    teacher = tf.stop_gradient(tf.where(current_is_better, current, previous))
    student = tf.where(current_is_better, previous, current)
    difference = tf.reduce_sum(tf.square(student - teacher), axis=-1)
    return tf.reduce_sum(difference * same) / tf.maximum(tf.reduce_sum(same), 1.0)


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
