"""What does NSM query selection pick? Boundaries, degraded regions, or large feature norms?

For a trained model's encoder features on held-out synthetic sequences, and for each scoring
(the paper's raw dot products, and cosine / tau for several temperatures), selects the top
`top_ratio` points and reports:
- boundary recall: share of feature-map points whose 8x8 pixel cell holds a class boundary
  that are selected (the paper's intent: boundaries and small objects are "complex");
- degraded recall: the same for cells that a degradation burst touched (where time should help);
- base rate: top_ratio (what a random selection would score on both);
- Spearman correlation of the score with the squared feature norm |q|^2.

Run: python benchmarks/nsm_selection.py --model runs/quickstart/stt_psp_tiny/last.keras
         [--temperatures 0.03 0.1 0.3 1] [--sequences 6]
"""

import argparse
import os
import sys

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from stt_keras_cli import load_library_module  # noqa: E402  (TensorFlow-free)

load_library_module("devices", "devices.py").cpu_only_without_cuda_driver()  # no CUDA probe without a driver
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import tensorflow as tf  # noqa: E402

from stt_keras import load_model  # noqa: E402
from stt_keras.layers import nsm  # noqa: E402
from stt_keras.data.synthetic import SyntheticVideo  # noqa: E402


def cell_flags(labels, degraded, h, w):
    """Per feature cell: holds a class boundary / holds a degraded pixel."""
    H, W = labels.shape
    sy, sx = H // h, W // w
    cells = labels[: h * sy, : w * sx].reshape(h, sy, w, sx)
    boundary = cells.min(axis=(1, 3)) != cells.max(axis=(1, 3))
    bad = degraded[: h * sy, : w * sx].reshape(h, sy, w, sx).any(axis=(1, 3))
    return boundary, bad


def spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ra, rb)[0, 1])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True)
    p.add_argument("--temperatures", type=float, nargs="+", default=[0.03, 0.1, 0.3, 1.0])
    p.add_argument("--sequences", type=int, default=6)
    p.add_argument("--top-ratio", type=float, default=None, help="default: the model's")
    p.add_argument("--radius", type=int, default=None, help="default: the model's")
    args = p.parse_args()
    model = load_model(args.model, compile=False)
    stt = model.stt
    radius = args.radius if args.radius is not None else (stt.neighborhood_radius if stt else 3)
    top_ratio = args.top_ratio if args.top_ratio is not None else (stt.top_ratio if stt else 0.5)
    scorings = [("raw dot products (paper)", None)] + [(f"cosine / {t:g}", t) for t in args.temperatures]
    stats = {name: dict(boundary=[], degraded=[], norm=[]) for name, _ in scorings}
    video = SyntheticVideo(args.sequences, 30, 128, 256, seed=1000)
    encode = tf.function(lambda f: model._encode(f, False)[0])
    for i in range(args.sequences):
        frames, labels, degraded = video.sequence(i, with_degradation=True)
        for t in range(0, 30, 3):
            features = encode(tf.constant(frames[t][None]))
            _, h, w, _ = features.shape
            boundary, bad = cell_flags(labels[t], degraded[t], h, w)
            norm2 = tf.reduce_sum(tf.cast(features, tf.float32) ** 2, -1).numpy().reshape(-1)
            for name, temperature in scorings:
                scores = nsm.nsm_score(features, radius, temperature)
                chosen = np.zeros(h * w, bool)
                chosen[nsm.select_top(scores, top_ratio).numpy()[0]] = True
                if boundary.any():
                    stats[name]["boundary"].append(chosen[boundary.reshape(-1)].mean())
                if bad.any():
                    stats[name]["degraded"].append(chosen[bad.reshape(-1)].mean())
                stats[name]["norm"].append(spearman(scores.numpy().reshape(-1), norm2))
    print(f"\n{os.path.basename(args.model)}: r={radius}, top {100 * top_ratio:.0f}% (a random selection "
          f"recalls {100 * top_ratio:.0f}% of any set), {args.sequences} held-out sequences, every 3rd frame\n")
    print("| scoring | boundary recall | degraded-cell recall | Spearman(score, |q|^2) |")
    print("|---|---|---|---|")
    for name, _ in scorings:
        s = stats[name]
        print(f"| {name} | {100 * np.mean(s['boundary']):.1f} | "
              f"{100 * np.mean(s['degraded']) if s['degraded'] else float('nan'):.1f} | {np.mean(s['norm']):.2f} |")


if __name__ == "__main__":
    main()
