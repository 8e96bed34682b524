"""The recommended recipe: --per-frame-steps trains the per-frame model, then the STT from it (identity start)."""

import json
import os
import subprocess
import sys

import pytest

import stt_keras
from stt_keras.utils.errors import UserError
from stt_keras.training.train import TrainConfig, check_config, per_frame_preset

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
TINY = ["--batch-size", "2", "--synthetic-sequences", "2", "--synthetic-size", "64x96", "--crop", "32x32",
        "--val-batches", "1", "--verbose", "2", "--checkpoint-every", "2"]


def test_per_frame_counterparts():
    assert per_frame_preset("stt_psp_tiny") == "psp_tiny"
    assert per_frame_preset("stt_psp18") == "psp18"
    assert per_frame_preset("stt_bise34") == "bise34"
    assert per_frame_preset("psp_tiny") is None


@pytest.mark.parametrize("settings, message", [
    (dict(preset="psp_tiny", per_frame_steps=2), "needs an STT preset"),
    (dict(preset="stt_psp_tiny", per_frame_steps=2, init_from=__file__), "use one of them"),
    (dict(preset="stt_psp_tiny", per_frame_steps=-1), "must be 0 or positive"),
])
def test_bad_recipe_settings_are_named(settings, message):
    with pytest.raises(UserError, match=message):
        check_config(TrainConfig(out="unused", **settings))


def test_stt_train_takes_the_layers_top_ratio_range():
    for ratio in (0, 0.5, 1):  # 0 leaves the block out: only the per-frame parts learn
        check_config(TrainConfig("stt_psp_tiny", out="unused", stt_overrides={"top_ratio": ratio}))
    for ratio in (-0.1, 1.5, "half"):
        with pytest.raises(UserError, match=r"^stt-train: --top-ratio must be (a number )?in \[0, 1\], got"):
            check_config(TrainConfig("stt_psp_tiny", out="unused", stt_overrides={"top_ratio": ratio}))


@pytest.mark.slow  # two trainings and two resumes (about a minute on 2 idle cores)
def test_the_recipe_trains_both_stages_and_resumes(tmp_path):
    out = str(tmp_path / "stt")
    cmd = [sys.executable, "-m", "stt_keras.training.train", "--preset", "stt_psp_tiny", "--per-frame-steps", "2",
           "--steps", "2", "--out", out, *TINY]
    result = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    first = json.load(open(os.path.join(out, "per_frame", "run.json")))["settings"]
    second = json.load(open(os.path.join(out, "run.json")))["settings"]
    assert first["preset"] == "psp_tiny" and first["steps"] == 2 and first["stt_overrides"] == {}
    assert second["preset"] == "stt_psp_tiny" and second["init_from"] == os.path.join(out, "per_frame", "last.keras")
    assert second["stt_overrides"] == {"norm_first": True}
    assert stt_keras.load_model(os.path.join(out, "last.keras"), compile=False).stt.norm_first
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("already finished") == 2, again.stdout[-2000:]


def test_the_stt_lr_multiplier_scales_the_blocks_gradients_only():
    import numpy as np
    import tensorflow as tf

    from stt_keras.layers import SparseTemporalTransformer

    stt = SparseTemporalTransformer(num_key_frames=2, num_heads=2, neighborhood_radius=2, top_ratio=0.5)
    rng = np.random.default_rng(0)
    q = tf.constant(rng.random((1, 8, 8, 16), np.float32))
    k = tf.constant(rng.random((1, 2, 8, 8, 16), np.float32))
    stt(q, k)

    def run(scale):
        stt.gradient_scale = scale
        with tf.GradientTape() as tape:
            tape.watch(q)
            y = tf.reduce_sum(stt(q, k) ** 2)
        return y, tape.gradient(y, [q] + stt.trainable_weights)

    (y1, g1), (y10, g10) = run(1.0), run(10.0)
    assert float(y1) == float(y10)  # the forward pass is the same
    for a, b in zip(g1[1:], g10[1:]):
        np.testing.assert_allclose(b.numpy(), 10 * a.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g10[0].numpy(), g1[0].numpy(), rtol=1e-5, atol=1e-6)  # not the input's
    with pytest.raises(UserError, match="--stt-lr-multiplier must be positive"):
        check_config(TrainConfig("stt_psp_tiny", out="unused", stt_lr_multiplier=0))


def test_target_damage_must_be_a_probability_and_skips_the_per_frame_stage(tmp_path, monkeypatch):
    with pytest.raises(UserError, match="--target-damage must be a probability"):
        check_config(TrainConfig("stt_psp_tiny", out="unused", target_damage=1.5))
    from stt_keras.training import train as train_lib

    stages = []
    real_run = train_lib.run

    def fake_run(config):
        if config.per_frame_steps:
            return real_run(config)
        stages.append((config.preset, config.target_damage))

    monkeypatch.setattr(train_lib, "run", fake_run)
    train_lib.run(TrainConfig("stt_psp_tiny", out=str(tmp_path), per_frame_steps=2, target_damage=0.5))
    assert stages == [("psp_tiny", 0.0), ("stt_psp_tiny", 0.5)]
