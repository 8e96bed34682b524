"""stt-export and edge_demo under bad arguments, foreign --out folders, kills, tampered files and SIGTERM (issue 14)."""

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

from stt_keras.utils.errors import UserError
from stt_keras.export import atomic, cli, memory
from tmpfs import can_mount_tmpfs, on_tmpfs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def export_args(model, out, *extra):
    return cli.build_parser().parse_args(["--model", str(model), "--out", str(out), "--size", "64x128", *extra])


@pytest.fixture
def dummy_model(tmp_path):
    """A file where a model would be: every check below must fail before the model is read."""
    path = tmp_path / "runs" / "m" / "last.keras"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"never read")
    return path


# ----------------------------------------------------------- data loss: --out
@pytest.mark.parametrize("argv, message", [
    (["--formats", ""], "no model"),
    (["--formats", ",", "--forms", "dense_masked"], "no model"),
    (["--formats", "tflite", "--forms", "default", "--quantizations", "int8"], "int8"),
    (["--formats", "tflite", "--forms", "default", "--quantizations", "float32,int8"], "int8"),
    (["--formats", "tflite", "--quantizations", ""], "no TFLite model"),
    (["--formats", "onnx", "--forms", ""], "--forms"),
    (["--size", "0x0"], "--size"),
    (["--size=-64x128"], "--size"),
    (["--parity-sequences", "0"], "--parity-sequences"),
    (["--threads", "0"], "--threads"),
])
def test_arguments_that_write_no_model_are_refused_before_touching_disk(dummy_model, tmp_path, argv, message):
    out = tmp_path / "exports" / "good"
    out.mkdir(parents=True)
    (out / "stt_float32.tflite").write_bytes(b"the previous good export")
    atomic.write_manifest(str(out))
    before = sorted(os.listdir(out))
    args = cli.build_parser().parse_args(["--model", str(dummy_model), "--out", str(out), *argv])
    with pytest.raises(UserError, match=message) as error:
        cli.run_export(args)
    assert error.value.code == 2
    assert sorted(os.listdir(out)) == before and sorted(os.listdir(out.parent)) == ["good"]


def test_foreign_out_folders_are_refused_and_kept(dummy_model, tmp_path, monkeypatch):
    run_folder = dummy_model.parent
    (run_folder / "best.keras").write_bytes(b"x")
    (run_folder / "config.json").write_text("{}")
    user = tmp_path / "mine"
    user.mkdir()
    (user / "thesis.tex").write_text("do not delete")
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "stt_float32.tflite").write_bytes(b"model")
    atomic.write_manifest(str(earlier))
    (earlier / "notes.txt").write_text("the user's, added after the export")
    cases = [
        (run_folder, "contains the input model"),           # the model's own run folder
        (user, "not an earlier stt-export folder"),         # an unrelated non-empty folder
        (earlier, "notes.txt"),                             # an export with a user's file added
        (tmp_path, "contains the input model"),             # a parent of the model
    ]
    for out, message in cases:
        listing = sorted(os.listdir(out))
        with pytest.raises(UserError, match=message):
            cli.run_export(export_args(dummy_model, out))
        assert sorted(os.listdir(out)) == listing, out
    monkeypatch.chdir(user)
    for out in (".", str(tmp_path)):
        with pytest.raises(UserError, match="current folder"):
            cli.run_export(export_args(dummy_model, out))
    assert (user / "thesis.tex").read_text() == "do not delete"


def test_check_destination_accepts_new_empty_and_earlier_exports(tmp_path):
    atomic.check_destination(str(tmp_path / "new"))
    (tmp_path / "empty").mkdir()
    atomic.check_destination(str(tmp_path / "empty"))
    legacy = tmp_path / "legacy"  # written before the manifest existed
    (legacy / "saved_model" / "1").mkdir(parents=True)
    for name in ("stt_int8.tflite", "stt_int8.json", "export_report.json", "export_report.md"):
        (legacy / name).write_text("x")
    atomic.check_destination(str(legacy))
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        atomic.check_destination(str(tmp_path / "file"))


