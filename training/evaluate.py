"""stt-eval's evaluation: `run(args)` streams whole sequences and writes results.json and report.md.

The command line (`stt-eval --help`) is parsed in stt_keras_cli/evaluate.py,
which imports no TensorFlow.
"""

import glob
import json
import math
import os
import sys
import time

import numpy as np
import tensorflow as tf

from stt_keras import StreamingSegmenter, load_model
from stt_keras.utils.errors import UserError, run_cli
from stt_keras.metrics import IGNORE_LABEL
from stt_keras.utils.progress import Progress
from stt_keras.utils.sizes import SizeError, parse_frame_size
from stt_keras.data import cityscapes_ids, readers, scan
from stt_keras.data.files import FrameFiles, LabelFiles
from stt_keras.data.synthetic import FAMILIES, SyntheticVideo, get_family
from stt_keras.data.video import VideoFrames, read_video_labels
from stt_keras.metrics import MeanIoU
from stt_keras.training.consistency import FLOW_ESTIMATOR, VC_PROTOCOLS, TemporalConsistency, VideoConsistency


def synthetic_sequences(num_sequences=6, frames=30, size=None, seed=1000, labelled_every=1, family="default"):
    """Held-out synthetic sequences (a seed the training set does not use) of a family (size None: its own):
    (frames, {index: label}, {index: degraded-pixel mask})."""
    size = size or get_family(family).size
    video = SyntheticVideo(num_sequences, frames, *size, seed=seed, family=family)
    for i in range(num_sequences):
        f, l, d = video.sequence(i, with_degradation=True)
        labelled = range(0, frames, labelled_every)
        yield f, {t: l[t] for t in labelled}, {t: d[t] for t in labelled}


def cityscapes_sequences(root, split):
    """Cityscapes 30-frame snippets around every annotated frame: [(frames, {19: label})], files read when streamed."""
    return file_sequences(readers.cityscapes_sequences(root, split), 19, "cityscapes")


def file_sequences(listed, num_classes, label_format="index"):
    """(name, frame paths, {index: label path}) lists -> [(FrameFiles, LabelFiles)]."""
    return [(FrameFiles(paths), LabelFiles(labels, num_classes, label_format)) for _, paths, labels in listed]


def video_sequences(path, label_dir, num_classes):
    """One video file with `{frame:06d}.png` labels (stt_keras/data/video.py): [(VideoFrames, {index: label})]."""
    frames = VideoFrames(path)
    return [(frames, read_video_labels(label_dir, len(frames) or 10 ** 9, num_classes))]


def _count(frames):
    try:
        return len(frames)
    except TypeError:
        return None


