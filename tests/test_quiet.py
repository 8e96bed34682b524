"""Quiet commands: only the project's own lines reach the user unless --tf-logs asks for more.

The native libraries (TensorFlow, absl, oneDNN, LiteRT, ONNX Runtime) write their log
lines straight to file descriptors 1 and 2; stt_keras_cli/quiet.py filters both.
The whole commands are run quiet by tests/test_docs.py (the documented walkthrough).
"""

import json
import os
import subprocess
import sys
import textwrap

import pytest

from stt_keras_cli.quiet import is_noise

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# No TF_CPP_MIN_LOG_LEVEL from the test suite: the commands must be quiet on their own.
CLEAN_ENV = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL", "TF_ENABLED_DEVICE_TYPES",
                                                             "GRPC_VERBOSITY")}
CLEAN_ENV["PYTHONUNBUFFERED"] = "1"

NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1796331595.351291   18559 port.cc:153] oneDNN custom operations are on. You may see slightly "
    "different numerical results due to floating-point round-off errors from different computation orders.",
    "I0000 00:00:1796331595.375914   18559 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will "
    "not be used.",
    "E0000 00:00:1796331666.521309   18559 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed "
    "call to cuInit: UNKNOWN ERROR (303)",
    "INFO: Failed to load OpenCL library",
    "fully_quantize: 0, inference_type: 6, input_inference_type: FLOAT32, output_inference_type: FLOAT32",
    "INFO: Created TensorFlow Lite XNNPACK delegate for CPU.",
    "INFO: [accelerator_registry.cc:54] RegisterAccelerator: ptr=0x55d04fd06e60, name=CpuAccelerator",
    "WARNING: [npu_registry.cc:34] NPU accelerator could not be loaded and registered: kLiteRtStatusErrorNotFound.",
    "\x1b[0;93m2026-12-03 20:46:59.900696389 [W:onnxruntime:, graph.cc:5809 CleanUnusedInitializersAndNodeArgs] "
    "Removing initializer 'scales__292'.\x1b[m",
    "[mov,mp4,m4a,3gp,3g2,mj2 @ 0x5577a4b0b440] moov atom not found",
]
KEPT = [
    "stt-export: stt_float32.tflite: 3.70 MB, labels agree 100.00% (7 s)",
    "Traceback (most recent call last):",
    "E0000 00:00:1796331666.521309   18559 some_op.cc:52] a real error stays visible",
    "Epoch 1/2",
]


@pytest.mark.parametrize("line", NOISE)
def test_native_log_lines_are_noise(line):
    assert is_noise(line)


@pytest.mark.parametrize("line", KEPT)
def test_everything_else_passes(line):
    assert not is_noise(line)


def _run(code, **kwargs):
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                          env=CLEAN_ENV, timeout=300, **kwargs)


def test_the_filter_drops_native_lines_on_both_descriptors_and_keeps_order():
    noise = "\n".join(NOISE[:4]) + "\n"
    result = _run(f"""
        import os, sys
        from stt_keras_cli.quiet import filter_native_logs
        filter_native_logs()
        os.write(2, {noise.encode()!r})
        os.write(1, b"INFO: Failed to load OpenCL library\\nresult 1\\n")
        print("result 2")
        sys.stderr.write("stt-train: one\\n")
        os.write(2, b"stt-train: two\\nno newline at the end")
    """)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "result 1\nresult 2\n"
    assert result.stderr == "stt-train: one\nstt-train: two\nno newline at the end"


def test_the_filter_outlives_a_ctrl_c_to_the_process_group():
    """A terminal's Ctrl-C reaches the whole process group, the filter too: the command's line about it gets through."""
    result = _run("""
        import os, signal, sys, time
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a background job inherits SIGINT ignored
        from stt_keras_cli.quiet import filter_native_logs
        filter_native_logs()
        try:
            os.killpg(0, signal.SIGINT)
            time.sleep(30)
        except KeyboardInterrupt:
            time.sleep(0.5)  # a filter killed by the same Ctrl-C would be gone by now
            sys.stderr.write("stt-train: stopped by Ctrl-C\\n")
            raise SystemExit(130)
    """, start_new_session=True)
    assert result.returncode == 130 and result.stderr == "stt-train: stopped by Ctrl-C\n", result.stderr


def test_a_crash_still_shows_its_message():
    result = _run("""
        import os, sys
        from stt_keras_cli.quiet import filter_native_logs
        filter_native_logs()
        sys.stderr.write("stt-eval: about to crash\\n")
        sys.stderr.flush()
        os.abort()
    """)
    assert result.returncode != 0
    assert result.stderr == "stt-eval: about to crash\n"


