"""stt-train under kills at named points, reused and shared --out folders and bad arguments (issue 14)."""

import csv
import json
import os
import subprocess
import sys

import pytest

from stt_keras.utils.errors import UserError

from stt_keras.training import callbacks as cb
from stt_keras.training import train as train_lib
from tmpfs import can_mount_tmpfs, on_tmpfs

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


def test_kills_at_every_write_resume_to_exactly_the_planned_steps(tmp_path, capsys):
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
    # 4. a clean run finishes: exactly 6 steps, one history row per chunk, no temporaries. (Runs that are not
    # killed train in this process: the same code as the command, without another TensorFlow start.)
    train_lib.run(_args(out, "--steps", "6"))
    stdout = capsys.readouterr().out
    assert "after 2 chunks (4 of 6 steps)" in stdout and "done, 6 steps" in stdout
    rows = list(csv.DictReader(open(os.path.join(out, "history.csv"))))
    assert [int(r["epoch"]) for r in rows] == [0, 1, 2]
    assert temporaries(out) == [] and sorted(os.listdir(os.path.join(out, "backup"))) == [
        cb.PREVIOUS, cb.CHECKPOINT, "chunk-000002.weights.h5", "chunk-000003.weights.h5"]  # the two newest
    final = committed(out)
    assert final["steps"] == 6 and final["best"] == max(float(r["val_mean_iou"]) for r in rows)
    import stt_keras

    assert int(stt_keras.load_model(os.path.join(out, "last.keras")).optimizer.iterations) == 6
    # 5. more steps with --allow-new-settings train exactly to the new total (a shorter last chunk).
    train_lib.run(_args(out, "--steps", "7", "--allow-new-settings"))
    assert "done, 7 steps" in capsys.readouterr().out and committed(out)["steps"] == 7
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
        with pytest.raises(UserError, match=message.replace("[", r"\[").replace("]", r"\]")) as error:
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
    with pytest.raises(UserError, match=r"--steps 6 before, 7 now.*--allow-new-settings"):
        train_lib.run(_args(out, "--steps", "7"))
    with pytest.raises(UserError, match="already trained 6 steps, more than --steps 4"):
        train_lib.run(_args(out, "--steps", "4", "--allow-new-settings"))


