"""Mean IoU (against plain NumPy and the official Cityscapes evaluation) and temporal consistency."""

import cv2
import numpy as np
import pytest
import tensorflow as tf

from stt_keras.data.cityscapes_ids import TRAIN_LABEL_IDS, to_label_ids, to_train_ids
from stt_keras.metrics import MeanIoU
from stt_keras.training.consistency import TemporalConsistency, warp_labels


def numpy_miou(true, pred, c, ignore=255):
    valid = true != ignore
    conf = np.bincount(true[valid] * c + pred[valid], minlength=c * c).reshape(c, c)
    tp = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - tp
    iou = tp[union > 0] / union[union > 0]
    return iou.mean()


def test_mean_iou_matches_numpy_over_batches():
    rng = np.random.default_rng(0)
    metric = MeanIoU(num_classes=5)
    trues, preds = [], []
    for _ in range(3):
        true = rng.integers(0, 5, (2, 16, 16))
        true[rng.random(true.shape) < 0.1] = 255
        logits = rng.normal(size=(2, 16, 16, 5)).astype("float32")
        logits[..., 0] += 2.0 * (true == 0)  # some agreement
        metric.update_state(true, logits)
        trues.append(true)
        preds.append(logits.argmax(-1))
    expected = numpy_miou(np.concatenate(trues).ravel(), np.concatenate(preds).ravel(), 5)
    np.testing.assert_allclose(float(metric.result()), expected, rtol=1e-6)
    metric.reset_state()
    assert int(tf.reduce_sum(metric.confusion)) == 0


def test_mean_iou_ignores_absent_classes_and_the_ignore_label():
    metric = MeanIoU(num_classes=4)
    metric.update_state(np.array([[0, 0, 1, 255]]), np.array([[0, 1, 1, 3]]))
    iou = metric.per_class_iou().numpy()
    np.testing.assert_allclose(iou[:2], [0.5, 0.5])
    assert np.isnan(iou[2]) and np.isnan(iou[3])  # class 3 predicted only on an ignored pixel
    np.testing.assert_allclose(float(metric.result()), 0.5)


def test_mean_iou_rejects_labels_outside_the_classes():
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes=3"):
        MeanIoU(num_classes=3).update_state(np.array([[0, 7]]), np.array([[0, 1]]))


def test_mean_iou_agrees_with_the_official_cityscapes_evaluation(tmp_path):
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as ev
    rng = np.random.default_rng(1)
    metric = MeanIoU(num_classes=19)
    gts, preds = [], []
    for i in range(3):
        # Ground truth in labelIds, including ids that are ignored (0, 1, 4, 255-ish void ids).
        ids = np.array([*TRAIN_LABEL_IDS, 0, 1, 4, 6], np.uint8)
        gt = rng.choice(ids[rng.permutation(len(ids))[:12]], size=(32, 64)).astype(np.uint8)
        gt[:8, :8] = 7
        pred_train = to_train_ids(gt).astype(np.int64)
        noise = rng.random(gt.shape) < 0.3
        pred_train[noise | (pred_train == 255)] = rng.integers(0, 19, (noise | (pred_train == 255)).sum())
        gt_path = tmp_path / f"city_000000_{i:06d}_gtFine_labelIds.png"
        pred_path = tmp_path / f"pred_{i}.png"
        cv2.imwrite(str(gt_path), gt)
        cv2.imwrite(str(pred_path), to_label_ids(pred_train.astype(np.uint8)))
        gts.append(str(gt_path))
        preds.append(str(pred_path))
        metric.update_state(to_train_ids(gt)[None], pred_train[None])
    args = ev.args
    args.evalInstLevelScore = False
    args.JSONOutput = False
    args.quiet = True
    results = ev.evaluateImgLists(preds, gts, args)
    np.testing.assert_allclose(float(metric.result()), results["averageScoreClasses"], rtol=1e-6)


# ------------------------------------------------------------ temporal consistency
def textured_video(n=4, shift=2, h=64, w=96, seed=0):
    rng = np.random.default_rng(seed)
    base = cv2.GaussianBlur(rng.integers(0, 255, (h, w + n * shift), np.uint8), (7, 7), 2)
    frames = np.stack([np.repeat(base[:, i * shift: i * shift + w, None], 3, axis=2) for i in range(n)])
    labels_full = (np.arange(w + n * shift)[None, :] // 24 % 3).repeat(h, axis=0)
    labels = np.stack([labels_full[:, i * shift: i * shift + w] for i in range(n)])
    return frames, labels


def test_consistent_predictions_on_moving_video_score_near_one():
    frames, labels = textured_video()
    tc = TemporalConsistency(num_classes=3)
    tc.update(frames, labels)
    assert tc.result() > 0.95
    assert tc.result_masked() >= tc.result() - 0.01


def test_flickering_predictions_score_low():
    frames, labels = textured_video()
    flicker = labels.copy()
    flicker[1::2] = (flicker[1::2] + 1) % 3
    tc = TemporalConsistency(num_classes=3)
    tc.update(frames, flicker)
    assert tc.result() < 0.2


def test_nearest_neighbour_warp_never_invents_labels():
    labels = np.zeros((20, 20), np.uint8)
    labels[:, 10:] = 5
    flow = np.random.default_rng(0).uniform(-3, 3, (20, 20, 2)).astype(np.float32)
    warped = warp_labels(labels, flow)
    assert set(np.unique(warped)) <= {0, 5, 255}


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match="predictions"):
        TemporalConsistency(3).update(np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 9), np.int64))
