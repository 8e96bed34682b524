import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
# The dataset scan's cache (stt_keras/data/scan.py) goes to a folder of this test session, never the user's ~/.cache.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="stt-keras-tests-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], True)


# Tests send real Ctrl-Cs, to pytest itself and to the commands they start. A shell that runs pytest in the
# background (`make test &`, nohup, some CI runners) starts it with SIGINT ignored, and an ignored signal stays
# ignored in every child process: give the session Python's own handler, as an interactive start has.
import signal  # noqa: E402

if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


# Session fixtures shared by the export and edge-demo tests (training and exporting once).
import subprocess  # noqa: E402
import sys  # noqa: E402

import pytest  # noqa: E402

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="session")
def trained_model_path(tmp_path_factory):
    """stt_psp_tiny trained briefly on the synthetic video (int8 parity needs a model that decides)."""
    out = str(tmp_path_factory.mktemp("train") / "run")
    args = ["--preset", "stt_psp_tiny", "--batch-size", "2", "--synthetic-sequences", "4", "--synthetic-size",
            "64x128", "--val-batches", "1", "--verbose", "2", "--steps", "100", "--checkpoint-every", "100", "--out", out,
            # The paper's 50% query selection (the preset has 100%), so exports carry NSM and the top-k mask.
            "--top-ratio", "0.5"]
    result = subprocess.run([sys.executable, "-m", "stt_keras.training.train", *args], env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return os.path.join(out, "last.keras")


@pytest.fixture(scope="session")
def trained_frame_model_path(tmp_path_factory):
    """psp_tiny (per-frame) trained briefly: int8 parity of an untrained model measures ties, not quantization."""
    out = str(tmp_path_factory.mktemp("train_frame") / "run")
    args = ["--preset", "psp_tiny", "--batch-size", "2", "--synthetic-sequences", "4", "--synthetic-size", "64x128",
            "--val-batches", "1", "--verbose", "2", "--steps", "60", "--checkpoint-every", "60", "--out", out]
    result = subprocess.run([sys.executable, "-m", "stt_keras.training.train", *args], env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    return os.path.join(out, "last.keras")


@pytest.fixture(scope="session")
def exported(trained_model_path, tmp_path_factory):
    """Every export of the trained tiny model at 64x128: (folder, export report). Shared by export and edge tests."""
    from stt_keras.export import cli as export_cli

    out = str(tmp_path_factory.mktemp("exports") / "tiny")
    args = export_cli.build_parser().parse_args(
        ["--model", trained_model_path, "--out", out, "--size", "64x128", "--parity-sequences", "2", "--parity-frames", "6",
         "--calibration-sequences", "3", "--calibration-frames", "6"])
    report = export_cli.run_export(args)
    return out, report




@pytest.fixture(scope="session")
def edge_exported(trained_model_path, tmp_path_factory):
    """The trained tiny STT model's dense_masked-form edge exports at 64x128 (float32, float16, int8), with the real
    GPU accelerator's check where a Vulkan device is: (folder, export report). Shared by the GPU accelerator
    tests (the float files) and the web demo tests (float16 and int8, the two a phone runs)."""
    from stt_keras.export import cli as export_cli

    out = str(tmp_path_factory.mktemp("edge_exports") / "stt")
    args = export_cli.build_parser().parse_args(
        ["--model", trained_model_path, "--out", out, "--size", "64x128", "--formats", "tflite", "--forms", "dense_masked",
         "--interfaces", "edge", "--quantizations", "float32,float16,int8", "--gpu-check", "auto",
         "--parity-sequences", "1", "--parity-frames", "4", "--calibration-sequences", "2", "--calibration-frames", "4"])
    return out, export_cli.run_export(args)


@pytest.fixture(scope="session")
def frame_exported(trained_frame_model_path, tmp_path_factory):
    """The trained per-frame psp_tiny's exports at 64x128: TFLite (float32, float16, int8) and ONNX, full and
    edge interfaces, with the GPU accelerator's check where a Vulkan device is: (folder, export report).
    Shared by the export tests and the GPU accelerator tests."""
    from stt_keras.export import cli as export_cli

    out = str(tmp_path_factory.mktemp("frame_exports") / "frame")
    args = export_cli.build_parser().parse_args(
        ["--model", trained_frame_model_path, "--out", out, "--size", "64x128", "--formats", "tflite,onnx",
         "--interfaces", "full,edge", "--quantizations", "float32,float16,int8", "--gpu-check", "auto",
         "--parity-sequences", "1", "--parity-frames", "4", "--calibration-sequences", "1", "--calibration-frames", "3"])
    return out, export_cli.run_export(args)


# `make test` runs on two workers (pytest-xdist, `-n 2 --dist loadgroup`): a test suite is mostly one thread, and
# the machines it runs on have two cores. A fixture runs once per worker, so tests are handed out in groups: every
# test that uses one of the session fixtures above goes to one worker (they train and export once), and every other
# test goes with the rest of its file (module fixtures, such as a server started for a file, run once).
def _uses_session_fixture(item):
    definitions = item._fixtureinfo.name2fixturedefs if hasattr(item, "_fixtureinfo") else {}
    for name in getattr(item, "fixturenames", ()):
        chain = definitions.get(name)
        fixture = chain[-1] if chain else None  # the definition in force; a test file may override one of ours
        if fixture is not None and fixture.scope == "session" and getattr(fixture.func, "__module__", "") == __name__:
            return True
    return False


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the marks
def pytest_collection_modifyitems(config, items):
    if not config.pluginmanager.has_plugin("xdist"):  # -p no:xdist: nothing reads the marks
        return
    for item in items:
        if not item.get_closest_marker("xdist_group"):
            group = "session-fixtures" if _uses_session_fixture(item) else item.nodeid.split("::")[0]
            item.add_marker(pytest.mark.xdist_group(group))
