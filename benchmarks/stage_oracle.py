"""Which stage can time repair? An oracle on a per-frame SegFormer (issue 21: where the STT sits).

On every degraded frame of the held-out synthetic video that follows a clean frame, some of the
MiT's stage maps are replaced by those of the last clean frame (what a perfect temporal block
could bring back, up to motion), the decoder runs on the mix, and the degraded frames are scored.
A stage whose replacement does not move the score is one the decoder does not read for what a
damaged frame loses: a temporal block there cannot help, however well it learns.

Run: python benchmarks/stage_oracle.py MODEL.keras [--size 128x256] [--sequences 6]
(MODEL: a per-frame `segformer_b0`-style model, e.g. `benchmarks/pretrained_accuracy.py`'s `cont`.)
"""

import argparse
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from stt_keras_cli import load_library_module  # noqa: E402  (TensorFlow-free)

load_library_module("devices", "devices.py").cpu_only_without_cuda_driver()  # no CUDA probe without a driver

import numpy as np  # noqa: E402

from stt_keras import load_model  # noqa: E402
from stt_keras.metrics import MeanIoU  # noqa: E402
from stt_keras.training.evaluate import synthetic_sequences  # noqa: E402
from stt_keras.utils.sizes import parse_size  # noqa: E402

VARIANTS = {"none": [], "4": ["P4"], "3": ["P3"], "2": ["P2"], "2+3+4": ["P2", "P3", "P4"], "1": ["P1"],
            "all four": ["P1", "P2", "P3", "P4"]}


def stage_maps(encoder, frame):
    """{"P1".."P4": map} of one frame [1, H, W, 3]."""
    maps = encoder(frame)
    named = {k: v for k, v in maps.items() if k != "features"}
    named[f"P{encoder.features_stage}"] = maps["features"]
    return named


def oracle(model, sequences, num_classes):
    """{variant: mIoU on the degraded frames that follow a clean one}."""
    encoder, decoder, stage = model.encoder, model.decoder, model.encoder.features_stage
    scores = {name: MeanIoU(num_classes) for name in VARIANTS}
    for frames, labels, masks in sequences:
        maps = [stage_maps(encoder, frames[t:t + 1]) for t in range(len(frames))]
        last_clean = None
        for t in range(len(frames)):
            if not masks[t].any():
                last_clean = t
                continue
            if last_clean is None or t not in labels:
                continue
            for name, replaced in VARIANTS.items():
                mixed = {k: (maps[last_clean][k] if k in replaced else v) for k, v in maps[t].items()}
                features = mixed.pop(f"P{stage}")
                logits = decoder(features, mixed, output_size=frames.shape[1:3])
                scores[name].update_state(labels[t][None], np.argmax(logits, -1))
    return {name: float(score.result()) for name, score in scores.items()}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a per-frame SegFormer .keras model (stt-train --preset segformer_b0)")
    p.add_argument("--size", default="128x256", help="frame size HxW of the held-out synthetic video")
    p.add_argument("--sequences", type=int, default=6, help="held-out sequences of 30 frames")
    args = p.parse_args()
    try:
        size = parse_size(args.size, "--size")
    except ValueError as error:
        p.error(str(error))
    if not os.path.isfile(args.model):
        p.error(f"no model file {args.model}")
    model = load_model(args.model, compile=False)
    if not hasattr(model.encoder, "features_stage"):
        p.error(f"{args.model} is not a SegFormer model (its encoder has no MiT stages)")
    results = oracle(model, synthetic_sequences(args.sequences, size=size), model.num_classes)
    print("| stage maps taken from the last clean frame | " + " | ".join(VARIANTS) + " |")
    print("|---|" + "---|" * len(VARIANTS))
    print("| mIoU on those degraded frames | " + " | ".join(f"{100 * results[k]:.1f}" for k in VARIANTS) + " |")


if __name__ == "__main__":
    main()
