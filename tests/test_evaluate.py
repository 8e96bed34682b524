"""stt-eval: metrics over whole sequences, and its report files."""

import json
import os

import numpy as np

from stt_keras.models import STTSegmenter
from training.evaluate import evaluate, main, synthetic_sequences
from test_metrics import numpy_miou


def test_evaluate_per_frame_model_matches_a_direct_computation():
    model = STTSegmenter.from_preset("psp_tiny", num_classes=7)
    sequences = list(synthetic_sequences(2, frames=4, size=(64, 128), labelled_every=2))
    results = evaluate(model, sequences, 7)
    trues, preds = [], []
    for frames, labels in sequences:
        for t, label in labels.items():
            trues.append(label.ravel().astype(np.int64))
            preds.append(np.asarray(model(frames[t][None])[0]).argmax(-1).ravel())
    expected = numpy_miou(np.concatenate(trues), np.concatenate(preds), 7)
    np.testing.assert_allclose(results["miou"], expected, rtol=1e-6)
    assert 0.0 <= results["tc"] <= 1.0 and results["frames_timed"] == 2 * 3


def test_stt_eval_writes_json_and_markdown(tmp_path):
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=7)
    path = str(tmp_path / "m.keras")
    model(np.zeros((1, 4, 64, 128, 3), np.uint8))
    model.save(path)
    out = str(tmp_path / "eval")
    main(["--model", path, "--out", out, "--synthetic-sequences", "1", "--synthetic-size", "64x128"])
    results = json.load(open(os.path.join(out, "results.json")))
    assert set(results) >= {"miou", "per_class_iou", "tc", "tc_occlusion_masked", "frames_per_second", "tc_flow"}
    report = open(os.path.join(out, "report.md")).read()
    assert f"{100 * results['miou']:.1f}" in report and "DIS" in report
