"""The command lines of stt-keras (stt-train, stt-eval, stt-export; the python -m modules serve, report,
synthetic_video and example_data), parsed before TensorFlow is imported.

`stt-train --help` answers at once, and a bad argument is refused at once: each
command's parser lives here, in modules that import neither TensorFlow nor
Keras nor `stt_keras` (whose import loads TensorFlow). After parsing, `main`
sets up the environment TensorFlow reads when it starts (quiet logs unless
`--tf-logs`; the CPU only when there is no CUDA driver) and only then imports
the code that runs the command.
"""

import argparse
import importlib
import importlib.util
import os
import sys


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the description's line breaks (examples stay pasteable) and shows each option's default.

    An option's default is added as "(default: X)" unless its help already says
    it, or it is None or False (no default to tell).
    """

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        if action.nargs == 0:  # store_true and friends
            return text
        default = action.default
        if isinstance(default, (tuple, list)):
            default = "x".join(str(v) for v in default) if len(default) == 2 and all(isinstance(v, int) for v in default) \
                else ",".join(str(v) for v in default)
        return f"{text} (default: {default})".strip()


class OldFlag(argparse.Action):
    """A flag's earlier name, still accepted: stores into the new flag's `dest` and says so in one stderr line.

    `p.add_argument("--labels", dest="classes", action=OldFlag, new="--classes", help=argparse.SUPPRESS)`
    """

    def __init__(self, option_strings, dest, new, **kwargs):
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog}: warning: {option_string} is named {self.new} now; {option_string} will stop working.",
              file=sys.stderr)
        setattr(namespace, self.dest, values)


def library_file(*parts):
    """The path of a file inside the installed `stt_keras` package, found without importing it."""
    spec = importlib.util.find_spec("stt_keras")  # a top-level package: found, not executed
    return os.path.join(os.path.dirname(spec.origin), *parts)


def load_library_module(name, *parts):
    """Executes a TensorFlow-free module of the library (plain definitions) by path, without its package.

    For the commands and the edge demo, which must not import `stt_keras` (it loads
    TensorFlow) but share its plain modules: utils/sizes.py, devices.py, utils/progress.py, the presets.
    """
    spec = importlib.util.spec_from_file_location(f"stt_keras_cli._{name}", library_file(*parts))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def frame_size(value):
    """argparse `type=` of a frame size HxW (stt_keras/utils/sizes.py `parse_frame_size`, loaded without the library)."""
    sizes = load_library_module("sizes", "utils", "sizes.py")
    try:
        return sizes.parse_frame_size(value)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def preset_names():
    """The built-in preset names (stt_keras/models/stt/stt_presets.py, the one registry), sorted."""
    return sorted(load_library_module("presets", "models", "stt", "stt_presets.py").PRESETS)


def add_tf_logs_flag(parser):
    parser.add_argument("--tf-logs", action="store_true",
                        help="also show TensorFlow's, absl's and LiteRT's own log lines (hidden by default)")


def prepare_environment(tf_logs=False, filter_fds=True):
    """Before TensorFlow is imported: quiet native logs unless `tf_logs`, and the CPU only without a CUDA driver.

    `filter_fds`: also filter fds 1 and 2 (stt_keras_cli/quiet.py) for the rest of the
    process; the commands do when run from a command line (not when a caller passes
    `argv`, e.g. a test in its own process). A variable the user set is left as it is.
    """
    if not tf_logs:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # C++ INFO and WARNING lines (absl, XLA, oneDNN)
        os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
        if filter_fds:
            from stt_keras_cli.quiet import filter_native_logs

            filter_native_logs()
        import warnings

        # LiteRT's runtime is ai-edge-litert when installed; tf.lite's interpreter is only the fallback.
        warnings.filterwarnings("ignore", message=r".*tf\.lite\.Interpreter is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*Warning: tf\.lite\.Interpreter.*")
        warnings.formatwarning = _own_warnings_on_one_line(warnings.formatwarning)
    devices = load_library_module("devices", "devices.py")
    devices.cpu_only_without_cuda_driver()


def _own_warnings_on_one_line(formatwarning):
    """The project's own warnings ("stt_keras: ...") as their message alone, without file, line and source."""

    def format(message, category, filename, lineno, line=None):
        if str(message).startswith(("stt_keras:", "stt-")):
            return f"{message}\n"
        return formatwarning(message, category, filename, lineno, line)

    return format


def quiet_python_logs(tf_logs=False):
    """After TensorFlow is imported: its Python logger and absl only report errors (unless `tf_logs`)."""
    if tf_logs:
        return
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        from absl import logging as absl_logging

        absl_logging.set_verbosity(absl_logging.ERROR)
    except ImportError:
        pass


def run_command(prog, parser, argv, module, function, to_input=None):
    """A console entry point: parse (no TensorFlow yet), quiet the logs, then run `module.function`
    on the parsed arguments (or on `to_input(args)`) under `run_cli`, which turns errors into one line."""
    args = parser.parse_args(argv)
    prepare_environment(args.tf_logs, filter_fds=argv is None)
    try:  # a Ctrl-C while TensorFlow loads is one line too (run_cli handles it afterwards)
        from stt_keras.utils.errors import run_cli

        target = getattr(importlib.import_module(module), function)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted (Ctrl-C).", file=sys.stderr, flush=True)
        raise SystemExit(130) from None
    quiet_python_logs(args.tf_logs)
    run_cli(prog, target, to_input(args) if to_input else args)


def stdout_is_terminal():
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False