def evaluate(model, sequences, num_classes, max_sequences=None, history="video", vc_protocol="vspw"):
    """Runs `model` over sequences; returns the metrics dict.

    Args:
        sequences: iterable of (frames, {t: label}) or (frames, {t: label}, {t:
            degraded-pixel mask}); frames is an array [N, H, W, 3] or anything that
            iterates over [H, W, 3] frames (FrameFiles, VideoFrames: one frame in
            memory at a time). With the masks, mIoU is also reported on degraded
            frames (any degraded pixel), on degraded pixels only, and on clean frames.
            A list gives a progress line (frames done, frames/s, ETA) on stderr.
        history: "video" (the real stream) or "current" (the history ablation:
            every step's history is copies of the current frame, so the STT sees
            no past; a per-frame model is unaffected).
        vc_protocol: mVC_8 / mVC_16 (`VideoConsistency`) on the sequences with a label on
            every frame: "vspw" (the VSPW authors' script) or "cffm" (its CFFM/MRCFA copy).
    """
    if history not in ("video", "current"):
        raise ValueError(f"`history` must be 'video' or 'current', got {history!r}.")
    total = None
    if isinstance(sequences, (list, tuple)):
        counts = [_count(item[0]) for item in sequences[:max_sequences]]
        total = None if None in counts else sum(counts)
    progress = Progress("stt-eval" + (" (history ablated)" if history == "current" else ""), total, "frames")
    miou = MeanIoU(num_classes)
    subsets = {"degraded_frames": MeanIoU(num_classes), "degraded_pixels": MeanIoU(num_classes),
               "clean_frames": MeanIoU(num_classes)}
    has_masks = False
    tc = TemporalConsistency(num_classes, masked=True)
    vc = VideoConsistency(protocol=vc_protocol)
    stream = StreamingSegmenter(model) if model.stt is not None else None
    per_frame = tf.function(lambda frame: model(frame, training=False))  # compiled, as the stream step is
    seconds, frames_timed = 0.0, 0
    for n, item in enumerate(sequences):
        if max_sequences is not None and n >= max_sequences:
            break
        frames, labels = item[0], item[1]
        masks = item[2] if len(item) > 2 else None
        has_masks |= masks is not None
        if stream is not None:
            stream.reset()
        vc.start_sequence()
        previous = None  # (frame, prediction): TC adds up over consecutive pairs
        for t, frame in enumerate(frames):
            if stream is not None and history == "current":
                stream.reset()  # the first-frame policy fills the history with this frame
            start = time.perf_counter()
            logits = stream.step(frame) if stream is not None else per_frame(frame[None])[0]
            prediction = np.asarray(logits).argmax(-1)
            if t > 0:  # the first frame of a sequence includes tracing and warm-up
                seconds += time.perf_counter() - start
                frames_timed += 1
            if t in labels:
                # with_stored: the label as stored too (VSPW's mask), in one read
                train_ids, stored = labels.with_stored(t) if hasattr(labels, "with_stored") else (labels[t], None)
                label = train_ids[None].astype(np.int64)
                if label.shape[1:] != prediction.shape:
                    raise ValueError(f"Frame {t} of sequence {n} is {prediction.shape[0]}x{prediction.shape[1]} but its "
                                     f"label is {label.shape[1]}x{label.shape[2]}.")
                miou.update_state(label, prediction[None])
                if masks is not None:
                    mask = masks[t][None]
                    subsets["degraded_frames" if mask.any() else "clean_frames"].update_state(label, prediction[None])
                    if mask.any():
                        subsets["degraded_pixels"].update_state(np.where(mask, label, IGNORE_LABEL), prediction[None])
                vc.update(train_ids, prediction, stored)
            else:
                vc.update(None, prediction)
            if previous is not None:
                tc.update(np.stack([previous[0], frame]), np.stack([previous[1], prediction]))
            previous = (frame, prediction)
            progress.update()
        vc.end_sequence()
    progress.close()
    per_class = miou.per_class_iou().numpy()
    consistency = vc.result()
    results = {
        "miou": float(miou.result()),
        "per_class_iou": [None if np.isnan(v) else float(v) for v in per_class],
        "tc": tc.result(),
        "tc_occlusion_masked": tc.result_masked(),
        "tc_flow": FLOW_ESTIMATOR,
        **{f"mvc_{n}": value for n, value in consistency.items()},
        "vc_protocol": vc_protocol,
        "vc_sequences": vc.sequences,
        "vc_windows": {str(n): count for n, count in vc.windows_counted().items()},
        "frames_per_second": frames_timed / seconds if seconds else None,
        "frames_timed": frames_timed,
        "history": history,
    }
    if has_masks:
        for name, metric in subsets.items():
            value = float(metric.result())
            results[f"miou_{name}"] = None if np.isnan(value) else value
    return results


def evaluate_with_ablation(model, make_sequences, num_classes, max_sequences=None, ablation=True, vc_protocol="vspw"):
    """`evaluate` on the real stream and, for an STT model, again with the history
    ablation (results["history_ablation"]): how much of the result comes from time."""
    results = evaluate(model, make_sequences(), num_classes, max_sequences, vc_protocol=vc_protocol)
    if model.stt is not None and ablation:
        ablation = evaluate(model, make_sequences(), num_classes, max_sequences, history="current",
                            vc_protocol=vc_protocol)
        results["history_ablation"] = {k: v for k, v in ablation.items()
                                       if k in ("miou", "tc", "miou_degraded_frames", "miou_degraded_pixels",
                                                "miou_clean_frames", "mvc_8", "mvc_16")}
    return results