def test_second_run_on_the_same_out_names_the_lock_holder(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    lock = train_lib.RunLock(str(out)).acquire()
    try:
        with pytest.raises(UserError, match=f"in use by another stt-train run \\(PID {os.getpid()}\\)"):
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
    with pytest.raises(UserError, match=message) as error:
        train_lib.run(_args(tmp_path / "run", *argv))
    assert error.value.code == 2


def test_unknown_preset_is_refused_with_the_choices(tmp_path, capsys):
    """By the parser (before TensorFlow starts) on the command line, by run() from Python."""
    with pytest.raises(SystemExit) as error:
        _args(tmp_path, "--preset", "nope")
    err = capsys.readouterr().err
    assert error.value.code == 2 and "--preset: invalid choice: 'nope'" in err and "'stt_psp_tiny'" in err
    config = train_lib.TrainConfig(preset="nope", out=str(tmp_path / "run"))
    with pytest.raises(UserError, match="unknown --preset 'nope'; available: .*stt_psp_tiny") as error:
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


def _record(backup, chunk, content=None):
    """Writes backup/chunk-N.weights.h5 and returns its checkpoint record."""
    name = f"chunk-{chunk:06d}.weights.h5"
    (backup / name).write_bytes(content or f"weights of chunk {chunk}".encode() * 100)
    return {"epoch": chunk, "steps": 2 * chunk, "weights": name, "weights_sha256": cb.sha256_file(str(backup / name)),
            "best": 0.1 * chunk, "history_rows": chunk, "rng": [[chunk, 0]]}


def test_damaged_newest_checkpoint_falls_back_to_the_previous(tmp_path):
    backup = tmp_path / "backup"
    backup.mkdir()
    assert cb.read_checkpoint(str(backup)) is None  # a new run
    previous, newest = _record(backup, 1), _record(backup, 2)
    cb.atomic_write_json(str(backup / cb.PREVIOUS), previous)
    cb.atomic_write_json(str(backup / cb.CHECKPOINT), newest)
    warnings = []
    assert cb.read_checkpoint(str(backup), warnings.append) == newest and warnings == []
    whole = (backup / newest["weights"]).read_bytes()
    damages = [  # (what is done to the newest, what the warning says)
        (lambda: (backup / newest["weights"]).write_bytes(whole[:100]), "do not match the SHA-256"),
        (lambda: (backup / newest["weights"]).unlink(), "are missing"),
        (lambda: (backup / cb.CHECKPOINT).write_text('{"epoch": 2, "ste'), "checkpoint.json is damaged"),
        (lambda: (backup / cb.CHECKPOINT).unlink(), "checkpoint.json is missing"),
    ]
    for damage, message in damages:
        cb.atomic_write_json(str(backup / cb.CHECKPOINT), newest)
        (backup / newest["weights"]).write_bytes(whole)
        damage()
        warnings = []
        assert cb.read_checkpoint(str(backup), warnings.append) == previous
        assert len(warnings) == 1 and message in warnings[0] and "resuming from the previous one" in warnings[0]
        assert "chunk 1, step 2" in warnings[0] and "delete" not in warnings[0].lower()
    # Both unusable: one line naming both problems.
    (backup / previous["weights"]).write_bytes(b"truncated")
    with pytest.raises(ValueError, match=r"no usable checkpoint.*checkpoint.json is missing.*do not match"):
        cb.read_checkpoint(str(backup))
    # Only one commit so far, damaged: named, with no previous one to fall back to.
    (backup / cb.PREVIOUS).unlink()
    (backup / cb.CHECKPOINT).write_text("{not json")
    with pytest.raises(ValueError, match=r"checkpoint.json is damaged.*there is no previous one"):
        cb.read_checkpoint(str(backup))


def test_the_commit_keeps_the_two_newest_and_never_rotates_a_damaged_one(tmp_path):
    """After a fallback, the next commit's previous is the checkpoint resumed from, not the damaged file."""
    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2), keras.layers.Dropout(0.5, seed=1)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    backup = tmp_path / "backup"
    backup.mkdir()
    resumed = _record(backup, 1)
    (backup / "chunk-000002.weights.h5").write_bytes(b"the damaged newest")
    callback = cb.RunCheckpoint(str(tmp_path), {"steps": 8}, restored=resumed)
    callback.set_model(model)
    callback.on_epoch_end(1, {"loss": 1.0})  # chunk 2 again
    assert committed(str(tmp_path))["epoch"] == 2
    assert json.load(open(backup / cb.PREVIOUS)) == resumed
    assert sorted(os.listdir(backup)) == [cb.PREVIOUS, cb.CHECKPOINT, "chunk-000001.weights.h5", "chunk-000002.weights.h5"]
    assert cb.read_checkpoint(str(backup))["epoch"] == 2
    callback.on_epoch_end(2, {"loss": 1.0})
    assert sorted(os.listdir(backup)) == [cb.PREVIOUS, cb.CHECKPOINT, "chunk-000002.weights.h5", "chunk-000003.weights.h5"]
    assert json.load(open(backup / cb.PREVIOUS))["epoch"] == 2 and committed(str(tmp_path))["epoch"] == 3


def test_random_generator_state_is_committed_and_restored_exactly(tmp_path):
    """Dropout masks continue where they stopped: 2 + 2 steps with the restored state equal 4 steps; without it they differ."""
    import keras
    import numpy as np

    def make():
        keras.utils.set_random_seed(3)
        model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(16), keras.layers.Dropout(0.5),
                                  keras.layers.Dense(1)])
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9), loss="mse")
        return model

    x, y = np.random.default_rng(0).normal(size=(32, 8)), np.random.default_rng(1).normal(size=(32, 1))
    whole = make()
    whole.fit(x, y, batch_size=8, epochs=4, steps_per_epoch=1, shuffle=False, verbose=0)
    first = make()
    first.fit(x, y, batch_size=8, epochs=2, steps_per_epoch=1, shuffle=False, verbose=0)
    callback = cb.RunCheckpoint(str(tmp_path), {"steps": 4})
    callback.set_model(first)
    callback.on_epoch_end(1, {"loss": 1.0})
    checkpoint = cb.read_checkpoint(str(tmp_path / "backup"))
    assert checkpoint["rng"] == cb.rng_state(first) and len(checkpoint["rng"]) == 1

    def resumed(restore):
        model = make()
        model.optimizer.build(model.trainable_variables)
        model.load_weights(str(tmp_path / "backup" / checkpoint["weights"]))
        if restore:
            cb.restore_rng_state(model, checkpoint["rng"])
        model.fit(x[16:], y[16:], batch_size=8, epochs=4, initial_epoch=2, steps_per_epoch=1, shuffle=False, verbose=0)
        return model

    for a, b in zip(resumed(True).get_weights(), whole.get_weights()):
        np.testing.assert_array_equal(a, b)
    assert any(not np.array_equal(a, b) for a, b in zip(resumed(False).get_weights(), whole.get_weights()))
    with pytest.raises(ValueError, match="holds 2 random generator states, the model has 1"):
        cb.restore_rng_state(first, checkpoint["rng"] * 2)


