r"""stt-eval: mIoU, per-class IoU, temporal consistency and frames/s of a saved model on whole sequences.

Each sequence is run frame by frame the way the model is deployed: an STT model
through StreamingSegmenter (every frame encoded once, the first-frame policy at
the start of every sequence), a per-frame model on each frame alone. mIoU is
over the labelled frames; TC (ETC's protocol, docs/method.md) over every consecutive
pair of predicted frames, with OpenCV DIS flow; mVC_8 / mVC_16 (VSPW's video
consistency, training/consistency.py) over the sequences with a label on every frame.

    stt-eval --model runs/synthetic_stt/best.keras --dataset synthetic --out runs/synthetic_stt/eval
    stt-eval --model m.keras --dataset cityscapes --data-root /data/cityscapes --split val --out eval/
    stt-eval --model m.keras --dataset camvid --data-root /data/camvid --split test --out eval/
    stt-eval --model m.keras --dataset vspw --data-root /data/VSPW_480p --split val --out eval/
    stt-eval --model m.keras --dataset folder --data-root data/mine --split val --classes classes.txt --out eval/
    stt-eval --model m.keras --dataset video --data-root drive.mp4 --label-dir drive_labels/ --out eval/

Cityscapes TC clips follow ETC: the 19 frames before the annotated one, the
annotated one and the 10 after (the whole 30-frame snippet); CamVid snippets are
taken the same way around each labelled frame (fewer at a recording's ends).
A folder dataset (ROOT/SPLIT/frames/SEQUENCE/*, labels/SEQUENCE/STEM.png), a
VSPW split (ROOT/SPLIT.txt, ROOT/data/VIDEO/origin and mask) and a video (its
{frame:06d}.png labels) stream every sequence whole.

Every frame and label to be streamed is scanned first, before the model is
loaded, as stt-train does (--skip-scan turns it off).

Progress (frames done, frames/s, ETA) goes to stderr every 10 s
(STT_KERAS_PROGRESS_SECONDS changes the interval).
"""

import argparse

from stt_keras_cli import HelpFormatter, OldFlag, add_tf_logs_flag, run_command

DATASETS = ("synthetic", "cityscapes", "camvid", "folder", "video", "vspw")
# training/consistency.py VC_PROTOCOLS (kept here too: this module imports no TensorFlow).
VC_PROTOCOLS = ("vspw", "cffm")


def build_parser():
    p = argparse.ArgumentParser(prog="stt-eval", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", required=True, help="a .keras file from stt-train")
    p.add_argument("--dataset", choices=DATASETS, default="synthetic", help="the sequences to stream")
    p.add_argument("--data-root", help="dataset root (cityscapes, camvid, vspw: the folder holding SPLIT.txt and data/, folder: the folder holding SPLIT/frames or "
                                       "frames/), or the video file (video)")
    p.add_argument("--split", default="val", help="split of a cityscapes, camvid, vspw or folder dataset")
    p.add_argument("--label-dir", help="--dataset video: the folder of {frame:06d}.png labels (frame 0 is the first)")
    p.add_argument("--labels", dest="classes", action=OldFlag, new="--classes", help=argparse.SUPPRESS)
    p.add_argument("--classes", help="class names for the report (folder, video): a classes file as for stt-export "
                                    "(JSON, or one name per line); default class_0, class_1, ...")
    p.add_argument("--out", required=True, help="folder for results.json and report.md")
    p.add_argument("--max-sequences", type=int, default=None, help="stream only the first N sequences (default: all)")
    p.add_argument("--no-history-ablation", action="store_true",
                   help="skip the second pass with the STT's history replaced by the current frame (halves the time)")
    p.add_argument("--vc-protocol", choices=VC_PROTOCOLS, default="vspw",
                   help="mVC_8/16 on densely labelled sequences: vspw = the VSPW authors' VC_perclip.py (stored masks, "
                        "0 and 255 apart); cffm = its CFFM/MRCFA copy (0 and 255 merged, sequences of <= 16 frames "
                        "skipped for mVC_8 too)")
    p.add_argument("--skip-scan", action="store_true",
                   help="do not scan the dataset first (every frame and label streamed: decodable, sizes, label values; "
                        "cached, docs/own_data.md); a bad file then stops the evaluation when it is reached")
    p.add_argument("--synthetic-sequences", type=int, default=6, help="--dataset synthetic: held-out sequences of 30 frames")
    p.add_argument("--synthetic-size", default=None, metavar="HxW", help="--dataset synthetic: frame size (default: the family's own)")
    p.add_argument("--synthetic-family", default="default", metavar="FAMILY",
                   help="--dataset synthetic: the scene family (docs/training.md)")
    add_tf_logs_flag(p)
    return p

def main(argv=None):
    """Console entry point: parses (no TensorFlow yet), then runs `stt_keras.training.evaluate.run`."""
    run_command("stt-eval", build_parser(), argv, "stt_keras.training.evaluate", "run")


if __name__ == "__main__":
    main()
