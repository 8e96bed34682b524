"""Why a float16 export's labels differ from Keras: weight rounding, the top-k selection, logit margins.

A float16 TFLite model stores its weights in float16 and (on a CPU) computes in float32, so
against Keras it differs by the weights' float16 rounding only. This script applies exactly
that rounding to a copy of the model in Keras and streams the export's parity frames through
both (the rounded copy in the dense_masked form, `implementation="dense_masked"`; the reference in the
default form), then splits the label disagreement into its causes:

- selection: points whose top-k membership flips (the score of the k-th and (k+1)-th point
  differ by less than the rounding moves them), where the STT output replaces the feature;
- margins: pixels whose reference top-2 logit margin is below the logit change there
  (near ties: random weights give many).

    .venv/bin/python benchmarks/float16_parity.py --preset stt_psp18 --size 256x512 --frames 3

Correctness numbers only (no timing).
"""

import argparse
import contextlib
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402

from stt_keras.export import calibration  # noqa: E402
from stt_keras.layers import dense_masked  # noqa: E402
from stt_keras.models import STTSegmenter  # noqa: E402
from stt_keras.utils.sizes import parse_size  # noqa: E402


def selection(model, frame, packed, reset):
    """The 0/1 selection mask [h, w] of a step (the points the STT replaces), from the model's pieces."""
    features = tf.cast(model._encode(tf.constant(frame[None]), False)[0], tf.float32)
    if reset:  # a reset step attends to T copies of its own keys
        packed = tf.concat([dense_masked.project_keys(model.stt, features)] * model.num_key_frames, -1)
    if model.stt.top_ratio >= 1.0:
        return np.ones(features.shape[1:3], bool)
    scores = dense_masked.selection_scores(model.stt, features, packed)
    return dense_masked.top_mask(scores, model.stt.top_ratio).numpy()[0, ..., 0] > 0.5


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="stt_psp18")
    p.add_argument("--size", default="256x512")
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--sequences", type=int, default=1)
    p.add_argument("--frames", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default=None, help="a .keras model instead of a random-weight preset")
    p.add_argument("--round-constants", action="store_true",
                   help="also round the dense_masked form's float32 graph constants to float16 (NSM counts, 1/count, "
                        "log count, mask biases), as the float16 converter stores them")
    args = p.parse_args(argv)
    size = parse_size(args.size, "--size")
    if args.model:
        from stt_keras.saving import load_model

        model = load_model(args.model)
        rounded = load_model(args.model)
    else:
        tf.keras.utils.set_random_seed(args.seed)
        model = STTSegmenter.from_preset(args.preset, num_classes=args.classes)
        model(np.zeros((1, model.num_key_frames + 1, *size, 3), np.uint8))
        rounded = STTSegmenter.from_config(model.get_config())
        rounded(np.zeros((1, model.num_key_frames + 1, *size, 3), np.uint8))
    rounded.set_weights([w.astype(np.float16).astype(w.dtype) if w.dtype == np.float32 else w
                         for w in model.get_weights()])
    sequences = calibration.synthetic_frames(*size, args.sequences, args.frames, calibration.EVALUATION_SEED)

    totals = {"pixels": 0, "agree": 0, "points": 0, "selection_flips": 0, "near_tie": 0, "agree_not_near_tie": 0,
              "pixels_not_near_tie": 0, "agree_same_selection": 0, "pixels_same_selection": 0}
    rows = []
    for frames, _ in sequences:
        state = state_r = model.initial_state(1, *size)
        state_r = dense_masked.pack_frames(state_r)
        for t, frame in enumerate(frames):
            reset = tf.constant(t == 0)
            m_ref = selection(model, frame, dense_masked.pack_frames(state), t == 0)
            with _constants_in_float16(args.round_constants):
                m_r = selection(rounded, frame, state_r, t == 0)
            ref, next_state = model.stream_step(tf.constant(frame[None]), state, reset, implementation="sparse")
            with _constants_in_float16(args.round_constants):
                out, next_r = rounded.stream_step(tf.constant(frame[None].astype(np.float32)), state_r,
                                                  tf.constant([1.0 if t == 0 else 0.0]), implementation="dense_masked")
            ref, out = ref.numpy()[0], out.numpy()[0]
            labels_ref, labels = ref.argmax(-1), out.argmax(-1)
            top2 = np.sort(ref, axis=-1)[..., -2:]
            margin = top2[..., 1] - top2[..., 0]
            change = np.abs(out - ref).max(-1)
            near = margin <= 2 * change  # the two top logits can swap
            fh, fw = m_ref.shape
            scale = (size[0] // fh, size[1] // fw)
            flipped = np.kron((m_ref != m_r).astype(np.uint8), np.ones(scale, np.uint8)).astype(bool)
            same = ~_dilate(flipped, 3 * scale[0])  # pixels away from any flipped point's decoder reach
            agree = labels == labels_ref
            rows.append((t, agree.mean(), int((m_ref != m_r).sum()), m_ref.size, near.mean(), float(change.max())))
            totals["pixels"] += agree.size
            totals["agree"] += int(agree.sum())
            totals["points"] += m_ref.size
            totals["selection_flips"] += int((m_ref != m_r).sum())
            totals["near_tie"] += int(near.sum())
            totals["agree_not_near_tie"] += int(agree[~near].sum())
            totals["pixels_not_near_tie"] += int((~near).sum())
            totals["agree_same_selection"] += int(agree[same].sum())
            totals["pixels_same_selection"] += int(same.sum())
            state, state_r = next_state, next_r
    what = "weights and graph constants" if args.round_constants else "weights"
    print(f"{args.model or args.preset} at {size[0]}x{size[1]}, float16-rounded {what} (dense_masked form) vs Keras (default form)")
    print("step | labels agree | selection flips | pixels with top-2 margin <= 2 x logit change | max logit change")
    for t, a, flips, points, near, change in rows:
        print(f"{t:4d} | {100 * a:8.3f}% | {flips:5d} of {points} | {100 * near:6.2f}% | {change:.4f}")
    T = totals
    print(f"labels agree {100 * T['agree'] / T['pixels']:.3f}%; "
          f"on pixels that are not near ties {100 * T['agree_not_near_tie'] / max(1, T['pixels_not_near_tie']):.3f}% "
          f"({100 * T['pixels_not_near_tie'] / T['pixels']:.1f}% of pixels); "
          f"away from flipped selections {100 * T['agree_same_selection'] / max(1, T['pixels_same_selection']):.3f}% "
          f"({100 * T['pixels_same_selection'] / T['pixels']:.1f}% of pixels); "
          f"selection flips {T['selection_flips']} of {T['points']} points")


@contextlib.contextmanager
def _constants_in_float16(active):
    """While active, float32 numpy constants of the dense-masked STT are rounded to float16
    (saturating at +-65504, as the converter does) before they enter the graph."""
    if not active:
        yield
        return
    original = dense_masked.tf.constant

    def rounded(value, *a, **k):
        if isinstance(value, np.ndarray) and value.dtype == np.float32:
            value = np.clip(value, -65504, 65504).astype(np.float16).astype(np.float32)
        return original(value, *a, **k)

    dense_masked.tf.constant = rounded
    try:
        yield
    finally:
        dense_masked.tf.constant = original


def _dilate(mask, radius):
    if not mask.any() or radius <= 0:
        return mask
    pooled = tf.nn.max_pool2d(tf.constant(mask[None, ..., None].astype(np.float32)), 2 * radius + 1, 1, "SAME")
    return pooled.numpy()[0, ..., 0] > 0


if __name__ == "__main__":
    main()
