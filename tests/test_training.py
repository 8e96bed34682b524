"""stt-train end to end on tiny synthetic data: learning, checkpoints, resume after a kill, distribution."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import stt_keras
import numpy as np
import pytest

TINY = ["--preset", "stt_psp_tiny", "--batch-size", "2", "--synthetic-sequences", "4",
        "--synthetic-size", "64x128", "--val-batches", "2", "--verbose", "2"]
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def run(args, **kwargs):
    return subprocess.run([sys.executable, "-m", "stt_keras.training.train", *args], env=ENV, capture_output=True, text=True, **kwargs)


def test_training_writes_checkpoints_and_logs(tmp_path):
    out = str(tmp_path / "run")
    result = run(TINY + ["--out", out, "--steps", "4", "--checkpoint-every", "2"])  # two chunks, the least that
    # shows a history row per chunk (the kills at every write are tests/test_reliability_training.py's)
    assert result.returncode == 0, result.stderr[-3000:]
    for name in ("last.keras", "best.keras", "history.csv", "config.json", "logs", "backup"):
        assert os.path.exists(os.path.join(out, name)), name
    rows = open(os.path.join(out, "history.csv")).read().strip().splitlines()
    assert rows[0].startswith("epoch") and len(rows) == 3
    model = stt_keras.load_model(os.path.join(out, "last.keras"))
    assert int(model.optimizer.iterations) == 4
    assert any(f.startswith("events") for _, _, files in os.walk(os.path.join(out, "logs")) for f in files)


# Slow (about 100 s): tests/test_reliability_training.py kills the real process (exit 137) at every
# write of a checkpoint and resumes in the default suite; this one SIGKILLs a longer run mid-epoch.
@pytest.mark.slow
def test_killed_run_resumes_without_losing_finished_work(tmp_path):
    out = str(tmp_path / "run")
    args = TINY + ["--out", out, "--steps", "48", "--checkpoint-every", "8"]
    proc = subprocess.Popen([sys.executable, "-m", "stt_keras.training.train", *args], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    meta = os.path.join(out, "backup", "checkpoint.json")
    deadline = time.time() + 300
    while time.time() < deadline:
        if os.path.exists(meta):
            try:
                if json.load(open(meta))["epoch"] >= 2:
                    break
            except (ValueError, KeyError):
                pass
        time.sleep(0.2)
    else:
        proc.kill()
        pytest.fail("the first run never finished two chunks")
    proc.send_signal(signal.SIGKILL)  # mid-epoch, no chance to clean up
    proc.wait()
    done = json.load(open(meta))["epoch"]
    assert 2 <= done < 6
    result = run(args)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"after {done} chunks ({8 * done} of 48 steps)" in result.stdout
    assert f"Epoch {done}/6" not in result.stdout and f"Epoch {done + 1}/6" in result.stdout
    model = stt_keras.load_model(os.path.join(out, "last.keras"))
    assert int(model.optimizer.iterations) == 48  # exactly the planned steps: none lost, none repeated


@pytest.mark.slow
def test_mirrored_strategy_on_two_logical_cpus(tmp_path):
    out = str(tmp_path / "run")
    result = run(TINY + ["--out", out, "--steps", "8", "--checkpoint-every", "4", "--distribute", "mirrored", "--cpu-devices", "2"])
    assert result.returncode == 0, result.stderr[-3000:]
    assert "MirroredStrategy with 2 replica(s)" in result.stdout
    model = stt_keras.load_model(os.path.join(out, "last.keras"))
    assert int(model.optimizer.iterations) == 8


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_multi_worker_strategy_with_two_processes(tmp_path):
    # Two workers on 127.0.0.1 with the same --out, as on a shared disk: the chief
    # writes the models, the other worker its own backup under out/worker-1.
    ports = [free_port(), free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    out = str(tmp_path / "run")
    procs = []
    for index in range(2):
        env = {**ENV, "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "stt_keras.training.train", *TINY, "--out", out, "--steps", "6", "--checkpoint-every", "3",
             "--distribute", "multiworker"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    for p, text in zip(procs, outputs):
        assert p.returncode == 0, text[-3000:]
    assert "MultiWorkerMirroredStrategy with 2 replica(s)" in outputs[0]
    assert "done, 6 steps" in outputs[0] and "done, 6 steps" in outputs[1]
    chief = stt_keras.load_model(os.path.join(out, "last.keras"))
    other = stt_keras.load_model(os.path.join(out, "worker-1", "last.keras"))
    assert int(chief.optimizer.iterations) == 6
    # Synchronous training: every trainable weight is the same on both workers
    # (BatchNorm moving statistics are each worker's own in Keras 3).
    from stt_keras.models import STTSegmenter

    start = STTSegmenter.from_preset("stt_psp_tiny", num_classes=chief.num_classes)
    start(np.zeros((1, 4, 64, 128, 3), np.uint8))
    moved = 0
    for a, b, c in zip(chief.trainable_weights, other.trainable_weights, start.trainable_weights):
        np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-6, err_msg=a.path)
        moved += not np.allclose(a.numpy(), c.numpy())
    assert moved > len(chief.trainable_weights) // 2  # and they did train


def test_init_from_copies_encoder_and_decoder(tmp_path):
    from stt_keras.models import STTSegmenter
    from stt_keras.training.train import init_from

    base = STTSegmenter.from_preset("psp_tiny", num_classes=7)
    base(np.zeros((1, 64, 64, 3), np.uint8))
    base.save(str(tmp_path / "base.keras"))
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=7)
    model(np.zeros((1, 4, 64, 64, 3), np.uint8))
    init_from(model, str(tmp_path / "base.keras"))
    for a, b in zip(model.encoder.get_weights() + model.decoder.get_weights(), base.encoder.get_weights() + base.decoder.get_weights()):
        np.testing.assert_array_equal(a, b)
    other = STTSegmenter.from_preset("stt_bise_tiny", num_classes=7)
    other(np.zeros((1, 4, 64, 64, 3), np.uint8))
    with pytest.raises(ValueError, match="does not match"):
        init_from(other, str(tmp_path / "base.keras"))


def test_init_from_an_stt_model_copies_its_stt_block_too(tmp_path):
    """A warm-up that trained the STT alone (--freeze encoder+decoder) hands its block to the next stage."""
    from stt_keras.models import STTSegmenter
    from stt_keras.training.train import init_from

    clip = np.random.default_rng(0).integers(0, 256, (1, 4, 64, 64, 3)).astype(np.uint8)
    source = STTSegmenter.from_preset("stt_psp_tiny", num_classes=7, norm_first=True)
    source(clip)
    rng = np.random.default_rng(1)
    for w in source.stt.weights:  # a trained-looking block (fresh, its output weights are zero)
        w.assign(rng.normal(0, 0.1, w.shape).astype("float32"))
    source.save(str(tmp_path / "warm.keras"))
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=7, norm_first=True)
    model(clip)
    init_from(model, str(tmp_path / "warm.keras"))
    for a, b in zip(model.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(model(clip).numpy(), source(clip).numpy(), atol=1e-5)
    post = STTSegmenter.from_preset("stt_psp_tiny", num_classes=7, norm_first=False)  # another block form: its own start
    post(clip)
    start = [w.numpy() for w in post.stt.weights]
    init_from(post, str(tmp_path / "warm.keras"))
    for a, b in zip(post.stt.weights, start):
        np.testing.assert_array_equal(a.numpy(), b)
    gated = STTSegmenter.from_preset("stt_psp_tiny", num_classes=7, norm_first=True, residual_gate=True)
    gated(clip)  # the gated form starts from its own zero gates, not from an ungated block
    init_from(gated, str(tmp_path / "warm.keras"))
    assert not np.any(gated.stt.gates.attention.numpy()) and not np.any(gated.stt.gates.ffn.numpy())
    np.testing.assert_array_equal(gated.encoder.get_weights()[0], source.encoder.get_weights()[0])


def test_only_the_chief_writes_to_out(monkeypatch):
    from stt_keras.training.train import worker_output_dir

    assert worker_output_dir("/r", "none") == "/r"
    cluster = {"worker": ["a:1", "b:2"]}
    for index, expected in [(0, "/r"), (1, os.path.join("/r", "worker-1"))]:
        monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}}))
        assert worker_output_dir("/r", "multiworker") == expected
    # With an explicit chief task, worker 0 is not the chief.
    cluster = {"chief": ["c:0"], "worker": ["a:1"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "chief", "index": 0}}))
    assert worker_output_dir("/r", "multiworker") == "/r"
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 0}}))
    assert worker_output_dir("/r", "multiworker") == os.path.join("/r", "worker-0")
    monkeypatch.delenv("TF_CONFIG")
    with pytest.raises(ValueError, match="TF_CONFIG"):
        worker_output_dir("/r", "multiworker")
