"""A small generated dataset in the folder layout of docs/own_data.md: try the own-data path before your data.

    python -m stt_keras_cli.example_data --out data/mine

writes data/mine/{train,val}/{frames,labels}/SEQUENCE/frame_NNN.png (3 classes,
64x128 frames, a label on every frame, the top row 255 = ignored) and the
classes file data/mine/classes.txt (the class names: --classes). tests/test_own_data.py runs the whole path
on it. It lives with the commands because it needs only NumPy and OpenCV: it
writes the data at once, without starting TensorFlow.
"""

import os

import cv2
import numpy as np

H, W = 64, 128
NAMES = ["asphalt", "red box", "green ball"]
COLOURS = [[90, 90, 90], [230, 40, 40], [40, 200, 60]]


def scene(t, seq, rng):
    """(RGB frame, label) of frame t: a textured background (0), a moving box (1) and a moving disc (2)."""
    frame = np.empty((H, W, 3), np.float32)
    frame[:] = 110 + 20 * np.sin(np.arange(W) / 7.0 + seq)[None, :, None]
    label = np.zeros((H, W), np.uint8)
    x = 8 + (6 * t + 17 * seq) % (W - 40)
    frame[16:44, x:x + 26] = [200, 50, 40]
    label[16:44, x:x + 26] = 1
    cy, cx = 36 + (3 * t) % 12, (W - 24 - 5 * t - 11 * seq) % (W - 20) + 10
    ys, xs = np.mgrid[0:H, 0:W]
    disc = (ys - cy) ** 2 + (xs - cx) ** 2 <= 10 ** 2
    frame[disc] = [50, 190, 70]
    label[disc] = 2
    label[0, :] = 255  # the top row is "don't care": ignored by training and evaluation
    frame += rng.normal(0, 6, frame.shape)
    return np.clip(frame, 0, 255).astype(np.uint8), label


def write_dataset(root, splits=(("train", 2), ("val", 1)), frames=8):
    """ROOT/SPLIT/frames/SEQ/frame_NNN.png and ROOT/SPLIT/labels/SEQ/frame_NNN.png, every frame labelled."""
    rng = np.random.default_rng(0)
    for split, sequences in splits:
        for s in range(sequences):
            seq = f"{split}_walk{s}"
            for folder in ("frames", "labels"):
                os.makedirs(os.path.join(root, split, folder, seq), exist_ok=True)
            for t in range(frames):
                image, label = scene(t, s + (10 if split == "val" else 0), rng)
                cv2.imwrite(os.path.join(root, split, "frames", seq, f"frame_{t:03d}.png"), image[..., ::-1])
                cv2.imwrite(os.path.join(root, split, "labels", seq, f"frame_{t:03d}.png"), label)
    return root


def write_classes_file(path):
    """The classes file of the dataset: one `name R G B` line per class, in class-index order."""
    with open(path, "w") as f:
        f.write("# class index order; ignore = 255 is not a class\n")
        for name, colour in zip(NAMES, COLOURS):
            f.write(f"{name} {colour[0]} {colour[1]} {colour[2]}\n")
    return path


write_labels_file = write_classes_file  # its earlier name


def main(argv=None):
    import argparse

    parser = argparse.ArgumentParser(prog="python -m stt_keras_cli.example_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="dataset folder to write (e.g. data/mine)")
    parser.add_argument("--frames", type=int, default=8, help="frames per sequence (default: 8)")
    args = parser.parse_args(argv)
    if os.path.exists(args.out) and os.listdir(args.out):
        parser.error(f"--out {args.out} exists and is not empty; nothing was written.")
    write_dataset(args.out, frames=args.frames)
    write_classes_file(os.path.join(args.out, "classes.txt"))
    print(f"wrote a 3-class dataset ({H}x{W} frames; train: 2 sequences, val: 1, {args.frames} frames each) to "
          f"{args.out}, and its classes file {os.path.join(args.out, 'classes.txt')}")


if __name__ == "__main__":
    main()