def test_cli_prints_one_line_and_exits_2(dummy_model, tmp_path):
    result = subprocess.run([sys.executable, "-m", "stt_keras.export.cli", "--model", str(dummy_model), "--out", ".",
                             "--formats", ""], env=ENV, capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 2
    assert_one_line_error(result.stderr, "stt-export")


def assert_one_line_error(stderr, prog):
    """The tool's own output on stderr is exactly one `prog: error: ...` line (TensorFlow's import-time log aside)."""
    ours = [line for line in stderr.splitlines() if line.startswith(prog) or "Traceback" in line or "Error" in line]
    assert len(ours) == 1 and ours[0].startswith(f"{prog}: error: "), stderr[-2000:]


KILL_SCRIPT = r"""
import os, sys
from stt_keras.export.atomic import atomic_directory
with atomic_directory(sys.argv[1]) as tmp:
    open(os.path.join(tmp, "stt_float32.tflite"), "w").write("new")
"""


@pytest.mark.parametrize("point, exchange", [("export_before_swap", True), ("export_after_swap", True),
                                              ("export_between_renames", False)])
def test_kill_at_any_point_of_the_replacement_never_loses_out(tmp_path, point, exchange):
    out = tmp_path / "exports" / "model"
    out.mkdir(parents=True)
    (out / "stt_float32.tflite").write_text("old")
    env = {**ENV, "STT_KERAS_FAULT": point, "PYTHONPATH": ROOT}
    if not exchange:
        env["STT_KERAS_NO_RENAME_EXCHANGE"] = "1"
    result = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(out)], env=env, capture_output=True, text=True)
    assert result.returncode == 137, result.stderr[-2000:]
    leftovers = sorted(n.split("-")[0] for n in os.listdir(out.parent) if n != "model")
    assert leftovers == ([".model.old", ".model.partial"] if point == "export_between_renames" else [".model.partial"])
    # The dead run's PID is gone now; the next run recovers and cleans up, then replaces.
    if point == "export_between_renames":
        assert not out.exists()  # what the next run repairs
        assert "restored" in " ".join(atomic.recover(str(out)))
        assert (out / "stt_float32.tflite").read_text() == "old"
    else:
        assert (out / "stt_float32.tflite").read_text() == ("new" if point == "export_after_swap" else "old")
    with atomic.atomic_directory(str(out)) as tmp:
        open(os.path.join(tmp, "stt_float32.tflite"), "w").write("newer")
    assert (out / "stt_float32.tflite").read_text() == "newer"
    assert os.listdir(out.parent) == ["model"]


def test_partial_folder_of_a_live_process_is_left_alone(tmp_path):
    out = tmp_path / "model"
    live = tmp_path / f".model.partial-{os.getppid()}"  # our parent process is alive
    live.mkdir()
    with atomic.atomic_directory(str(out)) as tmp:
        open(os.path.join(tmp, "a"), "w").write("1")
    assert live.exists()


# ---------------------------------------------------------------- runaway
def test_huge_export_size_is_refused_with_an_estimate(tmp_path, monkeypatch):
    from stt_keras.models import STTSegmenter

    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=7)
    model(np.zeros((1, 4, 64, 128, 3), np.uint8))
    path = tmp_path / "m.keras"
    model.save(str(path))
    monkeypatch.setattr(memory, "available_memory", lambda: 8 * 2**30)
    built = []  # refused before any graph is built at the full size (not a timing assertion: busy machines vary)
    monkeypatch.setattr("stt_keras.export.step.make_step_function", lambda *a, **k: built.append(a[1:3]))
    with pytest.raises(UserError, match=r"needs about \d+\.\d GiB.*8\.0 GiB is available.*--no-memory-check"):
        cli.run_export(cli.build_parser().parse_args(["--model", str(path), "--out", str(tmp_path / "o"),
                                                      "--size", "4096x8192"]))
    assert built == [] and not (tmp_path / "o").exists()
    assert cli.estimate_memory is memory.estimate_memory  # still importable from the command's module
    small = memory.estimate_memory(model, (128, 256))
    assert memory.estimate_memory(model, (4096, 8192)) > 40 * 2**30 > 1000 * small / 2**30
    assert cli.available_memory() is None or cli.available_memory() > 0


def test_gpu_check_require_without_a_device_is_a_user_error_before_the_model_loads(dummy_model, tmp_path, monkeypatch,
                                                                                 capsys):
    """--gpu-check require on a machine without a Vulkan device: the library raises UserError (a ValueError a Python
    caller can catch; the interpreter goes on), before the dummy model (never read) is loaded; only the command's
    layer (run_cli) makes it `stt-export: error: ...` and exit code 2."""
    from stt_edge_demo import litert_gpu
    from stt_keras.utils.errors import run_cli

    monkeypatch.setattr(litert_gpu, "software_vulkan_env", lambda: "no Vulkan device here (test)")
    args = export_args(dummy_model, tmp_path / "out", "--gpu-check", "require")
    with pytest.raises(ValueError, match=r"^stt-export: --gpu-check require: no Vulkan device here \(test\)$") as error:
        cli.run_export(args)
    assert isinstance(error.value, UserError) and error.value.code == 2 and not (tmp_path / "out").exists()
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run_cli("stt-export", cli.run_export, args)
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "stt-export: error: --gpu-check require: no Vulkan device here (test)\n"


