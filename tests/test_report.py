"""training.report: the quickstart report from a finished run folder."""

import csv
import json
import os
import shutil

import cv2
import numpy as np

from stt_keras.training import report


def test_report_has_table_plots_and_stills(trained_model_path, exported, tmp_path):
    runs = tmp_path / "quickstart"
    run = os.path.dirname(trained_model_path)
    for name, miou, tc in (("psp_tiny", 0.512, 0.701), ("stt_psp_tiny", 0.534, 0.723)):
        folder = runs / name
        (folder / "eval").mkdir(parents=True)
        for f in ("history.csv", "config.json", "last.keras"):
            shutil.copy(os.path.join(run, f), folder / f)
        results = {"miou": miou, "tc": tc, "tc_occlusion_masked": tc + 0.03, "frames_per_second": 40.0}
        json.dump(results, open(folder / "eval" / "results.json", "w"))
    shutil.copytree(exported[0], runs / "export")
    (runs / "demo").mkdir()
    with open(runs / "demo" / "overlay.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["frame", "latency_ms", "total_ms"])
        writer.writerows((i, 5.0 + i % 3, 9.0) for i in range(20))

    (runs / "figures").mkdir()
    cv2.imwrite(str(runs / "figures" / "web_demo.png"), np.zeros((8, 8, 3), np.uint8))  # as edge_demo.web.headless writes
    (runs / "figures" / "web_demo.txt").write_text("20 frames of stt_edge_int8.tflite on webgpu\n")

    text, better = report.build(str(runs))
    assert "## The phone demo in the browser" in text and "![web demo](figures/web_demo.png)" in text
    assert "20 frames of stt_edge_int8.tflite on webgpu" in text
    assert "| STT (`stt_psp_tiny`) | 53.4 | n/a | n/a | 72.3 | - | 40.0 |" in text
    assert "| per-frame baseline (PSPNet tiny) | 51.2 | n/a | n/a | 70.1 |" in text
    assert "mIoU +2.2, TC +2.2" in text and better == (True, True)
    assert "median model latency 6.0 ms" in text
    assert open(runs / "report.md").read() == text
    from stt_keras.training.data.synthetic import SyntheticVideo

    _, _, degraded = SyntheticVideo(1, 30, 128, 256, seed=1000).sequence(0, with_degradation=True)
    stills = [f"still_{t:02d}.png" for t in report.still_frames(degraded)]
    assert len(stills) == 3 and all(degraded[int(n[6:8])].any() for n in stills)  # degraded frames shown
    for name in ["training.png", "accuracy.png", "latency.png"] + stills:
        image = cv2.imread(str(runs / "figures" / name))
        assert image is not None and image.size > 0, name
        assert f"figures/{name}" in text
    still = cv2.imread(str(runs / "figures" / stills[0]))
    assert still.shape[0] == 128 and still.shape[1] == 5 * (256 + 4)  # input | baseline | STT | queries | truth