def test_an_interrupt_during_the_chunk_writes_waits_for_the_commit(tmp_path, monkeypatch):
    """Ctrl-C while the weights are written: the checkpoint is committed whole, then KeyboardInterrupt."""
    import signal

    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    save_weights = cb.atomic_save_weights

    def interrupted_save(model, path):
        os.kill(os.getpid(), signal.SIGINT)  # a real Ctrl-C, delivered in the middle of the chunk's writes
        save_weights(model, path)

    monkeypatch.setattr(cb, "atomic_save_weights", interrupted_save)
    callback = cb.RunCheckpoint(str(tmp_path), {"steps": 4})
    callback.set_model(model)
    with pytest.raises(KeyboardInterrupt):
        callback.on_epoch_end(0, {"loss": 1.0})
    assert committed(str(tmp_path))["epoch"] == 1 and callback.committed["epoch"] == 1
    assert cb.read_checkpoint(str(tmp_path / "backup"))["epoch"] == 1 and temporaries(str(tmp_path)) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    # SIGTERM under stop_signals() is a KeyboardInterrupt that says which signal it was.
    with pytest.raises(KeyboardInterrupt):
        with cb.stop_signals() as received:
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(100):
                pass
    assert received == ["SIGTERM"] and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


def test_interrupted_runs_print_one_line_and_exit_130(capsys):
    from stt_keras.utils.errors import Interrupted, run_cli

    message = train_lib.interrupted_message("runs/a", 5, 8, {"steps": 4, "epoch": 2})
    assert message == ("stt-train: stopped by Ctrl-C at step 5 of 8; the last checkpoint is step 4 (chunk 2, "
                       "runs/a/backup); re-running the same command resumes from there exactly.")
    assert "before the first checkpoint; re-running the same command starts the run again" in \
        train_lib.interrupted_message("runs/a", 1, 8, None, ["SIGTERM"])

    def stopped():
        raise Interrupted(message)

    def plain():
        raise KeyboardInterrupt

    for function, code, line in ((stopped, 130, message), (plain, 130, "stt-train: interrupted (Ctrl-C).")):
        with pytest.raises(SystemExit) as error:
            run_cli("stt-train", function)
        assert error.value.code == code and capsys.readouterr().err == line + "\n"


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
    with pytest.raises(UserError, match="--crop must look like 128x256"):
        train_lib.train("stt_psp_tiny", out=str(out), crop="128")
    with pytest.raises(UserError, match="--dataset cityscapes has 19 classes, not --num-classes 5"):
        train_lib.train("stt_psp_tiny", 5, out=str(out), dataset="cityscapes", data_root=str(tmp_path))
    with pytest.raises(UserError, match="--top-ratio must be in"):
        train_lib.train("stt_psp_tiny", out=str(out), stt_overrides={"top_ratio": 1.5})
    assert not out.exists()
    # An override the preset does not take is named by from_preset; no run.json is left to refuse the fixed command.
    with pytest.raises(UserError, match="per-frame model; it takes no STT overrides") as error:
        train_lib.run(_args(out, "--top-ratio", "0.5"))
    assert error.value.code == 2 and sorted(os.listdir(out)) == [".lock"]


def _history(out):
    return open(os.path.join(out, "history.csv")).read()


def _same_final_model(a, b):
    import numpy as np

    import stt_keras

    first, second = (stt_keras.load_model(os.path.join(out, "last.keras")) for out in (a, b))
    assert int(first.optimizer.iterations) == int(second.optimizer.iterations)
    for x, y in zip(first.get_weights() + [v.numpy() for v in first.optimizer.variables],
                    second.get_weights() + [v.numpy() for v in second.optimizer.variables]):
        np.testing.assert_array_equal(x, y)