# ------------------------------------------------- full disks, read-only folders, empty calibration data
def test_calibration_data_without_frames_is_refused_before_the_model_loads(dummy_model, tmp_path):
    """A 0-frame video (it opens: an AVI without frames), a video OpenCV cannot open, a folder of no frames:
    one line about the data; the dummy model (never read) proves nothing was loaded first."""
    empty = tmp_path / "empty.avi"
    writer = cv2.VideoWriter(str(empty), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 64))
    writer.release()
    assert cv2.VideoCapture(str(empty)).isOpened()
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(3000))
    (tmp_path / "no_frames").mkdir()
    (tmp_path / "no_frames" / "notes.txt").write_text("x")
    for data, message in ((empty, "empty.avi has no decodable frame"), (garbage, "cannot open video"),
                          (tmp_path / "no_frames", "no frames found")):
        with pytest.raises(UserError, match=f"--calibration-data: .*{message}") as error:
            cli.run_export(export_args(dummy_model, tmp_path / "out", "--calibration-data", str(data)))
        assert error.value.code == 2 and not (tmp_path / "out").exists()


def test_a_size_below_16_is_one_line_before_any_work(dummy_model, tmp_path):
    with pytest.raises(UserError, match=r"--size must be at least 16x16") as error:
        cli.run_export(cli.build_parser().parse_args(["--model", str(dummy_model), "--out", str(tmp_path / "out"),
                                                      "--size", "8x8"]))
    assert error.value.code == 2 and not (tmp_path / "out").exists()


def test_a_full_disk_during_the_export_is_one_line_and_keeps_the_earlier_export(tmp_path, monkeypatch):
    """The disk fills up while the SavedModel is written (TensorFlow's ResourceExhaustedError, injected here; the
    real full disk is the slow test below): one line naming --out, the earlier export untouched, no partial folder."""
    import tensorflow as tf

    from stt_keras.export import saved_model
    from stt_keras.models import STTSegmenter

    model = STTSegmenter.from_preset("psp_tiny", num_classes=7)
    model(np.zeros((1, 64, 128, 3), np.uint8))
    path = tmp_path / "m.keras"
    model.save(str(path))
    out = tmp_path / "exports" / "m"
    out.mkdir(parents=True)
    (out / "frame_float32.tflite").write_bytes(b"the earlier export")
    atomic.write_manifest(str(out))
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}

    def full(model, folder, *args, **kwargs):
        os.makedirs(os.path.join(folder, "variables"))
        with open(os.path.join(folder, "variables", "variables_temp"), "wb") as f:
            f.write(b"half")
        raise tf.errors.ResourceExhaustedError(None, None, "{{function_node __wrapped__SaveV2}} "
                                               f"{folder}/variables/variables_temp; No space left on device")

    monkeypatch.setattr(saved_model, "save", full)
    with pytest.raises(UserError) as error:
        cli.run_export(export_args(path, out, "--formats", "savedmodel"))
    assert error.value.code == 2 and str(error.value) == (
        f"stt-export: the disk holding --out {out} is full (No space left on device); --out is unchanged and no "
        "partial export is left: free some space and run again.")
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert os.listdir(out.parent) == ["m"]


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs a mount namespace (unshare) to mount a tmpfs")
def test_export_into_a_read_only_folder_is_one_line_before_the_model_loads(dummy_model, tmp_path):
    disk = tmp_path / "disk"
    disk.mkdir()
    r = on_tmpfs(ENV, disk, "ro,size=1m", f'"{sys.executable}" -c "from stt_keras_cli.export import main; main()" '
                 f'--model "{dummy_model}" --out "{disk}/export" --size 64x128')
    assert r.returncode == 2 and r.stderr == (f"stt-export: error: cannot write --out {disk}/export ({disk}: "
                                              "Read-only file system); choose a writable folder.\n"), r.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs a mount namespace (unshare) to mount a tmpfs")
