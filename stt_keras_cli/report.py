"""The quickstart report (`make quickstart`'s last step): results table, plots and stills of a finished run folder.

    python -m stt_keras_cli.report --runs runs/quickstart

writes <runs>/report.md with PNGs in <runs>/figures/ (stt_keras.training.report says
what it reads). Run the way the stt-* commands run: parsed first, then the library
(and TensorFlow with it) loads with its native log lines filtered out (`--tf-logs`
shows them). `python -m stt_keras.training.report` is the same command.
"""

import argparse

from stt_keras_cli import HelpFormatter, add_tf_logs_flag, run_command

PROG = "python -m stt_keras_cli.report"


def build_parser():
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--runs", default="runs/quickstart", help="the quickstart's run folder")
    add_tf_logs_flag(p)
    return p


def main(argv=None):
    """Console entry point: parses (no TensorFlow yet), then runs `stt_keras.training.report.run`."""
    run_command(PROG, build_parser(), argv, "stt_keras.training.report", "run")


if __name__ == "__main__":
    main()
