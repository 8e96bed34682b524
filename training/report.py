"""The quickstart report: results table, plots and stills from a finished `make quickstart` run.

    python -m stt_keras_cli.report --runs runs/quickstart     (parsed in stt_keras_cli/report.py)

reads (written by the quickstart steps)
    <runs>/psp_tiny/, <runs>/stt_psp_tiny/   stt-train runs (history.csv, last.keras) with eval/results.json:
                                             the per-frame model, and the STT of the recommended recipe (its
                                             per-frame stage in <runs>/stt_psp_tiny/per_frame/), the same total steps
    <runs>/export/                           stt-export of the STT model (export_report.json)
    <runs>/demo/                             the edge demo's overlay video and per-frame CSV
and writes <runs>/report.md with PNGs in <runs>/figures/.
"""

import csv
import json
import os

import numpy as np

MODELS = (("psp_tiny", "per-frame baseline (PSPNet tiny)"), ("stt_psp_tiny", "STT (`stt_psp_tiny`)"))


def _steps(run):
    path = os.path.join(run, "config.json")
    return json.load(open(path)).get("steps") if os.path.isfile(path) else None


def model_label(runs, name, default):
    """The table label of a quickstart run, with its steps (and, for the recipe, both stages')."""
    run = os.path.join(runs, name)
    steps, first = _steps(run), _steps(os.path.join(run, "per_frame"))
    if steps is None:
        return default
    if name == "psp_tiny":
        return f"per-frame `psp_tiny`, {steps} steps"
    if first is not None:
        return f"recipe: `psp_tiny` {first} steps, then STT `stt_psp_tiny` {steps} steps"
    return f"STT `stt_psp_tiny` from scratch, {steps} steps"


def _history(run, offset=0):
    path = os.path.join(run, "history.csv")
    if not os.path.isfile(path):
        return None
    config = json.load(open(os.path.join(run, "config.json"))) if os.path.isfile(os.path.join(run, "config.json")) else {}
    every = int(config.get("checkpoint_every", 1))
    rows = list(csv.DictReader(open(path)))
    steps = [offset + (int(r["epoch"]) + 1) * every for r in rows]
    return {key: (steps, [float(r[key]) for r in rows]) for key in rows[0] if key != "epoch"} if rows else None


def plot_training(runs, out):
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    curves = []
    for name, label in MODELS:
        run = os.path.join(runs, name)
        first = _history(os.path.join(run, "per_frame"))
        if first:  # the recipe's per-frame stage, then its STT stage after it
            curves.append((first, f"{label}: per-frame stage"))
        curves.append((_history(run, offset=(_steps(os.path.join(run, "per_frame")) or 0) if first else 0), label))
    for history, label in curves:
        if not history:
            continue
        axes[0].plot(*history["loss"], label=label)
        if "val_mean_iou" in history:
            steps, values = history["val_mean_iou"]
            axes[1].plot(steps, [100 * v for v in values], marker="o", label=label)
    axes[0].set(title="training loss", xlabel="step")
    axes[1].set(title="validation mIoU (%)", xlabel="step")
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:  # a run without curves (or validation): no empty legend, no warning
            ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_accuracy(results, out):
    import matplotlib.pyplot as plt

    metrics = [("miou", "mIoU"), ("miou_degraded_frames", "mIoU, degraded frames"),
               ("miou_degraded_pixels", "mIoU, degraded pixels"), ("tc", "TC (DIS flow)")]
    fig, ax = plt.subplots(figsize=(8, 3.6))
    width = 0.8 / max(len(results), 1)
    for i, (label, r) in enumerate(results.items()):
        values = [100 * (r.get(key) or 0.0) for key, _ in metrics]
        bars = ax.bar(np.arange(len(metrics)) + i * width, values, width, label=label)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    ax.set_xticks(np.arange(len(metrics)) + width * (len(results) - 1) / 2, [m for _, m in metrics])
    ax.set(ylabel="%", title="held-out synthetic sequences")
    ax.set_ylim(0, 100)
    if results:
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_latency(demo_csv, keras_fps, out):
    import matplotlib.pyplot as plt

    rows = list(csv.DictReader(open(demo_csv)))
    latency = [float(r["latency_ms"]) for r in rows]
    fig, ax = plt.subplots(figsize=(7, 3.2))
    ax.plot(latency, label="TFLite int8 step (edge demo, LiteRT, 2 threads)")
    for label, fps in keras_fps.items():
        if fps:
            ax.axhline(1000.0 / fps, linestyle="--", color="gray" if "baseline" in label else "black",
                       label=f"{label}, Keras (mean)")
    ax.set(xlabel="frame", ylabel="ms", title="per-frame latency, 2 CPU cores")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return latency


