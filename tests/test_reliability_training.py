"""stt-train under kills at named points, reused and shared --out folders and bad arguments (issue 14)."""

import csv
import json
import os
import subprocess
import sys

import pytest

from stt_keras.training import callbacks as cb
from stt_keras.training import train as train_lib

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
# The smallest run that still validates: per-frame tiny model, 32x64 frames, 3 chunks of 2 steps.
TINY = ["--preset", "psp_tiny", "--batch-size", "1", "--synthetic-sequences", "2", "--synthetic-size", "32x64",
        "--val-batches", "1", "--verbose", "0", "--checkpoint-every", "2"]


def run(out, *extra, fault=None):
    env = {**ENV, "STT_KERAS_FAULT": fault} if fault else ENV
    return subprocess.run([sys.executable, "-m", "stt_keras.training.train", *TINY, "--out", str(out), *extra], env=env,
                          capture_output=True, text=True)


def committed(out):
    return json.load(open(os.path.join(out, "backup", cb.CHECKPOINT)))


def temporaries(out):
    return [n for sub in (out, os.path.join(out, "backup")) if os.path.isdir(sub) for n in os.listdir(sub)
            if ".tmp-" in n or (n.startswith("tmp") and n.endswith(".keras"))]


def test_kills_at_every_write_resume_to_exactly_the_planned_steps(tmp_path):
    out = str(tmp_path / "run")
    # 1. killed while the chunk-2 backup weights are being written: the committed backup is chunk 1's.
    r = run(out, "--steps", "6", fault="during_weights@2")
    assert r.returncode == 137, r.stderr[-3000:]
    assert committed(out)["epoch"] == 1 and committed(out)["steps"] == 2
    # 2. killed between the weights and the commit: the history row of chunk 2 is written but not committed.
    r = run(out, "--steps", "6", fault="after_weights")
    assert r.returncode == 137, r.stderr[-3000:]
    assert "after 1 chunks (2 of 6 steps)" in r.stdout
    assert committed(out)["epoch"] == 1 and len(open(os.path.join(out, "history.csv")).read().splitlines()) == 3
    # 3. killed inside the last.keras write of chunk 3: a temporary file is left behind.
    r = run(out, "--steps", "6", fault="during_last@2")
    assert r.returncode == 137, r.stderr[-3000:]
    assert committed(out)["epoch"] == 2 and committed(out)["steps"] == 4 and temporaries(out)
    # 4. a clean run finishes: exactly 6 steps, one history row per chunk, no temporaries.
    r = run(out, "--steps", "6")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "after 2 chunks (4 of 6 steps)" in r.stdout and "done, 6 steps" in r.stdout
    rows = list(csv.DictReader(open(os.path.join(out, "history.csv"))))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert temporaries(out) == [] and sorted(os.listdir(os.path.join(out, "backup"))) == [
        cb.CHECKPOINT, "chunk-000003.weights.h5"]
    final = committed(out)
    assert final["steps"] == 6 and final["best"] == max(float(r["val_mean_iou"]) for r in rows)
    import stt_keras

    assert int(stt_keras.load_model(os.path.join(out, "last.keras")).optimizer.iterations) == 6
    # 5. more steps with --allow-new-settings train exactly to the new total (a shorter last chunk).
    r = run(out, "--steps", "7", "--allow-new-settings")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "done, 7 steps" in r.stdout and committed(out)["steps"] == 7
    assert [int(r["epoch"]) for r in csv.DictReader(open(os.path.join(out, "history.csv")))] == [0, 1, 2, 3]


def _args(out, *extra):
    """The TrainConfig stt-train makes of these arguments."""
    return train_lib.config_from_args(train_lib.build_parser().parse_args([*TINY, "--out", str(out), *extra]))


def _started_run(out, *extra):
    """An --out whose run.json says it was started with these settings (no training needed)."""
    os.makedirs(out, exist_ok=True)
    cb.atomic_write_json(os.path.join(out, "run.json"),
                         {"format": "stt-keras-run/1", "settings": train_lib.run_settings(_args(out, *extra))})


def test_other_settings_on_an_existing_out_are_refused_by_name(tmp_path):
    out = tmp_path / "run"
    _started_run(out, "--steps", "8")
    for argv, message in [(["--steps", "8", "--batch-size", "2"], "--batch-size 1 before, 2 now"),
                          (["--steps", "8", "--checkpoint-every", "4"], "--checkpoint-every 2 before, 4 now"),
                          (["--steps", "4"], "--steps 8 before, 4 now"),
                          (["--steps", "8", "--crop", "16x16"], "--crop None before, [16, 16] now"),
                          (["--steps", "8", "--preset", "stt_psp_tiny"], "another model"),
                          (["--steps", "8", "--preset", "stt_psp_tiny", "--allow-new-settings"], "another model")]:
        with pytest.raises(SystemExit, match=message.replace("[", r"\[").replace("]", r"\]")) as error:
            train_lib.run(_args(out, *argv))
        assert error.value.code == 2
    assert sorted(os.listdir(out)) == [".lock", "run.json"]  # nothing written, nothing trained