def test_tensorflow_starts_silently_even_when_keras_comes_first():
    """What a command does before its work: the environment, then Keras (TensorFlow), then the library; one op."""
    result = _run("""
        from stt_keras_cli import prepare_environment, quiet_python_logs
        prepare_environment()
        import keras
        import stt_keras
        quiet_python_logs()
        import tensorflow as tf
        print(float(tf.reduce_sum(tf.ones([2, 2]))))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "4.0\n"
    assert result.stderr == ""


def test_tf_logs_shows_them_again():
    result = _run("""
        from stt_keras_cli import prepare_environment
        prepare_environment(tf_logs=True)
        import os
        os.write(2, b"I0000 00:00:1.5   1 port.cc:153] a native line\\n")
    """)
    assert result.stderr == "I0000 00:00:1.5   1 port.cc:153] a native line\n"


def test_importing_the_library_leaves_the_environment_alone():
    """A library does not choose the process's devices or logs: `import stt_keras` (its data, training and export
    packages and the devices module too) changes no environment variable. The libraries below it are imported
    first (TensorFlow and OpenCV set variables of their own), then the library, then one op runs."""
    result = _run("""
        import json, os
        import cv2, keras, keras_hub, numpy, tensorflow as tf
        before = dict(os.environ)
        import stt_keras, stt_keras.data, stt_keras.devices, stt_keras.export, stt_keras.training
        assert float(tf.reduce_sum(tf.ones([2, 2]))) == 4.0
        after = dict(os.environ)
        print(json.dumps({k: [before.get(k), after.get(k)] for k in set(before) | set(after)
                          if before.get(k) != after.get(k)}))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads(result.stdout.splitlines()[-1]) == {}
    assert "TF_ENABLED_DEVICE_TYPES" not in CLEAN_ENV  # so the library had the chance to set it


def test_the_commands_set_up_the_devices_before_tensorflow_loads():
    """What the library no longer does, the commands do: without a CUDA driver, TF_ENABLED_DEVICE_TYPES=CPU before
    TensorFlow loads (none of its device factories is GPU); one the user set is kept."""
    from stt_keras_cli import load_library_module

    no_driver = not load_library_module("devices", "devices.py").cuda_driver_present()
    code = """
        import os
        from stt_keras_cli import prepare_environment
        prepare_environment(filter_fds=False)
        print(os.environ.get("TF_ENABLED_DEVICE_TYPES"))
    """
    assert _run(code).stdout == ("CPU\n" if no_driver else "None\n")
    kept = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                          env={**CLEAN_ENV, "TF_ENABLED_DEVICE_TYPES": "CPU,GPU"}, timeout=300)
    assert kept.stdout == "CPU,GPU\n", kept.stderr


PYTHON_USER = """
    import keras                       # a Python user's own import order: TensorFlow loads here
    import stt_keras
    import tensorflow as tf
    print(float(tf.reduce_sum(tf.ones([2, 2]))), "done")    # the first op
"""


@pytest.mark.slow  # three TensorFlow starts: ~30 s quiet, minutes on a loaded machine
def test_a_python_user_sets_the_two_variables_the_docs_name():
    """The library sets nothing, so a Python program gets TensorFlow's own start-up: on a machine without a CUDA
    driver the failing cuInit probe. docs/models.md names the two variables to set before the first import:
    TF_ENABLED_DEVICE_TYPES=CPU (no probe) and TF_CPP_MIN_LOG_LEVEL=3 (then only TensorFlow's INFO lines from
    before its logging starts are left: no error, no warning)."""
    from stt_keras.devices import cuda_driver_present

    def run(**env):
        result = subprocess.run([sys.executable, "-c", textwrap.dedent(PYTHON_USER)], capture_output=True, text=True,
                                cwd=ROOT, env={**CLEAN_ENV, **env}, timeout=300)
        assert result.returncode == 0 and result.stdout.endswith("done\n"), result.stderr[-3000:]
        return result.stderr

    plain = run()
    if not cuda_driver_present():
        assert "failed call to cuInit" in plain  # what the docs' lines are for (no driver: this machine)
    no_probe = run(TF_ENABLED_DEVICE_TYPES="CPU")
    assert "cuInit" not in no_probe and "Device factory 'GPU' disabled by TF_ENABLED_DEVICE_TYPES" in no_probe
    silenced = run(TF_ENABLED_DEVICE_TYPES="CPU", TF_CPP_MIN_LOG_LEVEL="3")
    left = [line for line in silenced.splitlines() if line.strip()]
    assert "cuInit" not in silenced
    assert all(is_noise(line) and not line.startswith(("E", "W0")) for line in left), left