def still_frames(degraded, count=3):
    """The first `count` degraded frames of a sequence (frames 2, 15, 29 if none is degraded)."""
    return [t for t in range(len(degraded)) if degraded[t].any()][:count] or [2, 15, 29]


def make_stills(stt_path, base_path, out_dir, count=3):
    """Degraded frames of a held-out sequence: input | baseline | STT | NSM-selected queries | truth."""
    import cv2
    import tensorflow as tf

    from stt_keras import StreamingSegmenter, load_model
    from stt_keras.layers import nsm
    from stt_keras.data.synthetic import SyntheticVideo, palette

    def predictor(model):  # frame -> logits, as the model is deployed (an STT model streams)
        if model.stt is not None:
            return StreamingSegmenter(model).step
        return lambda frame: model(frame[None], training=False)[0]

    model = load_model(stt_path, compile=False)
    base = predictor(load_model(base_path, compile=False)) if os.path.isfile(base_path) else None
    frames, labels, degraded = SyntheticVideo(1, 30, 128, 256, seed=1000).sequence(0, with_degradation=True)
    chosen_frames = still_frames(degraded, count)
    stream = StreamingSegmenter(model)
    colours = palette()
    paths = []
    for t, frame in enumerate(frames):
        logits = np.asarray(stream.step(frame))
        base_logits = None if base is None else np.asarray(base(frame))
        if t not in chosen_frames:
            continue
        features, _ = model._encode(tf.constant(frame[None]), False)
        scores = nsm.nsm_score(features, model.stt.neighborhood_radius, model.stt.nsm_temperature)
        chosen = nsm.select_top(scores, model.stt.top_ratio).numpy()[0]
        h, w = scores.shape[1], scores.shape[2]
        selected = frame.copy()
        sy, sx = frame.shape[0] / h, frame.shape[1] / w
        for index in chosen:
            y, x = divmod(int(index), w)
            cv2.circle(selected, (int((x + 0.5) * sx), int((y + 0.5) * sy)), 2, (255, 40, 40), -1)
        panels = [frame]
        if base_logits is not None:
            panels.append(colours[base_logits.argmax(-1)])
        panels.append(colours[logits.argmax(-1)])
        if len(chosen) < h * w:  # with every point a query the panel would show nothing
            panels.append(selected)
        panels.append(colours[labels[t]])
        row = np.concatenate([np.pad(p, ((0, 0), (0, 4), (0, 0)), constant_values=255) for p in panels], axis=1)
        path = os.path.join(out_dir, f"still_{t:02d}.png")
        cv2.imwrite(path, cv2.cvtColor(row, cv2.COLOR_RGB2BGR))
        paths.append(path)
    return paths, len(chosen), h * w


def web_demo_section(figures):
    """The phone demo's screenshot (edge_demo/web in headless Chromium), when the quickstart could take one."""
    if not os.path.isfile(os.path.join(figures, "web_demo.png")):
        return []
    summary = os.path.join(figures, "web_demo.txt")
    text = open(summary).read().strip() if os.path.isfile(summary) else ""
    return ["", "## The phone demo in the browser", "",
            "The exported edge model in LiteRT.js, as a phone's browser runs it (`python -m stt_edge_demo.web`), "
            "in headless Chromium on the demo video (docs/web_demo.md)." + (f" `{text}`" if text else ""), "",
            "![web demo](figures/web_demo.png)"]


def _fmt(value, scale=100.0, digits=1):
    return "n/a" if value is None else f"{scale * value:.{digits}f}"


