"""Is the input pipeline the bottleneck? Steps/s of the tf.data pipeline alone vs the training step.

Side by side in one process, on the built-in synthetic video (clips of T+1 frames,
augmented) and on a Cityscapes-layout tree of PNG files written to a temporary
folder (decoding included): batches/s the pipeline delivers alone, and training
steps/s of the model fed from it.

Run: python benchmarks/pipeline.py [--preset stt_psp_tiny] [--crop 128x128] [--batch-size 4]
"""

import argparse
import os
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
from stt_keras_cli import load_library_module  # noqa: E402  (TensorFlow-free)

load_library_module("devices", "devices.py").cpu_only_without_cuda_driver()  # no CUDA probe without a driver
sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import cv2  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

from stt_keras.models import STTSegmenter  # noqa: E402
from stt_keras.utils.sizes import parse_size  # noqa: E402
from stt_keras import data as data_lib  # noqa: E402
from stt_keras.metrics import MeanIoU  # noqa: E402


def batches_per_second(ds, n):
    it = iter(ds)
    next(it)
    start = time.perf_counter()
    for _ in range(n):
        next(it)
    return n / (time.perf_counter() - start)


def write_cityscapes_tree(root, video, snippets):
    """PNG frames and labelIds in the Cityscapes layout, from synthetic sequences."""
    ids = np.array([7, 8, 11, 21, 23, 26, 24], np.uint8)  # synthetic class -> a Cityscapes labelId
    for s in range(snippets):
        frames, labels = video.sequence(s)
        city_dir = os.path.join(root, "leftImg8bit_sequence", "train", "city")
        os.makedirs(city_dir, exist_ok=True)
        for t in range(20):
            cv2.imwrite(os.path.join(city_dir, f"city_{s:06d}_{t:06d}_leftImg8bit.png"), frames[t][..., ::-1])
        gt_dir = os.path.join(root, "gtFine", "train", "city")
        os.makedirs(gt_dir, exist_ok=True)
        cv2.imwrite(os.path.join(gt_dir, f"city_{s:06d}_000019_gtFine_labelIds.png"), ids[labels[19]])


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="stt_psp_tiny")
    p.add_argument("--size", default="128x256", type=parse_size)
    p.add_argument("--crop", default="128x128", type=parse_size)
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    (h, w), crop = args.size, args.crop
    model = STTSegmenter.from_preset(args.preset, num_classes=19)
    t = model.num_key_frames
    video = data_lib.SyntheticVideo(8, 30, h, w, seed=0)
    synthetic = data_lib.make_synthetic_dataset(video, t, args.batch_size, crop, True, 0)
    with tempfile.TemporaryDirectory() as root:
        write_cityscapes_tree(root, video, 8)
        samples = data_lib.cityscapes_samples(root, "train", t)
        files = data_lib.make_file_dataset(samples, 19, args.batch_size, crop, True, 0, "cityscapes")
        model.compile(keras.optimizers.SGD(0.01, momentum=0.9),
                      keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
                      metrics=[MeanIoU(19)])
        print(f"{os.cpu_count()} cores; {args.preset}, T={t}, batch {args.batch_size}, crop {crop}")
        print(f"{'source':28s} {'pipeline batches/s':>19s} {'train steps/s':>14s} {'pipeline / train':>17s}")
        for name, ds in (("synthetic (in memory)", synthetic), ("cityscapes PNG files", files)):
            pipe = batches_per_second(ds, args.steps * 3)
            model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0)  # warm-up and tracing
            start = time.perf_counter()
            model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)
            train = args.steps / (time.perf_counter() - start)
            print(f"{name:28s} {pipe:19.1f} {train:14.2f} {pipe / train:16.1f}x", flush=True)


if __name__ == "__main__":
    main()