def markdown_report(results, class_names, title):
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    def pct(value):  # None / NaN (e.g. no frame pair for TC) is shown as n/a
        return "n/a" if value is None or not math.isfinite(value) else f"{100 * value:.1f}"

    lines.append(f"| mIoU | {pct(results['miou'])} |")
    lines.append(f"| TC ({results['tc_flow']}) | {pct(results['tc'])} |")
    lines.append(f"| TC, occlusion-masked (forward-backward check) | {pct(results['tc_occlusion_masked'])} |")
    for n in (8, 16):
        if results.get(f"mvc_{n}") is not None:
            lines.append(f"| mVC_{n} ({results['vc_protocol']} protocol, {results['vc_windows'][str(n)]} windows of "
                         f"{results['vc_sequences']} densely labelled sequences) | {pct(results[f'mvc_{n}'])} |")
    for key, name in (("miou_degraded_frames", "mIoU, degraded frames"), ("miou_degraded_pixels", "mIoU, degraded pixels"),
                      ("miou_clean_frames", "mIoU, clean frames")):
        if results.get(key) is not None:
            lines.append(f"| {name} | {pct(results[key])} |")
    ablation = results.get("history_ablation")
    if ablation:
        lines.append(f"| mIoU with the history ablated (past = copies of the current frame) | {pct(ablation['miou'])} |")
        if ablation.get("miou_degraded_frames") is not None:
            lines.append(f"| mIoU on degraded frames, history ablated | {pct(ablation['miou_degraded_frames'])} |")
        lines.append(f"| TC, history ablated | {pct(ablation['tc'])} |")
        for n in (8, 16):
            if ablation.get(f"mvc_{n}") is not None:
                lines.append(f"| mVC_{n}, history ablated | {pct(ablation[f'mvc_{n}'])} |")
    fps = results["frames_per_second"]
    lines.append(f"| frames/s (batch 1, this machine) | {fps:.2f} |" if fps else "| frames/s | n/a |")
    lines += ["", "| class | IoU |", "|---|---|"]
    for name, iou in zip(class_names, results["per_class_iou"]):
        lines.append(f"| {name} | {'absent' if iou is None else f'{100 * iou:.1f}'} |")
    return "\n".join(lines) + "\n"


from stt_keras_cli.evaluate import DATASETS, build_parser  # noqa: E402,F401


