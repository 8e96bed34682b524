"""Temporal consistency of predicted labels over a video: ETC-style TC (flow-warped) and VSPW's VC.

An evaluation tool (stt-eval); mean IoU, the metric a compiled model carries, is the library's
(`stt_keras.metrics`), re-exported here for the imports of `stt_keras.training.metrics`.
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


# ------------------------------------------------------------- video consistency (VSPW's mVC)
VC_WINDOWS = (8, 16)
VC_PROTOCOLS = ("vspw", "cffm")


def window_consistency(labels, predictions):
    """VC of one window (VSPW's VC_perclip.py, `get_common`): labels and predictions [n, H, W] of n consecutive frames.

    Of the pixels whose ground truth is the same on all n frames, the fraction whose
    prediction is also the same on all n frames. NaN when no pixel keeps its ground
    truth (the script's 0/0, dropped by its nanmean).
    """
    labels, predictions = np.asarray(labels), np.asarray(predictions)
    common = np.all(labels[1:] == labels[0], axis=0)
    count = np.count_nonzero(common)
    if count == 0:
        return float("nan")
    return np.count_nonzero(common & np.all(predictions[1:] == predictions[0], axis=0)) / count


class VideoConsistency:
    """mVC_n of the VSPW benchmark (its authors' VC_perclip.py), accumulated frame by frame over whole sequences.

    A window is n consecutive frames; its VC is `window_consistency`. As in the script:
    - a sequence of N frames counts the windows starting at frames 0 .. N - n - 1
      (`range(len - clip_num)`): N - n windows, so the window ending on the last frame
      is never counted and a sequence of N <= n frames gives none (the script skips
      those videos);
    - mVC_n is the mean over all counted windows of all sequences (pooled; a long
      video weighs more), windows whose VC is NaN left out (`np.nanmean`);
    - ground truth and predictions are compared as stored, every value a class of
      its own: a pixel whose ground truth stays ignored (255) is a consistent pixel
      and its prediction is scored.

    protocol="vspw" (default) is the VSPW authors' script (VSPW-dataset/VSPW_code,
    VC_perclip.py): the ground truth is the mask as stored (`stored` of `update`; VSPW:
    0 "others" and 255 void are two values, so a pixel going from one to the other
    breaks the consistency), and each n is a run of its own (skip N <= n).
    protocol="cffm" is the copy shipped with the CFFM and MRCFA code (GuoleiSun/VSS-CFFM
    and GuoleiSun/VSS-MRCFA, VC_perclip.py): the ground truth is the train-id label (VSPW: 0 and
    255 both 255 first), and sequences of N <= max(windows) frames (16) are skipped for
    every n, mVC_8 included.

    Only sequences with a label on every frame are scored; a sequence with an
    unlabelled frame is left out whole (`sequences_skipped`). It streams: per pixel it
    keeps how many consecutive frames kept their value (n frames are constant iff that
    run reaches n), so it holds one previous frame, whatever n.

    Args:
        windows: window lengths n.
        protocol: "vspw" or "cffm" (above).
    """

    def __init__(self, windows=VC_WINDOWS, protocol="vspw"):
        if protocol not in VC_PROTOCOLS:
            raise ValueError(f"protocol must be one of {VC_PROTOCOLS}, got {protocol!r}.")
        self.windows = tuple(int(n) for n in windows)
        if not self.windows or min(self.windows) < 2:
            raise ValueError(f"windows must be lengths >= 2, got {windows}.")
        self.protocol = protocol
        self.values = {n: [] for n in self.windows}
        self.sequences = 0
        self.sequences_skipped = 0
        self._open = False
        self._clear()

    def start_sequence(self):
        """Starts a new sequence (ends an open one)."""
        if self._open:
            self.end_sequence()
        self._clear()
        self._pending = {n: [] for n in self.windows}
        self._frames, self._dense, self._open = 0, True, True

    def _clear(self):
        # The previous frame's ground truth and prediction, and per pixel how many consecutive frames up to
        # it kept the same value (capped at max(windows)): n frames ending there are constant iff run >= n.
        self._last_truth = self._last_prediction = self._run_truth = self._run_prediction = None

    def update(self, label, prediction, stored=None):
        """The next frame of the sequence: its train-id label [H, W] (None: unlabelled), prediction [H, W],
        and the label as stored (the ground truth of protocol "vspw"; default: `label`)."""
        if not self._open:
            self.start_sequence()
        self._frames += 1
        if label is None or not self._dense:
            self._dense = False
            self._clear()
            return
        truth = np.asarray(label if self.protocol == "cffm" or stored is None else stored)
        prediction = np.asarray(prediction)
        if truth.shape != prediction.shape or truth.ndim != 2:
            raise ValueError(f"Expected a label and a prediction [H, W] of one size, got {truth.shape} and "
                             f"{prediction.shape}.")
        t = self._frames - 1  # this frame's index
        if t == 0:
            self._run_truth = np.ones(truth.shape, np.int16)
            self._run_prediction = np.ones(truth.shape, np.int16)
        else:
            if truth.shape != self._last_truth.shape:
                raise ValueError(f"Frame {t} is {truth.shape[1]}x{truth.shape[0]}, the frames before it "
                                 f"{self._last_truth.shape[1]}x{self._last_truth.shape[0]}.")
            for n in self.windows:
                if t >= n:  # frame t exists, so the window t - n .. t - 1 is one the script counts
                    common = self._run_truth >= n
                    count = np.count_nonzero(common)
                    self._pending[n].append(
                        np.count_nonzero(common & (self._run_prediction >= n)) / count if count else float("nan"))
            cap = max(self.windows)
            self._run_truth = np.where(truth == self._last_truth, np.minimum(self._run_truth + 1, cap), 1).astype(np.int16)
            self._run_prediction = np.where(prediction == self._last_prediction,
                                            np.minimum(self._run_prediction + 1, cap), 1).astype(np.int16)
        self._last_truth, self._last_prediction = truth, prediction

    def end_sequence(self):
        """Ends the sequence: its windows count if every frame had a label (and, "cffm", it is long enough)."""
        if not self._open:
            return
        self._open = False
        if not self._dense or self._frames == 0:
            self.sequences_skipped += self._frames > 0
            return
        if self.protocol == "cffm" and self._frames <= max(self.windows):
            self.sequences_skipped += 1
            return
        for n in self.windows:
            self.values[n].extend(self._pending[n])
        self.sequences += 1
        self._clear()

    def result(self):
        """{n: mVC_n in [0, 1], or None when no window was counted}."""
        if self._open:
            self.end_sequence()
        out = {}
        for n, values in self.values.items():
            values = np.asarray(values, np.float64)
            out[n] = float(np.nanmean(values)) if np.any(~np.isnan(values)) else None
        return out

    def windows_counted(self):
        """{n: windows counted (NaN ones included, as the script's list holds them)}."""
        return {n: len(v) for n, v in self.values.items()}
