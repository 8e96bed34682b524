"""stt-eval: metrics over whole sequences, and its report files."""

import json
import os

import numpy as np

from stt_keras.models import STTSegmenter
from stt_keras.training.evaluate import evaluate, main, synthetic_sequences
from test_metrics import numpy_miou


def test_evaluate_per_frame_model_matches_a_direct_computation():
    model = STTSegmenter.from_preset("psp_tiny", num_classes=7)
    sequences = list(synthetic_sequences(2, frames=4, size=(64, 128), labelled_every=2))
    results = evaluate(model, sequences, 7)
    trues, preds = [], []
    for frames, labels, _ in sequences:
        for t, label in labels.items():
            trues.append(label.ravel().astype(np.int64))
            preds.append(np.asarray(model(frames[t][None])[0]).argmax(-1).ravel())
    expected = numpy_miou(np.concatenate(trues), np.concatenate(preds), 7)
    np.testing.assert_allclose(results["miou"], expected, rtol=1e-6)
    assert 0.0 <= results["tc"] <= 1.0 and results["frames_timed"] == 2 * 3


def test_degraded_subsets_and_history_ablation_match_direct_computations():
    """mIoU on degraded frames / degraded pixels, and the history ablation (the STT on T+1
    copies of the current frame) recomputed by hand from the clip model."""
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=7, top_ratio=1.0)
    sequences = [s for s in synthetic_sequences(3, frames=12, size=(64, 128), seed=1001)]
    assert any(m.any() for _, _, masks in sequences for m in masks.values())
    ablated = evaluate(model, sequences, 7, history="current")
    trues, preds, deg_t, deg_p, pix_t, pix_p = [], [], [], [], [], []
    for frames, labels, masks in sequences:
        for t, label in labels.items():
            clip = np.repeat(frames[t][None, None], model.num_key_frames + 1, axis=1)
            pred = np.asarray(model(clip)[0]).argmax(-1)
            trues.append(label.ravel())
            preds.append(pred.ravel())
            if masks[t].any():
                deg_t.append(label.ravel())
                deg_p.append(pred.ravel())
                pix_t.append(label[masks[t]])
                pix_p.append(pred[masks[t]])
    cat = lambda xs: np.concatenate(xs).astype(np.int64)  # noqa: E731
    # evaluate() streams (another graph than the clip call here): an untrained model's logits have near ties, and a
    # few pixels may take the other class at float32 rounding. One pixel moves these mIoUs by ~1e-6; 1e-4 allows
    # ~100 of ~300,000 pixels, while the real history (asserted to differ below) moves them by far more.
    np.testing.assert_allclose(ablated["miou"], numpy_miou(cat(trues), cat(preds), 7), rtol=0, atol=1e-4)
    np.testing.assert_allclose(ablated["miou_degraded_frames"], numpy_miou(cat(deg_t), cat(deg_p), 7), rtol=0, atol=1e-4)
    np.testing.assert_allclose(ablated["miou_degraded_pixels"], numpy_miou(cat(pix_t), cat(pix_p), 7), rtol=0, atol=1e-4)
    # With the real history the STT's predictions differ somewhere (random weights see the past).
    assert evaluate(model, sequences, 7)["miou"] != ablated["miou"]


def test_stt_eval_writes_json_and_markdown(tmp_path):
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=7)
    path = str(tmp_path / "m.keras")
    model(np.zeros((1, 4, 64, 128, 3), np.uint8))
    model.save(path)
    out = str(tmp_path / "eval")
    main(["--model", path, "--out", out, "--synthetic-sequences", "1", "--synthetic-size", "64x128"])
    results = json.load(open(os.path.join(out, "results.json")))
    assert set(results) >= {"miou", "per_class_iou", "tc", "tc_occlusion_masked", "frames_per_second", "tc_flow",
                            "miou_degraded_frames", "miou_degraded_pixels", "history_ablation"}
    report = open(os.path.join(out, "report.md")).read()
    assert f"{100 * results['miou']:.1f}" in report and "DIS" in report
    assert f"{100 * results['history_ablation']['miou']:.1f}" in report
