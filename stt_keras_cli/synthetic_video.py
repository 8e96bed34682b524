"""Writes the built-in synthetic video to a file, as input for the edge demo and the web demo.

    python -m stt_keras_cli.synthetic_video --out demo.mp4 --frames 60

The video of stt_keras.data.synthetic (`write_video`): by default sequence 0 of
the seed stt-eval holds out, at 128x256 and 10 frames/s (.mp4: mp4v; .mkv:
lossless FFV1). Run the way the stt-* commands run: parsed first, then the
library (and TensorFlow with it) loads with its native log lines filtered out
(`--tf-logs` shows them). `python -m stt_keras.data.synthetic` is the same command.
"""

import argparse

from stt_keras_cli import HelpFormatter, add_tf_logs_flag, frame_size, run_command

PROG = "python -m stt_keras_cli.synthetic_video"


def positive_int(value):
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return number


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, help="the video file to write (.mp4, or .mkv for lossless FFV1)")
    p.add_argument("--frames", type=positive_int, default=60, help="number of frames")
    p.add_argument("--size", type=frame_size, default=(128, 256), help="frame size HxW")
    p.add_argument("--seed", type=int, default=1000, help="the synthetic video's seed (1000: stt-eval's held-out one)")
    add_tf_logs_flag(p)
    return p


def main(argv=None):
    """Console entry point: parses (no TensorFlow yet), then runs `stt_keras.data.synthetic.write_video_command`."""
    run_command(PROG, build_parser(), argv, "stt_keras.data.synthetic", "write_video_command")


if __name__ == "__main__":
    main()
