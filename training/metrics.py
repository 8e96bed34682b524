"""Accuracy and temporal consistency: mean IoU (a streaming Keras metric) and ETC-style TC."""

import cv2
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


# ------------------------------------------------------------- temporal consistency
FLOW_ESTIMATOR = "OpenCV DIS (preset medium) on grey frames"


def estimate_flow(frame_a, frame_b):
    """Dense flow from frame_a to frame_b: [H, W, 2] (dx, dy), by OpenCV's DIS."""
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    grey_a = cv2.cvtColor(np.ascontiguousarray(frame_a), cv2.COLOR_RGB2GRAY)
    grey_b = cv2.cvtColor(np.ascontiguousarray(frame_b), cv2.COLOR_RGB2GRAY)
    return dis.calc(grey_a, grey_b, None)


def warp_labels(labels, flow):
    """Backward-warp a label map: out(x) = labels(round(x + flow(x))), nearest neighbour.

    Points that land outside the map get IGNORE_LABEL. Nearest-neighbour sampling
    never invents a label that is not in the source (a bilinear warp of label ids
    does, at every boundary).
    """
    h, w = labels.shape
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    tx = np.rint(xs + flow[..., 0]).astype(np.int64)
    ty = np.rint(ys + flow[..., 1]).astype(np.int64)
    inside = (tx >= 0) & (tx < w) & (ty >= 0) & (ty < h)
    out = np.full((h, w), IGNORE_LABEL, labels.dtype)
    out[inside] = labels[ty[inside], tx[inside]]
    return out


class TemporalConsistency:
    """ETC's temporal consistency (docs/method.md, "Metrics"), accumulated over clips.

    For each consecutive pair (i, i+1) of a clip: flow i -> i+1 on the RGB frames,
    backward-warp the prediction P_{i+1} into frame i (W_i), and add the per-class
    intersection and union of P_i and W_i. TC = mean over classes (with a non-zero
    union) of summed intersection / summed union. `masked=True` also keeps an
    occlusion-masked variant: pixels whose forward-backward flow round trip is off
    by more than `occlusion_threshold` px are skipped.

    Args:
        num_classes: number of classes.
        masked: also accumulate the occlusion-masked variant.
    """

    def __init__(self, num_classes, masked=True, occlusion_threshold=1.0):
        self.num_classes = int(num_classes)
        self.masked = masked
        self.occlusion_threshold = float(occlusion_threshold)
        self.reset()

    def reset(self):
        self.inter = np.zeros(self.num_classes, np.int64)
        self.union = np.zeros(self.num_classes, np.int64)
        self.inter_masked = np.zeros(self.num_classes, np.int64)
        self.union_masked = np.zeros(self.num_classes, np.int64)

    def _accumulate(self, a, b, valid, inter, union):
        for c in range(self.num_classes):
            pa, pb = (a == c) & valid, (b == c) & valid
            inter[c] += np.count_nonzero(pa & pb)
            union[c] += np.count_nonzero(pa | pb)

    def update(self, frames, predictions):
        """frames uint8 [N, H, W, 3] of one clip, predictions int [N, H, W]."""
        frames, predictions = np.asarray(frames), np.asarray(predictions)
        if frames.ndim != 4 or predictions.shape != frames.shape[:3]:
            raise ValueError(f"Expected frames [N, H, W, 3] and predictions [N, H, W], got {frames.shape} and {predictions.shape}.")
        for i in range(len(frames) - 1):
            forward = estimate_flow(frames[i], frames[i + 1])
            warped = warp_labels(predictions[i + 1], forward)
            valid = warped != IGNORE_LABEL
            self._accumulate(predictions[i], warped, valid, self.inter, self.union)
            if self.masked:
                backward = estimate_flow(frames[i + 1], frames[i])
                h, w = forward.shape[:2]
                ys, xs = np.mgrid[0:h, 0:w]
                tx = np.clip(np.rint(xs + forward[..., 0]), 0, w - 1).astype(int)
                ty = np.clip(np.rint(ys + forward[..., 1]), 0, h - 1).astype(int)
                round_trip = forward + backward[ty, tx]
                visible = np.linalg.norm(round_trip, axis=-1) <= self.occlusion_threshold
                self._accumulate(predictions[i], warped, valid & visible, self.inter_masked, self.union_masked)

    @staticmethod
    def _mean(inter, union):
        present = union > 0
        return float(np.mean(inter[present] / union[present])) if present.any() else float("nan")

    def result(self):
        """TC in [0, 1] (unmasked, the ETC definition)."""
        return self._mean(self.inter, self.union)

    def result_masked(self):
        return self._mean(self.inter_masked, self.union_masked)