def test_export_into_a_real_full_disk_is_one_line_and_leaves_nothing(tmp_path):
    """A 4 MB tmpfs: the SavedModel's variables (9 MB) do not fit."""
    from stt_keras.models import STTSegmenter

    model = STTSegmenter.from_preset("psp_tiny", num_classes=7)
    model(np.zeros((1, 64, 128, 3), np.uint8))
    path = tmp_path / "m.keras"
    model.save(str(path))
    disk = tmp_path / "disk"
    disk.mkdir()
    r = on_tmpfs(ENV, disk, "size=4m", f'"{sys.executable}" -c "from stt_keras_cli.export import main; main()" '
                 f'--model "{path}" --out "{disk}/export" --size 64x128 --formats savedmodel; rc=$?; echo "left:$(ls -A "{disk}")"; '
                 'exit $rc')
    assert r.returncode == 2 and r.stderr == (
        f"stt-export: error: the disk holding --out {disk}/export is full (No space left on device); --out is "
        "unchanged and no partial export is left: free some space and run again.\n"), r.stderr[-3000:]
    assert r.stdout.splitlines()[-1] == "left:"  # the tmpfs was left empty


# ------------------------------------------------------------- checksums
def test_export_records_checksums_and_a_manifest(exported):
    folder, _ = exported
    manifest = json.load(open(os.path.join(folder, atomic.MANIFEST)))
    assert manifest["format"] == atomic.MANIFEST_FORMAT
    on_disk = {os.path.relpath(os.path.join(r, f), folder).replace(os.sep, "/")
               for r, _, fs in os.walk(folder) for f in fs} - {atomic.MANIFEST}
    assert set(manifest["files"]) == on_disk
    assert atomic.verify_manifest(folder) == []
    for name in ("stt_int8", "stt_float32", "stt_gpu_step"):
        meta = json.load(open(os.path.join(folder, name + ".json")))
        model_file = name + (".onnx" if name.endswith("step") else ".tflite")
        assert meta["sha256"] == manifest["files"][model_file]["sha256"] == atomic.sha256_file(os.path.join(folder, model_file))
    # The folder is recognisably an export: stt-export may replace it.
    atomic.check_destination(folder)


def _tampered_copy(folder, name, tmp_path):
    for suffix in (".tflite", ".json"):
        shutil.copy(os.path.join(folder, name + suffix), tmp_path / (name + suffix))
    model = tmp_path / (name + ".tflite")
    data = bytearray(model.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 2048] = bytes(b ^ 0xFF for b in data[middle:middle + 2048])
    model.write_bytes(bytes(data))
    return str(model)


def test_tampered_tflite_is_refused_by_the_edge_demo_and_parity(exported, tmp_path):
    from stt_keras.export import parity

    folder, _ = exported
    model = _tampered_copy(folder, "stt_int8", tmp_path)
    video = tmp_path / "in.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10, (128, 64))
    for _ in range(2):
        writer.write(np.zeros((64, 128, 3), np.uint8))
    writer.release()
    result = subprocess.run([sys.executable, "-m", "stt_edge_demo", "--model", model, "--video", str(video), "--no-display"],
                            env=ENV, capture_output=True, text=True, cwd=str(tmp_path))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "SHA-256" in result.stderr
    assert result.stderr.startswith("edge_demo: error:") and "stt_int8.tflite" in result.stderr
    meta = json.load(open(model.replace(".tflite", ".json")))
    with pytest.raises(parity.ChecksumError, match="modified or damaged"):
        parity.TFLiteStep(model, expected_sha256=meta["sha256"])
    assert atomic.verify_manifest(folder) == []  # the original is intact


# ------------------------------------------------------------ edge demo SIGTERM
def test_edge_demo_finalises_outputs_on_sigterm(tmp_path):
    from test_edge_demo import _blocks_video, _fake_step, _metadata  # noqa: F401  (reuse the fake model)
    import tensorflow as tf

    step = _fake_step("labels")
    converter = tf.lite.TFLiteConverter.from_concrete_functions([step.get_concrete_function()], tf.Module())
    model = tmp_path / "fake.tflite"
    model.write_bytes(converter.convert())
    meta = _metadata("labels")
    meta["sha256"] = atomic.sha256_file(str(model))
    json.dump(meta, open(tmp_path / "fake.json", "w"))
    video = _blocks_video(tmp_path / "in.avi", frames=3000)
    out = tmp_path / "o.avi"
    proc = subprocess.Popen([sys.executable, "-m", "stt_edge_demo", "--model", str(model), "--video", video,
                             "--out", str(out), "--no-display"], env={**ENV, "PYTHONPATH": ROOT}, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out.exists() and out.stat().st_size > 10000) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "the demo finished before it could be terminated; use a longer video"
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 143, stderr[-2000:]
    rows = list(csv.DictReader(open(tmp_path / "o.csv")))
    capture = cv2.VideoCapture(str(out))
    written = 0
    while capture.read()[0]:
        written += 1
    assert 0 < len(rows) < 3000 and written == len(rows)  # a readable video, every processed frame in the CSV
    assert f"{len(rows)} frames" in stdout
