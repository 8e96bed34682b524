"""Accuracy and temporal consistency: mean IoU (a streaming Keras metric) and ETC-style TC.

`MeanIoU` lives in the library (`stt_keras.metrics`, a compiled model carries it);
it is re-exported here. Temporal consistency is a training/evaluation tool only.
"""

import cv2
import numpy as np

from stt_keras.metrics import IGNORE_LABEL, MeanIoU, iou_from_confusion  # noqa: F401  (re-exported)


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
