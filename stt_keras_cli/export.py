r"""stt-export: a trained .keras model -> SavedModel (TF Serving), TFLite and ONNX streaming steps.

    stt-export --model runs/stt/model.keras --out exports/stt_tiny --size 128x256

writes, atomically (a failed or interrupted export leaves `--out` as it was):

    exports/NAME/saved_model/1/            TF Serving layout: serving_default (clip) and step
    exports/NAME/stt_<q>.tflite + .json    default-form step, q in float32 float16 dynamic_range
    exports/NAME/stt_gpu_<q>.tflite + .json  dense_masked-form step (delegate-friendly), q as above
    exports/NAME/stt_int8.tflite + .json   full int8 (convolutions int8, the STT block float32 but
                                           its 1x1 projections, W^O and FFN),
                                           built from the loop-free (dense_masked) graph
    exports/NAME/stt_step.onnx + .json, stt_gpu_step.onnx + .json
    exports/NAME/export_report.json, export_report.md   parity, sizes, op lists, GPU/TensorRT checks
    exports/NAME/export_manifest.json      SHA-256 of every file (each model's .json also holds its own)

`--out` must be new, empty, or an earlier export (its manifest lists every file
in it): any other folder is refused, never deleted. Arguments that would write
no model, and frame sizes whose export needs more memory than the machine has
(estimated up front; `--no-memory-check` to try anyway), are refused before
anything is written.

A per-frame model (psp18, bise18, psp_tiny, ...) has no state and one graph form:
frame_<q>.tflite, frame_int8.tflite, frame_step.onnx. With `--interfaces edge` (or
full,edge) every file also comes in the edge interface (uint8 frame in, int32
labels computed on the device out, no logits): names get `_edge`, e.g.
stt_gpu_edge_float32.tflite, frame_edge_step.onnx.

Every .tflite is checked for Flex ops, variable ops and unfolded BatchNorm (the
export fails if it finds any). The dense_masked-form (and per-frame) float models are
compiled for LiteRT's GPU accelerator when a Vulkan device is there (`--gpu-check`,
see edge_demo/litert_gpu.py): the report says how many ops run on the GPU and how
often its labels agree with LiteRT on the CPU.
Parity: each exported model streams the same held-out sequences as the Keras
model, each carrying its own state.

Your own data (docs/own_data.md):

    stt-export --model runs/mine/best.keras --out exports/mine --size 256x512 \
        --classes classes.txt --calibration-data data/mine/val

`--classes` names the classes (a classes file: one name per line with an optional
colour, or JSON; or a built-in set); they go into every model's metadata (the edge
demo's legend), `labels.json` and the SavedModel's assets. (`--labels` is a
deprecated alias: "labels" are the per-pixel class indices a model outputs.) `--calibration-data`
(a folder layout the readers know, a video file, or a quoted glob of frames)
supplies the int8 calibration frames and the parity frames; without it both are
synthetic, and a model that was not trained on the synthetic video gets a loud
warning. The report and manifest name the data used. Progress (frames, frames/s,
ETA) of calibration and parity runs goes to stderr.
"""

import argparse

from stt_keras_cli import HelpFormatter, OldFlag, add_tf_logs_flag, run_command


def int8_float_head(value):
    """`--int8-float-head` as `tflite.convert`'s float_head: "decoder" or a count of convolutions."""
    return value if value == "decoder" else int(value)


def build_parser():
    p = argparse.ArgumentParser(prog="stt-export", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--model", required=True,
                   help="a .keras file from stt-train (loaded in safe mode), or a preset directory (save_to_preset)")
    p.add_argument("--out", required=True, help="export folder, e.g. exports/stt_psp18")
    p.add_argument("--size", default="128x256", metavar="HxW", help="frame size the exported models take (at least 16x16)")
    p.add_argument("--labels", dest="classes", action=OldFlag, new="--classes", help=argparse.SUPPRESS)
    p.add_argument("--classes", default=None,
                   help="class names (and colours) for the metadata: a classes file (one name per line, optional colour "
                        "'road 128 64 128' or '#804080'; or JSON), or a built-in set: synthetic, cityscapes, camvid, vspw "
                        "(default: the built-in set with the model's class count, else class_0, class_1, ...)")
    p.add_argument("--formats", default="savedmodel,tflite,onnx", help="comma list of savedmodel, tflite, onnx")
    p.add_argument("--forms", default="default,dense_masked",
                   help="comma list of step forms: default, dense_masked (the loop-free STT; its files are "
                        "stt_gpu_*; `gpu` is a deprecated alias)")
    p.add_argument("--interfaces", default="full", help="comma list of full (logits, float dense_masked-form frame), "
                   "edge (uint8 frame, int32 labels computed on the device)")
    p.add_argument("--quantizations", default=None,
                   help="TFLite quantizations (default: float32,float16,dynamic_range,int8, each where the forms allow it;"
                        " a quantization given here that no requested form can build is an error)")
    p.add_argument("--int8-float-head", default="1", choices=("0", "1", "2", "decoder"),
                   help="int8: how much of the head stays float32: 0 none, 1 the classifier (default: float logits), "
                        "2 also the conv before it, decoder: the whole decoder and the whole STT block (for LiteRT's GPU "
                        "accelerator: its labels agree with the CPU's; about 1.7-1.8x the file size and slower on a "
                        "CPU; docs/gpu_accelerator.md)")
    p.add_argument("--gpu-check", choices=("auto", "off", "require"), default="auto",
                   help="compile GPU-form float models for LiteRT's GPU accelerator and compare its labels with "
                        "the CPU (auto: when a Vulkan device is available; require: fail without one)")
    p.add_argument("--calibration-data", default=None,
                   help="frames for int8 calibration and parity: a folder in the generic layout (frames/SEQ/*.png, "
                        "optional labels/SEQ/*.png) or a dataset root with SPLIT/frames, a CamVid, Cityscapes or VSPW root, a "
                        "folder of images, a video file, or a quoted glob of frames (default: the synthetic video)")
    p.add_argument("--calibration-split", default="val", help="split of a --calibration-data dataset root")
    p.add_argument("--calibration-sequences", type=int, default=4, help="segments for int8 calibration")
    p.add_argument("--calibration-frames", type=int, default=8, help="consecutive frames per calibration segment")
    p.add_argument("--parity-sequences", type=int, default=2, help="segments for the parity checks")
    p.add_argument("--parity-frames", type=int, default=8, help="consecutive frames per parity segment")
    p.add_argument("--threads", type=int, default=2, help="LiteRT/ONNX Runtime threads for parity runs")
    p.add_argument("--no-memory-check", action="store_true",
                   help="export even when the up-front memory estimate exceeds the memory available")
    add_tf_logs_flag(p)
    return p

def main(argv=None):
    """Console entry point: parses (no TensorFlow yet), then runs `stt_keras.export.cli.run_export`."""
    run_command("stt-export", build_parser(), argv, "stt_keras.export.cli", "run_export")


if __name__ == "__main__":
    main()
