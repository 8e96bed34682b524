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
    steps = json.load(open(os.path.join(run, "config.json")))["steps"]
    assert f"| STT `stt_psp_tiny` from scratch, {steps} steps | 53.4 | n/a | n/a | n/a | 72.3 | - | 40.0 |" in text
    assert f"| per-frame `psp_tiny`, {steps} steps | 51.2 | n/a | n/a | n/a | 70.1 |" in text
    assert "mIoU +2.2, TC +2.2" in text and better == (True, True)
    assert "median model latency 6.0 ms" in text
    assert open(runs / "report.md").read() == text
    from stt_keras.data.synthetic import SyntheticVideo

    _, _, degraded = SyntheticVideo(1, 30, 128, 256, seed=1000).sequence(0, with_degradation=True)
    stills = [f"still_{t:02d}.png" for t in report.still_frames(degraded)]
    assert len(stills) == 3 and all(degraded[int(n[6:8])].any() for n in stills)  # degraded frames shown
    for name in ["training.png", "accuracy.png", "latency.png"] + stills:
        image = cv2.imread(str(runs / "figures" / name))
        assert image is not None and image.size > 0, name
        assert f"figures/{name}" in text
    still = cv2.imread(str(runs / "figures" / stills[0]))
    assert still.shape[0] == 128 and still.shape[1] == 5 * (256 + 4)  # input | baseline | STT | queries | truth


def test_labels_name_the_recipe_and_its_stages(tmp_path):
    runs = tmp_path / "quickstart"
    for folder, steps in (("psp_tiny", 300), ("stt_psp_tiny", 150), ("stt_psp_tiny/per_frame", 150)):
        (runs / folder).mkdir(parents=True)
        json.dump({"steps": steps, "checkpoint_every": 50}, open(runs / folder / "config.json", "w"))
        with open(runs / folder / "history.csv", "w") as f:
            f.write("epoch,loss,mean_iou,val_loss,val_mean_iou\n0,1.0,0.3,0.9,0.35\n1,0.8,0.4,0.7,0.45\n")
    assert report.model_label(str(runs), "psp_tiny", "x") == "per-frame `psp_tiny`, 300 steps"
    assert report.model_label(str(runs), "stt_psp_tiny", "x") == \
        "recipe: `psp_tiny` 150 steps, then STT `stt_psp_tiny` 150 steps"
    assert report._history(str(runs / "stt_psp_tiny"), offset=150)["loss"][0] == [200, 250]
    report.plot_training(str(runs), str(tmp_path / "training.png"))
    assert cv2.imread(str(tmp_path / "training.png")) is not None
