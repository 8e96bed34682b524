"""Bad model files, crafted configs, datasets with holes and stt-eval inputs that used to give NaN (issue 14)."""

import json
import os
import subprocess
import sys
import zipfile

import cv2
import numpy as np
import pytest

import stt_keras
from stt_keras.utils.errors import ModelFileError, UserError
from stt_keras.models import STTSegmenter

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """An untrained stt_psp_tiny (7 synthetic classes) saved as .keras."""
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=7)
    model(np.zeros((1, 4, 64, 128, 3), np.uint8))
    path = tmp_path_factory.mktemp("model") / "m.keras"
    model.save(str(path))
    return str(path)


# ------------------------------------------------------------ model files
def test_damaged_or_foreign_model_files_are_named(saved_model, tmp_path):
    import keras

    data = open(saved_model, "rb").read()
    cases = {
        "empty.keras": (b"", "is empty"),
        "truncated.keras": (data[: len(data) // 2], "not a .keras archive"),
        "text.keras": (b"hello, not a model", "not a .keras archive"),
        "weights.keras": (b"\x89HDF\r\n\x1a\n" + b"\0" * 100, "HDF5"),
    }
    for name, (content, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(content)
        with pytest.raises(ModelFileError, match=message) as error:
            stt_keras.load_model(str(path))
        assert name in str(error.value) and "\n" not in str(error.value)
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as archive:
        archive.writestr("readme.txt", "a zip, not a model")
    with pytest.raises(ModelFileError, match="not a Keras model"):
        stt_keras.load_model(str(tmp_path / "other.keras"))
    corrupt = bytearray(data)  # flip bytes inside the stored weights: the zip CRC catches it
    middle = len(corrupt) // 2
    corrupt[middle:middle + 64] = bytes(b ^ 0xFF for b in corrupt[middle:middle + 64])
    (tmp_path / "flipped.keras").write_bytes(bytes(corrupt))
    with pytest.raises(ModelFileError, match="flipped.keras"):
        stt_keras.load_model(str(tmp_path / "flipped.keras"))
    plain = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
    plain.save(str(tmp_path / "plain.keras"))
    with pytest.raises(ModelFileError, match="not an stt-keras STTSegmenter"):
        stt_keras.load_model(str(tmp_path / "plain.keras"))
    with pytest.raises(ModelFileError, match="is a folder"):
        stt_keras.load_model(str(tmp_path))
    with pytest.raises(FileNotFoundError):
        stt_keras.load_model(str(tmp_path / "missing.keras"))


@pytest.mark.parametrize("tool", ["stt_keras.export.cli", "stt_keras.training.evaluate"])
def test_clis_report_a_bad_model_in_one_line(tmp_path, tool):
    (tmp_path / "empty.keras").write_bytes(b"")
    result = subprocess.run([sys.executable, "-m", tool, "--model", str(tmp_path / "empty.keras"),
                             "--out", str(tmp_path / "o")], env=ENV, capture_output=True, text=True, cwd=str(tmp_path))
    prog = "stt-export" if tool == "stt_keras.export.cli" else "stt-eval"
    assert result.returncode == 2, result.stderr[-2000:]
    ours = [line for line in result.stderr.splitlines() if line.startswith(prog) or "Traceback" in line]
    assert ours == [f"{prog}: error: model file {tmp_path / 'empty.keras'} is empty (0 bytes)."]


def _with_config(source, target, edit):
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            dst.writestr(item, data)


def test_crafted_backbone_weights_are_never_fetched_or_read(saved_model, tmp_path, monkeypatch):
    import keras_hub

    calls = []

    def spy(*args, **kwargs):
        calls.append(args)
        raise AssertionError("from_preset must not be called while loading a saved model")

    monkeypatch.setattr(keras_hub.models.ResNetBackbone, "from_preset", spy)
    (tmp_path / "preset").mkdir()
    for target in (str(tmp_path / "preset"), "https://attacker.example/preset", "hf://attacker/preset"):
        def edit(config):
            config["config"]["encoder"]["config"]["backbone_weights"] = target

        crafted = tmp_path / "crafted.keras"
        _with_config(saved_model, crafted, edit)
        model = stt_keras.load_model(str(crafted), compile=False)
        assert model.num_classes == 7
    # ResNetFeatures itself deserialised with `weights` (e.g. as a crafted encoder) reads nothing either.
    from stt_keras.models import ResNetFeatures

    layer = ResNetFeatures.from_config({"variant": "resnet_tiny", "output_stride": 8, "weights": str(tmp_path / "preset")})
    assert layer.variant == "resnet_tiny"
    assert calls == []


# ------------------------------------------------------------ datasets
def _frame(path, value):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(path, np.full((16, 32, 3), value, np.uint8))


def test_missing_frame_inside_a_folder_sequence_is_named(tmp_path):
    from stt_keras.data import folder_samples

    root = str(tmp_path)
    for i in (0, 1, 2, 4, 5, 6):  # img_003 is missing
        _frame(os.path.join(root, "frames", "walk", f"img_{i:03d}.png"), 10 * i)
    os.makedirs(os.path.join(root, "labels", "walk"))
    for i in (4, 6):
        cv2.imwrite(os.path.join(root, "labels", "walk", f"img_{i:03d}.png"), np.ones((16, 32), np.uint8))
    with pytest.raises(FileNotFoundError, match="img_003.png"):
        folder_samples(root, num_key_frames=2)
    samples = folder_samples(root, num_key_frames=2, skip_incomplete=True)
    assert samples.skipped == 1  # img_004 needs img_003; img_006 needs 004, 005: fine
    assert [os.path.basename(p) for p in samples[0][0]] == ["img_004.png", "img_005.png", "img_006.png"]
    # Frames numbered every 2 (a sub-sampled video) are consecutive, not missing.
    root2 = str(tmp_path / "every2")
    for i in (0, 2, 4, 6):
        _frame(os.path.join(root2, "frames", "s", f"{i:05d}.png"), i)
    os.makedirs(os.path.join(root2, "labels", "s"))
    cv2.imwrite(os.path.join(root2, "labels", "s", "00006.png"), np.ones((16, 32), np.uint8))
    assert [os.path.basename(p) for p in folder_samples(root2, num_key_frames=3)[0][0]] == [
        "00000.png", "00002.png", "00004.png", "00006.png"]


# ------------------------------------------------------------ stt-eval
@pytest.mark.parametrize("argv, message", [
    (["--max-sequences", "0"], "--max-sequences must be at least 1"),
    (["--synthetic-size", "64"], "--synthetic-size must look like 128x256"),
    (["--synthetic-size", "0x64"], "--synthetic-size must be positive"),
    (["--synthetic-sequences", "0"], "--synthetic-sequences must be at least 1"),
    (["--dataset", "cityscapes"], "--data-root is required"),
])
def test_stt_eval_refuses_inputs_that_give_no_result(saved_model, tmp_path, argv, message):
    from stt_keras.training.evaluate import build_parser, run

    with pytest.raises(UserError, match=message) as error:
        run(build_parser().parse_args(["--model", saved_model, "--out", str(tmp_path / "eval"), *argv]))
    assert error.value.code == 2 and not (tmp_path / "eval").exists()


def test_stt_eval_cityscapes_root_without_labels(saved_model, tmp_path):
    from stt_keras.training.evaluate import build_parser, run

    (tmp_path / "cs" / "leftImg8bit_sequence" / "val" / "x").mkdir(parents=True)
    args = build_parser().parse_args(["--model", saved_model, "--out", str(tmp_path / "eval"), "--dataset",
                                      "cityscapes", "--data-root", str(tmp_path / "cs")])
    with pytest.raises(UserError, match="no Cityscapes labels"):
        run(args)
    assert not (tmp_path / "eval").exists()


def test_stt_eval_never_writes_nan(saved_model, tmp_path, monkeypatch):
    from stt_keras.training import evaluate

    def no_labels(model, sequences, num_classes, max_sequences=None, history="video", vc_protocol="vspw"):
        return {"miou": float("nan"), "per_class_iou": [None] * 7, "tc": 0.5, "tc_occlusion_masked": 0.5,
                "tc_flow": "DIS", "frames_per_second": None, "frames_timed": 0}

    monkeypatch.setattr(evaluate, "evaluate", no_labels)
    args = evaluate.build_parser().parse_args(["--model", saved_model, "--out", str(tmp_path / "eval")])
    with pytest.raises(UserError, match="no labelled frame"):
        evaluate.run(args)
    assert not (tmp_path / "eval").exists()

    def nan_tc(model, sequences, num_classes, max_sequences=None, history="video", vc_protocol="vspw"):
        return {**no_labels(model, sequences, num_classes), "miou": 0.25, "tc": float("nan")}

    monkeypatch.setattr(evaluate, "evaluate", nan_tc)
    evaluate.run(args)
    text = open(tmp_path / "eval" / "results.json").read()
    assert "NaN" not in text and json.loads(text)["tc"] is None and json.loads(text)["miou"] == 0.25
    assert "| TC (DIS) | n/a |" in open(tmp_path / "eval" / "report.md").read()


def test_streaming_rejects_an_empty_frame(saved_model):
    model = stt_keras.load_model(saved_model, compile=False)
    with pytest.raises(ValueError, match="empty dimension"):
        stt_keras.StreamingSegmenter(model).step(np.zeros((0, 128, 3), np.uint8))