@pytest.mark.slow
def test_ctrl_c_and_a_damaged_newest_checkpoint_resume_exactly(tmp_path):
    """Ctrl-C to a real stt-train (the terminal signals the whole process group, log filter included), re-run:
    the same losses, mIoU and final weights as a run never stopped. Then a truncated newest checkpoint: a one-line
    warning, the previous checkpoint, and the same result again. psp_tiny has dropout: its masks must continue."""
    import re
    import signal
    import time

    steps = ["--steps", "8"]
    reference = str(tmp_path / "reference")
    r = run(reference, *steps)
    assert r.returncode == 0, r.stderr[-3000:]

    out = str(tmp_path / "interrupted")
    proc = subprocess.Popen([sys.executable, "-c", "from stt_keras_cli.train import main; main()", *TINY, "--out", out,
                             *steps], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True,  # Ctrl-C as a terminal's, even if this test runs as a background job:
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    meta = os.path.join(out, "backup", cb.CHECKPOINT)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if json.load(open(meta))["epoch"] >= 2:
                break
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 130, stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    m = re.fullmatch(r"stt-train: stopped by Ctrl-C at step (\d) of 8; the last checkpoint is step (\d) \(chunk (\d), "
                     r".*backup\); re-running the same command resumes from there exactly\.", lines[0])
    assert m, lines[0]
    assert committed(out)["steps"] == int(m.group(2)) <= int(m.group(1)) < 8 and int(m.group(2)) >= 4
    r = run(out, *steps)
    assert r.returncode == 0 and f"after {m.group(3)} chunks ({m.group(2)} of 8 steps)" in r.stdout, r.stderr[-3000:]
    assert _history(out) == _history(reference)
    _same_final_model(out, reference)

    damaged = str(tmp_path / "damaged")
    r = run(damaged, *steps, fault="after_commit@3")  # killed with chunk 3 committed
    assert r.returncode == 137 and committed(damaged)["epoch"] == 3, r.stderr[-3000:]
    weights = os.path.join(damaged, "backup", "chunk-000003.weights.h5")
    with open(weights, "r+b") as f:
        f.truncate(os.path.getsize(weights) // 2)
    r = run(damaged, *steps)
    assert r.returncode == 0, r.stderr[-3000:]
    warning = [line for line in r.stderr.splitlines() if line.startswith("stt-train: warning")]
    assert len(warning) == 1 and "resuming from the previous one" in warning[0] and "chunk 2, step 4" in warning[0]
    assert "after 2 chunks (4 of 8 steps)" in r.stdout
    assert _history(damaged) == _history(reference)
    _same_final_model(damaged, reference)


def test_a_full_disk_at_a_chunk_write_keeps_the_checkpoint_and_leaves_no_half_file(tmp_path, monkeypatch):
    """ENOSPC injected at the weights write (the real full disk is the slow test below): the previous commit
    stands, no temporary file, no half history row; the one line names the folder and the step kept."""
    import errno

    import keras

    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    model.compile(optimizer="sgd", loss="mse")
    model.optimizer.build(model.trainable_variables)
    callback = cb.RunCheckpoint(str(tmp_path), {"steps": 4})
    callback.set_model(model)
    callback.on_epoch_end(0, {"loss": 1.0})
    history = (tmp_path / "history.csv").read_text()

    def full(path, *args, **kwargs):  # the disk fills up in the middle of the weights file
        with open(path, "wb") as f:
            f.write(b"half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)

    monkeypatch.setattr(model, "save_weights", full)
    with pytest.raises(OSError):
        callback.on_epoch_end(1, {"loss": 1.0})
    monkeypatch.undo()
    assert committed(str(tmp_path))["epoch"] == 1 and temporaries(str(tmp_path)) == []
    assert sorted(os.listdir(tmp_path / "backup")) == [cb.CHECKPOINT, "chunk-000001.weights.h5"]
    assert cb.read_checkpoint(str(tmp_path / "backup"))["epoch"] == 1
    # A full disk while the history row is written: the file is cut back to its committed rows.
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(OSError):
        callback._append_history(2, {"loss": 1.0})
    monkeypatch.undo()
    assert (tmp_path / "history.csv").read_text().count("\n") == history.count("\n") + 1  # chunk 2's row only
    error = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp_path / "last.keras"))
    message = train_lib.write_failure_message(str(tmp_path), error)
    assert message == (f"stt-train: the disk holding --out {tmp_path} is full (No space left on device); the last "
                       "checkpoint, step 0 (chunk 1), is intact and no half-written file is left: free some space and "
                       "re-run the same command to resume.")
    import tensorflow as tf

    saved = tf.errors.ResourceExhaustedError(None, None, "{{function_node SaveV2}} /x/variables/variables_temp; "
                                                         "No space left on device")
    assert "full (No space left on device)" in train_lib.write_failure_message(str(tmp_path / "new"), saved)
    assert "nothing was checkpointed yet" in train_lib.write_failure_message(str(tmp_path / "new"), saved)


def test_unwritable_out_folders_are_named_before_any_work(tmp_path):
    from stt_keras.utils.fileio import unwritable_reason

    assert unwritable_reason(str(tmp_path)) is None and os.listdir(tmp_path) == []  # the probe is removed
    assert unwritable_reason(str(tmp_path / "a" / "b" / "c")) is None and os.listdir(tmp_path) == []
    (tmp_path / "file").write_text("x")
    assert unwritable_reason(str(tmp_path / "file" / "run")) == f"{tmp_path / 'file'} exists and is not a folder"
    # Only a refused write under --out is "cannot write to --out"; an unreadable data file stays what it is.
    import errno

    from stt_keras.utils.fileio import concerns, read_only

    denied = OSError(errno.EACCES, "Permission denied", str(tmp_path / "run" / "history.csv"))
    assert read_only(denied) and concerns(denied, str(tmp_path / "run"))
    assert not concerns(OSError(errno.EACCES, "Permission denied", "/data/frames/a.png"), str(tmp_path / "run"))
    assert concerns(RuntimeError(f"{{SaveV2}} {tmp_path}/run/logs/x; Permission denied"), str(tmp_path / "run"))
    if os.geteuid() != 0:  # root ignores permission bits: the read-only mount below covers it
        (tmp_path / "locked").mkdir(mode=0o555)
        assert "Permission denied" in unwritable_reason(str(tmp_path / "locked" / "run"))


@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs a mount namespace (unshare) to mount a tmpfs")
def test_training_into_a_read_only_folder_is_one_line_before_any_work(tmp_path):
    r = on_tmpfs(ENV, tmp_path, "ro,size=1m", f'"{sys.executable}" -c "from stt_keras_cli.train import main; main()" '
                 f'{" ".join(TINY)} --steps 2 --out "{tmp_path}/run"')
    assert r.returncode == 2 and r.stderr == (f"stt-train: error: cannot write to --out {tmp_path}/run ({tmp_path}: "
                                              "Read-only file system).\n"), r.stderr[-3000:]
    assert "training on" not in r.stdout


@pytest.mark.slow
@pytest.mark.skipif(not can_mount_tmpfs(), reason="needs a mount namespace (unshare) to mount a tmpfs")
def test_training_into_a_full_disk_is_one_line_and_resumes_once_there_is_space(tmp_path):
    """A real 30 MB tmpfs: chunk 1 (last.keras, best.keras, the backup: 3 x 9 MB) fits, chunk 2's last.keras does not."""
    disk = tmp_path / "disk"
    disk.mkdir()
    kept = tmp_path / "kept"
    r = on_tmpfs(ENV, disk, "size=30m", f'"{sys.executable}" -c "from stt_keras_cli.train import main; main()" '
                 f'{" ".join(TINY)} --steps 6 --out "{disk}/run"; rc=$?; cp -a "{disk}/run" "{kept}"; exit $rc')
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr == (f"stt-train: error: the disk holding --out {disk}/run is full (No space left on device); the "
                        "last checkpoint, step 2 (chunk 1), is intact and no half-written file is left: free some space "
                        "and re-run the same command to resume.\n"), r.stderr[-3000:]
    assert committed(str(kept))["steps"] == 2 and temporaries(str(kept)) == []
    assert len(open(kept / "history.csv").read().splitlines()) == 2
    r = run(kept, "--steps", "6")  # on a disk with space
    assert r.returncode == 0 and "after 1 chunks (2 of 6 steps)" in r.stdout and "done, 6 steps" in r.stdout