def finite_or_none(value):
    """The results with every NaN/inf float replaced by None (JSON has no NaN)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_or_none(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_none(v) for v in value]
    return value


def folder_root(data_root, split):
    """`data_root/split` when it holds frames/, else `data_root` itself when it does (a folder of one split)."""
    for candidate in (os.path.join(data_root, split), data_root):
        if os.path.isdir(os.path.join(candidate, "frames")):
            return candidate
    raise UserError(f"stt-eval: no frames/ folder in {os.path.join(data_root, split)} or {data_root} "
                    "(the folder layout is ROOT/SPLIT/frames/SEQUENCE/*.png with ROOT/SPLIT/labels/SEQUENCE/*.png).")


def check_arguments(args):
    if args.max_sequences is not None and args.max_sequences < 1:
        raise UserError(f"stt-eval: --max-sequences must be at least 1, got {args.max_sequences} (nothing to evaluate).")
    if args.synthetic_sequences < 1:
        raise UserError(f"stt-eval: --synthetic-sequences must be at least 1, got {args.synthetic_sequences}.")
    if not (os.path.isfile(args.model) or os.path.isfile(os.path.join(args.model, "config.json"))):
        raise UserError(f"stt-eval: model not found: {args.model} (a .keras file or a preset directory)")
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UserError(f"stt-eval: --out {args.out} exists and is not a folder.")
    if args.classes and not os.path.isfile(args.classes):
        raise UserError(f"stt-eval: --classes file not found: {args.classes}")
    if args.dataset == "synthetic":
        if args.synthetic_size is None:
            return get_family(args.synthetic_family).size
        try:
            return parse_frame_size(args.synthetic_size, "--synthetic-size")
        except SizeError as error:
            raise UserError(f"stt-eval: {error}.") from None
    if not args.data_root:
        raise UserError(f"stt-eval: --data-root is required for {args.dataset}.")
    if args.dataset == "cityscapes":
        labels = os.path.join(args.data_root, "gtFine", args.split)
        if not readers.cityscapes_labels(args.data_root, args.split):
            raise UserError(f"stt-eval: no Cityscapes labels (*_gtFine_labelIds.png) under {labels}: nothing to score.")
    elif args.dataset == "camvid":
        labels = os.path.join(args.data_root, "labels", args.split)
        if not glob.glob(os.path.join(labels, "*.[pP][nN][gG]")):
            raise UserError(f"stt-eval: no CamVid labels (*.png) in {labels}: nothing to score.")
    elif args.dataset == "vspw":
        listing = os.path.join(args.data_root, f"{args.split}.txt")
        if not os.path.isfile(listing):
            raise UserError(f"stt-eval: no VSPW split file {listing} (ROOT/{{train,val,test}}.txt next to ROOT/data/).")
    elif args.dataset == "video":
        if not os.path.isfile(args.data_root):
            raise UserError(f"stt-eval: --dataset video needs --data-root VIDEO_FILE; no file at {args.data_root}.")
        if not args.label_dir or not os.path.isdir(args.label_dir):
            raise UserError("stt-eval: --dataset video needs --label-dir, the folder of {frame:06d}.png labels"
                            + (f" ({args.label_dir} is not a folder)." if args.label_dir else "."))
    return None


def dataset_sequences(args, num_classes, size=None):
    """(make_sequences, class names, description) of the dataset the arguments name; UserError if it is unusable."""
    if args.dataset == "synthetic":
        family = args.synthetic_family
        sequences = list(synthetic_sequences(args.synthetic_sequences, size=size, family=family))
        return (lambda: sequences), list(get_family(family).class_names), (
            f"synthetic{'' if family == 'default' else f' family {family}'}, {args.synthetic_sequences} sequences")
    if args.dataset == "cityscapes":
        sequences = cityscapes_sequences(args.data_root, args.split)
        names = list(cityscapes_ids.CLASS_NAMES)
    elif args.dataset == "camvid":
        sequences = file_sequences(readers.camvid_sequences(args.data_root, args.split), len(readers.CAMVID_CLASSES))
        names = list(readers.CAMVID_CLASSES)
    elif args.dataset == "vspw":
        sequences = file_sequences(readers.vspw_sequences(args.data_root, args.split), len(readers.VSPW_CLASSES),
                                   "vspw")
        names = list(readers.VSPW_CLASSES)
    elif args.dataset == "folder":
        root = folder_root(args.data_root, args.split)
        listed = readers.folder_sequences(root)
        if not any(labels for _, _, labels in listed):
            raise UserError(f"stt-eval: no labels under {os.path.join(root, 'labels')} (labels/SEQUENCE/STEM.png next "
                            "to frames/SEQUENCE/STEM.png): nothing to score.")
        sequences = file_sequences(listed, num_classes)
        names = None
    else:
        sequences = video_sequences(args.data_root, args.label_dir, num_classes)
        names = None
    if names is None:
        from stt_keras.data.classes import class_names_for

        names, _, _ = class_names_for(args.classes, num_classes)
    where = folder_root(args.data_root, args.split) if args.dataset == "folder" else args.data_root
    return (lambda: sequences), names, f"{args.dataset} {where}" + (
        f" (split {args.split})" if args.dataset in ("cityscapes", "camvid", "vspw") else "")


def run(args):
    size = check_arguments(args)
    scanned = None  # the pre-flight scan (stt_keras/data/scan.py) of every file streamed, before the model
    if args.dataset != "synthetic" and not getattr(args, "skip_scan", False):
        scanned = scan.check_evaluation_data(args)
    model = load_model(args.model, compile=False)
    scan.finish_evaluation_check(scanned, model.num_classes)  # folder and video labels: the model's class count
    try:
        make_sequences, names, description = dataset_sequences(args, model.num_classes, size)
    except UserError:  # already one line naming the problem
        raise
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"stt-eval: {error}") from None
    if model.num_classes != len(names):
        raise UserError(f"stt-eval: the model predicts {model.num_classes} classes, the dataset has {len(names)}.")
    total = sum(len(item[0]) for item in make_sequences()[:args.max_sequences])
    count = len(make_sequences()[:args.max_sequences])
    print(f"stt-eval: {description}: {count} sequence{'' if count == 1 else 's'}, {total} frame{'' if total == 1 else 's'}"
          + (", twice (the second pass ablates the history)" if model.stt is not None and not args.no_history_ablation
             else ""), file=sys.stderr, flush=True)
    try:
        results = evaluate_with_ablation(model, make_sequences, len(names), args.max_sequences,
                                         ablation=not args.no_history_ablation, vc_protocol=args.vc_protocol)
    except (FileNotFoundError, ValueError) as error:
        raise UserError(f"stt-eval: {error}") from None
    if results.get("miou") is None or not math.isfinite(results["miou"]):
        raise UserError("stt-eval: no labelled frame was evaluated (empty dataset or no labels), so there is no mIoU; "
                        "nothing was written.")
    results.update(model=os.path.abspath(args.model), dataset=args.dataset, data=description, split=args.split,
                   class_names=list(names))
    results = finite_or_none(results)
    os.makedirs(args.out, exist_ok=True)
    from stt_keras.training.callbacks import atomic_write_bytes

    atomic_write_bytes(os.path.join(args.out, "results.json"), json.dumps(results, indent=2, allow_nan=False).encode())
    report = markdown_report(results, names, f"{os.path.basename(args.model)} on {description}")
    atomic_write_bytes(os.path.join(args.out, "report.md"), report.encode())
    print(report)
    return results


def main(argv=None):
    """`python -m stt_keras.training.evaluate`: the stt-eval command (stt_keras_cli.evaluate.main)."""
    from stt_keras_cli.evaluate import main as cli_main

    cli_main(argv)


if __name__ == "__main__":
    main()
