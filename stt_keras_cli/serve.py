"""The gRPC server and client of `stt_keras.export.serve`, run quiet: `python -m stt_keras_cli.serve server|client ...`.

The same commands and options as `python -m stt_keras.export.serve` (docs/serving.md), started
the way the stt-* commands start: the native libraries' log lines are filtered out before
TensorFlow loads (stt_keras_cli/quiet.py), so only the server's and client's own lines are
printed. `--tf-logs` (anywhere on the line) shows TensorFlow's lines again.
"""

import sys

from stt_keras_cli import prepare_environment, quiet_python_logs


def main(argv=None):
    args = list(sys.argv[1:] if argv is None else argv)
    tf_logs = "--tf-logs" in args
    args = [a for a in args if a != "--tf-logs"]
    prepare_environment(tf_logs, filter_fds=argv is None)
    from stt_keras.export import serve  # TensorFlow loads here, after the filter

    quiet_python_logs(tf_logs)
    return serve.main(args)


if __name__ == "__main__":
    sys.exit(main())