def test_finished_run_is_not_retrained_and_other_steps_are_refused(tmp_path, capsys):
    out = tmp_path / "run"
    _started_run(out, "--steps", "6")
    (out / "backup").mkdir()
    (out / "backup" / "chunk-000003.weights.h5").write_bytes(b"weights")
    cb.atomic_write_json(str(out / "backup" / cb.CHECKPOINT), {
        "epoch": 3, "steps": 6, "weights": "chunk-000003.weights.h5",
        "weights_sha256": cb.sha256_file(str(out / "backup" / "chunk-000003.weights.h5")), "best": 0.5,
        "history_rows": 3, "settings": train_lib.run_settings(_args(out, "--steps", "6"))})
    assert train_lib.run(_args(out, "--steps", "6")) is None
    assert "already finished (6 of 6 steps); nothing to do" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"--steps 6 before, 7 now.*--allow-new-settings"):
        train_lib.run(_args(out, "--steps", "7"))
    with pytest.raises(SystemExit, match="already trained 6 steps, more than --steps 4"):
        train_lib.run(_args(out, "--steps", "4", "--allow-new-settings"))


def test_second_run_on_the_same_out_names_the_lock_holder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lock = train_lib.RunLock(str(out)).acquire()
    try:
        with pytest.raises(SystemExit, match=f"in use by another stt-train run \\(PID {os.getpid()}\\)"):
            train_lib.run(_args(out, "--steps", "2"))
    finally:
        lock.release()
    # A lock file left by a dead process is taken over (the kernel released its flock).
    (out / ".lock").write_text("999999999")
    lock = train_lib.RunLock(str(out)).acquire()
    assert (out / ".lock").read_text() == str(os.getpid())
    lock.release()


@pytest.mark.parametrize("argv, message", [
    (["--steps", "0"], "--steps must be positive"),
    (["--batch-size", "-1"], "--batch-size must be positive"),
    (["--num-classes", "0"], "--num-classes must be at least 2"),
    (["--dataset", "folder", "--data-root", "x"], "needs --num-classes"),
    (["--dataset", "cityscapes"], "--data-root is required"),
    (["--init-from", "missing.keras"], "--init-from model file not found"),
])
def test_bad_training_arguments_are_one_line_errors(tmp_path, argv, message):
    with pytest.raises(SystemExit, match=message) as error:
        train_lib.run(_args(tmp_path / "run", *argv))
    assert error.value.code == 2


def test_unknown_preset_is_refused_with_the_choices(tmp_path, capsys):
    """By the parser (before TensorFlow starts) on the command line, by run() from Python."""
    with pytest.raises(SystemExit) as error:
        _args(tmp_path, "--preset", "nope")
    err = capsys.readouterr().err
    assert error.value.code == 2 and "--preset: invalid choice: 'nope'" in err and "'stt_psp_tiny'" in err
    config = train_lib.TrainConfig(preset="nope", out=str(tmp_path / "run"))
    with pytest.raises(SystemExit, match="unknown --preset 'nope'; available: .*stt_psp_tiny") as error:
        train_lib.run(config)
    assert error.value.code == 2


def test_bad_sizes_are_rejected_by_the_parser(tmp_path, capsys):
    for size in ("0x0", "-32x64", "32"):
        with pytest.raises(SystemExit) as error:
            _args(tmp_path, f"--crop={size}")
        assert error.value.code == 2 and "--crop" in capsys.readouterr().err


def test_resumed_checkpoint_keeps_a_better_best(tmp_path):
    """After a resume, a worse first epoch must not overwrite best.keras (the best score is restored, not -inf)."""
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    (tmp_path / "best.keras").write_bytes(b"the better model of an earlier run")
    callback = cb.RunCheckpoint(str(tmp_path), {"steps": 4}, restored={"best": 0.9, "epoch": 1, "history_rows": 1})
    callback.set_model(model)
    callback.on_epoch_end(1, {"val_mean_iou": 0.5, "loss": 1.0})
    assert (tmp_path / "best.keras").read_bytes() == b"the better model of an earlier run"
    assert committed(str(tmp_path))["best"] == 0.9
    callback.on_epoch_end(2, {"val_mean_iou": 0.95, "loss": 1.0})
    assert (tmp_path / "best.keras").read_bytes() != b"the better model of an earlier run"
    assert committed(str(tmp_path))["best"] == 0.95 and committed(str(tmp_path))["epoch"] == 3
    # A NaN score is never "better".
    callback.on_epoch_end(3, {"val_mean_iou": float("nan"), "loss": 1.0})
    assert committed(str(tmp_path))["best"] == 0.95
    assert temporaries(str(tmp_path)) == []


