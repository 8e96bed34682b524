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
    assert first["stt_lr_multiplier"] == 1.0 and second["stt_lr_multiplier"] == 5.0  # the recipe's block at 5x
    assert first["lr"] == 0.01 and second["lr"] == 0.02  # of a stage at 2x the per-frame stage's rate
    assert second["stt_overrides"] == {"norm_first": True}
    assert stt_keras.load_model(os.path.join(out, "last.keras"), compile=False).stt.norm_first
    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    assert again.returncode == 0 and again.stdout.count("already finished") == 2, again.stdout[-2000:]


@pytest.mark.parametrize("name", ["SGD", "AdamW"])
def test_the_stt_lr_multiplier_scales_the_parts_steps_only(name):
    """stt_keras.optimizers: the scaled variables follow the Keras optimizer at multiplier x lr, the others
    the Keras optimizer at lr (two steps, so momentum and Adam's moments are in play)."""
    import keras
    import numpy as np

    from stt_keras import optimizers

    settings = dict(weight_decay=1e-2, **({"momentum": 0.9} if name == "SGD" else {}))
    rng = np.random.default_rng(0)
    start = rng.normal(size=(2, 5)).astype("float32")
    grads = [rng.normal(size=(2, 5)).astype("float32") for _ in range(2)]

    def steps(optimizer, variables, rows=(0, 1)):
        for g in grads:
            optimizer.apply([keras.ops.convert_to_tensor(g[i]) for i in rows], variables)
        return [v.numpy() for v in variables]

    fast, slow = keras.Variable(start[0]), keras.Variable(start[1])
    optimizer = getattr(optimizers, name)(learning_rate=0.01, **settings)
    optimizer.scale_learning_rate([fast], 10.0)
    got = steps(optimizer, [fast, slow])
    # The references: plain Keras at 10x lr for the fast variable (its weight decay at the base rate,
    # so the reference's decay is divided by 10), at lr for the slow one.
    fast_ref = steps(getattr(keras.optimizers, name)(learning_rate=0.1, **{**settings, "weight_decay": 1e-3}),
                     [keras.Variable(start[0])], rows=(0,))
    slow_ref = steps(getattr(keras.optimizers, name)(learning_rate=0.01, **settings), [keras.Variable(start[1])], rows=(1,))
    np.testing.assert_allclose(got[0], fast_ref[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], slow_ref[0], rtol=1e-6, atol=1e-7)
    assert np.abs(got[0] - start[0]).mean() > 5 * np.abs(got[1] - start[1]).mean()
    with pytest.raises(ValueError, match="must be positive"):
        optimizer.scale_learning_rate([fast], 0.0)
    with pytest.raises(ValueError, match="no variables"):  # an unbuilt layer's: a multiplier that scales nothing
        optimizer.scale_learning_rate([], 10.0)
    with pytest.raises(UserError, match="--stt-lr-multiplier must be positive"):
        check_config(TrainConfig("stt_psp_tiny", out="unused", stt_lr_multiplier=0))
    with pytest.raises(UserError, match="--clipnorm must be positive"):
        check_config(TrainConfig("stt_psp_tiny", out="unused", clipnorm=0.0))
    with pytest.raises(UserError, match="unknown --optimizer 'adam'"):
        check_config(TrainConfig("stt_psp_tiny", out="unused", optimizer="adam"))


def test_adamw_with_clipping_trains_saves_and_loads(tmp_path, monkeypatch):
    """stt-train --optimizer adamw --clipnorm: the run's optimizer is what the flags say, every variable of
    the STT block at its multiplier (a preset's block is built with the model, so the multiplier must be
    given after it), and the saved model loads with it (a registered class)."""
    import stt_keras
    from stt_keras import optimizers
    from stt_keras.training import train as train_lib

    scaled = []
    real_scale = optimizers.AdamW.scale_learning_rate

    def scale(optimizer, variables, multiplier):
        real_scale(optimizer, variables, multiplier)
        scaled.append((multiplier, set(optimizer._scaled_keys), {optimizer._var_key(v) for v in variables}))

    monkeypatch.setattr(optimizers.AdamW, "scale_learning_rate", scale)
    out = str(tmp_path / "run")
    train_lib.train("stt_psp_tiny", out=out, steps=2, checkpoint_every=2, batch_size=2, synthetic_sequences=2,
                    synthetic_size=(64, 128), val_batches=1, verbose=0, optimizer="adamw", clipnorm=1.0,
                    lr=1e-3, stt_lr_multiplier=10.0)
    model = stt_keras.load_model(os.path.join(out, "last.keras"))
    optimizer = model.optimizer
    assert type(optimizer).__name__ == "AdamW" and type(optimizer).__module__ == "stt_keras.optimizers"
    assert optimizer.global_clipnorm == 1.0 and int(optimizer.iterations) == 2
    assert json.load(open(os.path.join(out, "run.json")))["settings"]["optimizer"] == "adamw"
    [(multiplier, keys, block_keys)] = scaled
    assert multiplier == 10.0 and len(keys) == len(model.stt.trainable_variables) > 0 and keys == block_keys


def test_import_stt_keras_alone_registers_the_optimizers():
    """A new process that imports only stt_keras can load a model trained with `stt-train --optimizer`:
    the optimizer classes are registered on import (without it: "Could not locate class AdamW")."""
    code = ("import keras, stt_keras; print([keras.saving.get_registered_object(f'stt_keras>{name}').__module__ "
            "for name in ('SGD', 'AdamW')])")
    loaded = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    assert loaded.returncode == 0 and "['stt_keras.optimizers', 'stt_keras.optimizers']" in loaded.stdout, \
        loaded.stderr[-2000:]


def test_the_recipe_stages_damage_and_block_learning_rate(tmp_path, monkeypatch):
    """Target damage skips the per-frame stage; the recipe's STT stage runs at 2x --lr and trains its block at
    5x that unless --stt-lr-multiplier says otherwise, and every other run (stored settings too) at 1x."""
    with pytest.raises(UserError, match="--target-damage must be a probability"):
        check_config(TrainConfig("stt_psp_tiny", out="unused", target_damage=1.5))
    from stt_keras.training import train as train_lib

    stages = []
    real_run = train_lib.run

    def fake_run(config):
        if config.per_frame_steps:
            return real_run(config)
        settings = train_lib.run_settings(config)
        stages.append((config.preset, config.target_damage, settings["lr"], settings["stt_lr_multiplier"]))

    monkeypatch.setattr(train_lib, "run", fake_run)
    train_lib.run(TrainConfig("stt_psp_tiny", out=str(tmp_path), per_frame_steps=2, target_damage=0.5))
    assert stages == [("psp_tiny", 0.0, 0.01, 1.0), ("stt_psp_tiny", 0.5, 0.02, 5.0)]
    stages.clear()
    train_lib.run(TrainConfig("stt_psp_tiny", out=str(tmp_path), per_frame_steps=2, stt_lr_multiplier=3.0, lr=0.004))
    assert stages == [("psp_tiny", 0.0, 0.004, 3.0), ("stt_psp_tiny", 0.0, 0.008, 3.0)]  # (no block in the first)
    assert train_lib.run_settings(TrainConfig("stt_psp_tiny", out="unused"))["stt_lr_multiplier"] == 1.0