def build(runs):
    figures = os.path.join(runs, "figures")
    os.makedirs(figures, exist_ok=True)
    results = {}
    for name, label in MODELS:
        path = os.path.join(runs, name, "eval", "results.json")
        if os.path.isfile(path):
            results[model_label(runs, name, label)] = json.load(open(path))
    export_report = os.path.join(runs, "export", "export_report.json")
    export = json.load(open(export_report)) if os.path.isfile(export_report) else None
    demo_csv = os.path.join(runs, "demo", "overlay.csv")

    plot_training(runs, os.path.join(figures, "training.png"))
    plot_accuracy(results, os.path.join(figures, "accuracy.png"))
    keras_fps = {label: r.get("frames_per_second") for label, r in results.items()}
    latency = plot_latency(demo_csv, keras_fps, os.path.join(figures, "latency.png")) if os.path.isfile(demo_csv) else []
    stills, selected, points = make_stills(os.path.join(runs, "stt_psp_tiny", "last.keras"),
                                           os.path.join(runs, "psp_tiny", "last.keras"), figures)

    lines = ["# Quickstart report: STT vs its per-frame baseline on the built-in synthetic video", ""]
    lines += ["The recommended recipe (the per-frame model first, then the STT initialised from it, whose block "
              "starts as the identity: `stt-train --per-frame-steps`) against the per-frame model trained for the "
              "same total number of steps, on the same data with the same seed (`make quickstart`), evaluated on 6 "
              "held-out synthetic sequences of 30 frames (128 x 256, every frame labelled). TC uses OpenCV DIS "
              "optical flow and nearest-neighbour label warping (docs/method.md).", ""]
    lines += ["| model | mIoU | mIoU degraded frames | mIoU degraded pixels | mIoU clean frames | TC "
              "| mIoU, history ablated | frames/s (Keras, 2 cores) |", "|---|---|---|---|---|---|---|---|"]
    for label, r in results.items():
        fps = r.get("frames_per_second")
        ablated = r.get("history_ablation", {}).get("miou")
        lines.append(f"| {label} | {_fmt(r['miou'])} | {_fmt(r.get('miou_degraded_frames'))} | "
                     f"{_fmt(r.get('miou_degraded_pixels'))} | {_fmt(r.get('miou_clean_frames'))} | {_fmt(r['tc'])} | "
                     f"{'-' if ablated is None else _fmt(ablated)} | {'n/a' if not fps else f'{fps:.1f}'} |")
    lines += ["", "Degraded frames carry a burst (occluder, shadow, exposure, blur, noise or a stalled camera); "
              "the history ablation runs the same STT with its past replaced by copies of the current frame."]
    if latency:
        median = float(np.median(latency))
        lines += ["", f"Edge demo (`python -m stt_edge_demo`, LiteRT, int8 STT model, 2 threads) on a "
                  f"{len(latency)}-frame synthetic video: median model latency {median:.1f} ms "
                  f"({1000 / median:.0f} frames/s for the model alone); overlay video: `demo/overlay.mp4`."]
    if export:
        int8 = export["files"].get("stt_int8.tflite", {}).get("parity", {})
        lines += ["", f"Export (`export/export_report.md`): int8 TFLite labels agree with Keras on "
                  f"{_fmt(int8.get('label_agreement'), digits=2)}% of pixels; mIoU "
                  f"{_fmt(int8.get('miou_reference'))} (Keras) -> {_fmt(int8.get('miou'))} (int8) on the export's "
                  "parity sequences."]
    lines += ["", "## Training", "", "![training curves](figures/training.png)", "",
              "## Accuracy and temporal consistency", "", "![accuracy](figures/accuracy.png)", ""]
    if latency:
        lines += ["## Latency", "", "![latency](figures/latency.png)", ""]
    queries = (f" | the {selected} of {points} feature-map points NSM selects as queries (red)" if selected < points
               else "")
    lines += ["## Degraded frames: what time buys", "",
              f"Input | per-frame baseline | STT (streaming){queries} | ground truth, on the first degraded frames "
              "of a held-out sequence." + ("" if queries else " Every feature-map point is a query of this STT."), ""]
    lines += [f"![{os.path.basename(p)}](figures/{os.path.basename(p)})" for p in stills]
    lines += web_demo_section(figures)
    better = None
    if len(results) == 2:
        (bl, b), (sl, s) = list(results.items())
        better = s["miou"] > b["miou"], s["tc"] > b["tc"]
        extra = ""
        for key, what in (("miou_degraded_frames", "on degraded frames"), ("miou_clean_frames", "on clean frames")):
            if s.get(key) is not None and b.get(key) is not None:
                extra += f", mIoU {what} {100 * (s[key] - b[key]):+.1f}"
        if s.get("history_ablation"):
            extra += (f"; replacing the STT's history by copies of the current frame costs it "
                      f"{100 * (s['miou'] - s['history_ablation']['miou']):.1f} mIoU")
        lines += ["", "## Reading the numbers", "",
                  f"STT minus baseline: mIoU {100 * (s['miou'] - b['miou']):+.1f}, TC {100 * (s['tc'] - b['tc']):+.1f} "
                  f"points{extra}. One seed on one family: the same comparison over seeds and scene families, "
                  "with the spread, is `python benchmarks/synthetic_accuracy.py --families all --seeds 0 1 2` "
                  "(docs/performance.md, \"Does time pay?\")."]
    report = "\n".join(lines) + "\n"
    with open(os.path.join(runs, "report.md"), "w") as f:
        f.write(report)
    return report, better


def run(args):
    """The command `python -m stt_keras_cli.report` (parsed there): builds the report of `args.runs` and prints it."""
    from stt_keras.utils.errors import UserError

    model = os.path.join(args.runs, "stt_psp_tiny", "last.keras")
    if not os.path.isfile(model):
        raise UserError(f"--runs {args.runs}: no {model} (make quickstart's training steps write it)")
    report, _ = build(args.runs)
    print(report)
    print(f"report: {os.path.join(args.runs, 'report.md')}")


def main(argv=None):
    """`python -m stt_keras.training.report`: the command `python -m stt_keras_cli.report`."""
    from stt_keras_cli.report import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