def test_damaged_backup_is_named(tmp_path):
    backup = tmp_path / "backup"
    backup.mkdir()
    (backup / cb.CHECKPOINT).write_text("{not json")
    with pytest.raises(ValueError, match="checkpoint.json is damaged"):
        cb.read_checkpoint(str(backup))
    (backup / "chunk-000001.weights.h5").write_bytes(b"truncated")
    (backup / cb.CHECKPOINT).write_text(json.dumps({"epoch": 1, "steps": 2, "weights": "chunk-000001.weights.h5",
                                                     "weights_sha256": "0" * 64}))
    with pytest.raises(ValueError, match="do not match"):
        cb.read_checkpoint(str(backup))


def test_train_function_builds_the_model_once_and_stores_what_the_cli_stores(tmp_path, monkeypatch, capsys):
    """train(preset, ...) from Python: one model built, the overrides in its STT, run.json as stt-train writes it."""
    from stt_keras.models import STTSegmenter

    built = []
    from_preset = STTSegmenter.from_preset.__func__

    def counting(cls, *args, **kwargs):
        built.append(kwargs)
        return from_preset(cls, *args, **kwargs)

    monkeypatch.setattr(STTSegmenter, "from_preset", classmethod(counting))
    out = tmp_path / "run"
    model = train_lib.train("stt_psp_tiny", out=str(out), batch_size=1, synthetic_sequences=2, synthetic_size="32x64",
                            val_batches=1, verbose=0, steps=2, checkpoint_every=2,
                            stt_overrides={"top_ratio": 0.5, "key_selection": "all"})
    assert len(built) == 1 and built[0]["num_classes"] == 7  # the synthetic set's classes, one build
    assert model.stt.top_ratio == 0.5 and model.stt.key_selection == "all"
    assert int(model.optimizer.iterations) == 2
    cli = ["--preset", "stt_psp_tiny", "--synthetic-size", "32x64", "--steps", "2", "--top-ratio", "0.5",
           "--key-selection", "all"]
    stored = json.load(open(out / "run.json"))["settings"]
    assert stored == train_lib.run_settings(_args(out, *cli)) and stored["stt_overrides"] == {
        "top_ratio": 0.5, "key_selection": "all"}
    # The command line sees the same run: finished, nothing to do; with another ratio, another model.
    capsys.readouterr()
    train_lib.main([*TINY, "--out", str(out), *cli])
    assert "already finished (2 of 2 steps)" in capsys.readouterr().out and len(built) == 1
    # The synthetic set's own class count, given, is the same run (not "another model").
    assert train_lib.train("stt_psp_tiny", 7, out=str(out), batch_size=1, synthetic_sequences=2, synthetic_size=(32, 64),
                           val_batches=1, verbose=0, steps=2, checkpoint_every=2,
                           stt_overrides={"top_ratio": 0.5, "key_selection": "all"}) is None
    with pytest.raises(SystemExit):
        train_lib.main([*TINY, "--out", str(out), *cli[:-4], "--top-ratio", "0.25"])
    assert "another model or dataset (--stt-overrides" in capsys.readouterr().err


def test_train_function_refuses_bad_settings_before_writing(tmp_path):
    out = tmp_path / "run"
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['top_ratio'\]"):
        train_lib.train("stt_psp_tiny", out=str(out), top_ratio=0.5)  # an STT argument goes in stt_overrides
    with pytest.raises(SystemExit, match="--crop must look like 128x256"):
        train_lib.train("stt_psp_tiny", out=str(out), crop="128")
    with pytest.raises(SystemExit, match="--dataset cityscapes has 19 classes, not --num-classes 5"):
        train_lib.train("stt_psp_tiny", 5, out=str(out), dataset="cityscapes", data_root=str(tmp_path))
    with pytest.raises(SystemExit, match="--top-ratio must be in"):
        train_lib.train("stt_psp_tiny", out=str(out), stt_overrides={"top_ratio": 1.5})
    assert not out.exists()
    # An override the preset does not take is named by from_preset; no run.json is left to refuse the fixed command.
    with pytest.raises(SystemExit, match="per-frame model; it takes no STT overrides") as error:
        train_lib.run(_args(out, "--top-ratio", "0.5"))
    assert error.value.code == 2 and sorted(os.listdir(out)) == [".lock"]