# ------------------------------------------------------------------ make quickstart's python -m steps
def test_the_synthetic_video_step_is_quiet(tmp_path):
    """make quickstart's `python -m stt_keras_cli.synthetic_video`: the library (and TensorFlow) load after the
    command set up its environment, as the stt-* commands do: its one line on stdout, nothing on stderr."""
    video = tmp_path / "demo" / "input.mp4"
    result = subprocess.run([sys.executable, "-m", "stt_keras_cli.synthetic_video", "--out", str(video), "--frames", "4",
                             "--size", "32x64"], capture_output=True, text=True, cwd=ROOT, env=CLEAN_ENV, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    assert result.stdout == f"wrote 4 frames of 32x64 synthetic video to {video}\n"
    import cv2

    capture = cv2.VideoCapture(str(video))
    assert int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) == 4 and int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)) == 64
    capture.release()
    bad = subprocess.run([sys.executable, "-m", "stt_keras_cli.synthetic_video", "--out", str(video), "--frames", "0"],
                         capture_output=True, text=True, cwd=ROOT, env=CLEAN_ENV, timeout=300)
    assert bad.returncode == 2 and bad.stderr.splitlines()[-1].startswith(
        "python -m stt_keras_cli.synthetic_video: error: argument --frames: must be at least 1")


def test_streaming_traces_without_an_autograph_warning():
    """StreamingSegmenter traces the model's step with AutoGraph, which reaches the native kernels' loader (it makes
    the cache folder: os.makedirs): it runs as plain Python, so no "AutoGraph could not transform" warning (the
    quickstart report printed one). A fresh interpreter, so the loader runs during the trace; no log filter."""
    result = _run("""
        import numpy as np
        from stt_keras import StreamingSegmenter
        from stt_keras.models import STTSegmenter
        model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=3, top_ratio=0.5)
        stream = StreamingSegmenter(model)
        for t in range(2):
            print(stream.step(np.full((32, 32, 3), 100 * t, np.uint8), return_labels=True).shape)
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout == "(32, 32)\n(32, 32)\n"
    assert "AutoGraph" not in result.stderr, result.stderr[-3000:]


@pytest.mark.slow  # two reports of a tiny untrained model: ~20 s
def test_the_report_step_is_quiet(tmp_path):
    """make quickstart's last step, `python -m stt_keras_cli.report`, on a run folder with just the STT model: the
    report on stdout, nothing on stderr; with --tf-logs TensorFlow's own lines come back, but no AutoGraph warning."""
    from stt_keras.models import STTSegmenter

    runs = tmp_path / "quickstart"
    (runs / "stt_psp_tiny").mkdir(parents=True)
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=6)
    model.build()
    model.save(str(runs / "stt_psp_tiny" / "last.keras"))
    command = [sys.executable, "-m", "stt_keras_cli.report", "--runs", str(runs)]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=CLEAN_ENV, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stderr == ""
    assert result.stdout.endswith(f"report: {runs / 'report.md'}\n") and (runs / "figures" / "training.png").is_file()
    logs = subprocess.run(command + ["--tf-logs"], capture_output=True, text=True, cwd=ROOT, env=CLEAN_ENV, timeout=600)
    assert logs.returncode == 0, logs.stderr[-3000:]
    assert "AutoGraph" not in logs.stderr + logs.stdout, logs.stderr[-3000:]


def test_benchmarks_set_up_the_devices_before_tensorflow_loads():
    """The benchmarks are programs too: those that keep TensorFlow's errors visible (a log level below 3) tell it the
    devices as the commands do (stt_keras/devices.py) before their first import of TensorFlow, Keras or stt_keras,
    or the library's import would no longer keep the cuInit error of a machine without a CUDA driver away."""
    import ast
    import glob

    missing = []
    for path in sorted(glob.glob(os.path.join(ROOT, "benchmarks", "*.py"))):
        text = open(path).read()
        if 'setdefault("TF_CPP_MIN_LOG_LEVEL", "3")' in text:
            continue
        tree = ast.parse(text)
        first_tf = min((node.lineno for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                        and any(name.split(".")[0] in ("tensorflow", "keras", "stt_keras")
                                for name in ([node.module] if isinstance(node, ast.ImportFrom)
                                             else [a.name for a in node.names]))), default=None)
        setup = [node.lineno for node in tree.body if "cpu_only_without_cuda_driver" in ast.unparse(node)]
        if first_tf is not None and not (setup and setup[0] < first_tf):
            missing.append(os.path.basename(path))
    assert missing == []
