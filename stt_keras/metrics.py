"""Metrics a compiled STTSegmenter carries (so a saved model loads with `import stt_keras` alone).

`MeanIoU` is registered serializable as "stt_keras>MeanIoU", the name models saved
before it moved here (from `training.metrics`) refer to, so those files load too.
"""

import keras
import numpy as np
import tensorflow as tf

IGNORE_LABEL = 255


@keras.saving.register_keras_serializable(package="stt_keras")
class MeanIoU(keras.metrics.Metric):
    """Mean intersection-over-union from a streaming confusion matrix.

    IoU_c = TP / (TP + FP + FN) over the pixels whose label is not `ignore_label`;
    the mean is over the classes present (TP + FP + FN > 0), as the Cityscapes
    evaluation computes it. Counts are int64, so they stay exact on whole datasets.

    Args:
        num_classes: number of classes.
        ignore_label: label value excluded from evaluation.

    Call arguments (update_state):
        y_true: int labels [B, H, W] in [0, num_classes) or ignore_label.
        y_pred: logits/probabilities [B, H, W, num_classes] or labels [B, H, W].

    Example:
    >>> import numpy as np
    >>> m = MeanIoU(num_classes=2)
    >>> m.update_state(np.array([[[0, 1]]]), np.array([[[0, 0]]]))
    >>> round(float(m.result()), 3)
    0.25
    """

    def __init__(self, num_classes, ignore_label=IGNORE_LABEL, name="mean_iou", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = int(num_classes)
        self.ignore_label = int(ignore_label)
        self.confusion = self.add_variable(
            shape=(self.num_classes, self.num_classes), initializer="zeros", dtype="int64", name="confusion"
        )

    def update_state(self, y_true, y_pred, sample_weight=None):
        if sample_weight is not None:
            raise ValueError("MeanIoU counts pixels; mark pixels to skip with the ignore label instead of sample_weight.")
        y_true = tf.cast(tf.convert_to_tensor(y_true), tf.int64)
        y_pred = tf.convert_to_tensor(y_pred)
        if y_pred.shape.rank == y_true.shape.rank + 1:
            y_pred = tf.argmax(y_pred, axis=-1)
        y_pred = tf.cast(y_pred, tf.int64)
        valid = tf.not_equal(y_true, self.ignore_label)
        true = tf.boolean_mask(y_true, valid)
        pred = tf.boolean_mask(y_pred, valid)
        checks = [
            tf.debugging.assert_less(
                true, tf.constant(self.num_classes, tf.int64),
                message=f"MeanIoU: label values must be < num_classes={self.num_classes} or {self.ignore_label}",
            ),
            tf.debugging.assert_non_negative(true, message="MeanIoU: negative label values"),
        ]
        with tf.control_dependencies(checks):
            flat = true * self.num_classes + tf.clip_by_value(pred, 0, self.num_classes - 1)
        counts = tf.math.bincount(flat, minlength=self.num_classes**2, maxlength=self.num_classes**2, dtype=tf.int64)
        self.confusion.assign_add(tf.reshape(counts, [self.num_classes, self.num_classes]))

    def per_class_iou(self):
        """float64 [num_classes]; NaN for classes absent from both labels and predictions."""
        return iou_from_confusion(self.confusion)

    def result(self):
        iou = self.per_class_iou()
        present = tf.logical_not(tf.math.is_nan(iou))
        return tf.cast(tf.reduce_mean(tf.boolean_mask(iou, present)), tf.float32)

    def reset_state(self):
        self.confusion.assign(tf.zeros_like(self.confusion))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "ignore_label": self.ignore_label}


def iou_from_confusion(confusion):
    """Per-class IoU from a [true, pred] confusion matrix (NaN where TP + FP + FN = 0)."""
    c = tf.cast(tf.convert_to_tensor(confusion), tf.float64)
    tp = tf.linalg.diag_part(c)
    union = tf.reduce_sum(c, 0) + tf.reduce_sum(c, 1) - tp
    return tf.where(union > 0, tp / tf.where(union > 0, union, 1.0), tf.constant(np.nan, tf.float64))
