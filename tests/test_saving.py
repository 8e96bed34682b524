"""Saved models load with the library alone; compile() defaults; keras-hub style preset directories."""

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import keras
import numpy as np
import pytest
import tensorflow as tf

import stt_keras
from stt_keras.utils.errors import ModelFileError
from stt_keras.metrics import MeanIoU
from stt_keras.models import STTSegmenter

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
SIZE = (32, 48)


def _batch(seed=0, batch=2, frames=4, classes=3):
    rng = np.random.default_rng(seed)
    clips = rng.integers(0, 256, (batch, frames, *SIZE, 3)).astype(np.uint8)
    labels = rng.integers(0, classes, (batch, *SIZE)).astype(np.uint8)
    labels[:, :5] = 255  # unlabelled rows
    return clips, labels


def _ce(logits, labels, ignore=255):
    """NumPy sparse cross-entropy from logits, mean over the labelled pixels."""
    logits = np.asarray(logits, np.float64)
    logp = logits - logits.max(-1, keepdims=True)
    logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
    valid = labels != ignore
    picked = np.take_along_axis(logp, np.where(valid, labels, 0)[..., None].astype(np.int64), -1)[..., 0]
    return float(-(picked * valid).sum() / valid.sum())


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """stt_psp_tiny, compile() with its defaults, fit for one step, saved as .keras."""
    keras.utils.set_random_seed(1)
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=3)
    model.compile()
    clips, labels = _batch()
    model.fit(clips, labels, batch_size=2, epochs=1, verbose=0)
    folder = tmp_path_factory.mktemp("saved")
    path = str(folder / "last.keras")
    model.save(path)
    np.savez(folder / "batch.npz", clips=clips, labels=labels)
    return model, path, folder


def _run_alone(code, *args):
    """Runs `code` in a fresh interpreter from an empty folder, so `training` cannot be imported by accident."""
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=ENV, capture_output=True,
                            text=True, cwd=os.path.dirname(args[0]))
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


LOAD_ALONE = """
    import json, sys
    import keras, numpy as np
    import stt_keras
    batch = np.load(sys.argv[1])
    results = []
    for path in sys.argv[2:]:
        model = keras.saving.load_model(path)
        loss, miou = model.evaluate(batch["clips"], batch["labels"], batch_size=2, verbose=0)
        results.append({
            "loss": loss, "miou": miou, "iterations": int(model.optimizer.iterations),
            "loss_config": model.loss.get_config(), "metric": type(model.metrics[-1].metrics[0]).__module__,
            "logits": model.predict(batch["clips"][:1], verbose=0)[0, 10, 10].tolist()})
    top_level = sorted({m.split(".")[0] for m in sys.modules} & {"training", "export", "edge_demo"})
    print(json.dumps({"top_level": top_level, "results": results}))
"""


def test_compiled_model_loads_with_the_library_alone(fitted, tmp_path):
    """A .keras file loads compiled with keras + stt_keras only; so does one naming the old metric module
    (models saved before MeanIoU moved name "training.metrics", under the same registered name)."""
    model, path, folder = fitted
    old = str(tmp_path / "old.keras")
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(old, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                assert b'"stt_keras.metrics"' in data
                data = data.replace(b'"stt_keras.metrics"', b'"training.metrics"')
            dst.writestr(item, data)
    got = _run_alone(LOAD_ALONE, str(folder / "batch.npz"), path, old)
    assert got["top_level"] == []  # neither training nor export nor edge_demo was imported
    clips, labels = _batch()
    loss, miou = model.evaluate(clips, labels, batch_size=2, verbose=0)
    for result in got["results"]:
        np.testing.assert_allclose(result["loss"], loss, rtol=1e-5)
        np.testing.assert_allclose(result["miou"], miou, rtol=1e-5)
        assert result["iterations"] == 1  # the optimizer state came back
        assert result["loss_config"]["from_logits"] is True and result["loss_config"]["ignore_class"] == 255
        assert result["metric"] == "stt_keras.metrics"
        np.testing.assert_allclose(result["logits"], model.predict(clips[:1], verbose=0)[0, 10, 10], rtol=1e-5,
                                   atol=1e-6)


def test_library_imports_nothing_above_it():
    code = "import sys, json, stt_keras; print(json.dumps(sorted({m.split('.')[0] for m in sys.modules} & " \
           "{'training', 'export', 'edge_demo'})))"
    result = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, cwd="/")
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


# ------------------------------------------------------------------ compile()
def test_compile_defaults_loss_equals_hand_computation():
    keras.utils.set_random_seed(2)
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=3, aux_weight=0.4)
    model.compile()
    assert isinstance(model.optimizer, keras.optimizers.SGD)
    clips, labels = _batch(3)
    logits = model(clips, training=True)
    aux = model._aux_logits
    assert aux is not None  # the PSP decoder's auxiliary head ran
    loss = float(model.compute_loss(clips, labels, logits, training=True))
    expected = _ce(logits, labels) + 0.4 * _ce(aux, labels)
    np.testing.assert_allclose(loss, expected, rtol=1e-5)
    # evaluate: no auxiliary loss, and the metric is the mean IoU of the argmax.
    loss, miou = model.evaluate(clips, labels, batch_size=2, verbose=0)
    predicted = model.predict(clips, verbose=0)
    np.testing.assert_allclose(loss, _ce(predicted, labels), rtol=1e-5)
    reference = MeanIoU(3)
    reference.update_state(labels, predicted.argmax(-1))
    np.testing.assert_allclose(miou, float(reference.result()), rtol=1e-6)


def test_a_loss_function_is_used_for_the_aux_head_too():
    keras.utils.set_random_seed(4)
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=3, aux_weight=0.25)

    def focal_free(y_true, y_pred):  # per-pixel values, as a plain Keras loss function returns
        return keras.losses.sparse_categorical_crossentropy(y_true, y_pred, from_logits=True, ignore_class=255)

    model.compile(loss=focal_free)
    clips, labels = _batch(5)
    logits = model(clips, training=True)
    aux = model._aux_logits
    loss = float(model.compute_loss(clips, labels, logits, training=True))
    np.testing.assert_allclose(loss, _ce(logits, labels) + 0.25 * _ce(aux, labels), rtol=1e-5)


@pytest.mark.parametrize("loss", [
    "sparse_categorical_crossentropy",
    "categorical_crossentropy",
    keras.losses.SparseCategoricalCrossentropy(),
    keras.losses.sparse_categorical_crossentropy,
    [keras.losses.SparseCategoricalCrossentropy(from_logits=True)],
])
def test_compile_refuses_losses_that_would_train_the_wrong_thing(loss):
    model = STTSegmenter.from_preset("psp_tiny", num_classes=3)
    with pytest.raises(ValueError, match=r"from_logits=True, ignore_class=255"):
        model.compile(loss=loss)


def test_compile_accepts_a_from_logits_loss_object_and_explicit_metrics():
    model = STTSegmenter.from_preset("psp_tiny", num_classes=3)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=255),
                  metrics=None)
    assert isinstance(model.optimizer, keras.optimizers.Adam)
    model.compile(ignore_label=0)
    assert model.loss.get_config()["ignore_class"] == 0


# ------------------------------------------------------------------- presets
@pytest.fixture(scope="module")
def preset_dir(fitted, tmp_path_factory):
    model, _, _ = fitted
    directory = str(tmp_path_factory.mktemp("presets") / "my_model")
    model.save_to_preset(directory, classes=["road", "car", "sky"], colors=[[1, 2, 3], [4, 5, 6], [7, 8, 9]])
    return directory


def test_preset_round_trip_gives_identical_outputs(fitted, preset_dir):
    model, _, _ = fitted
    assert sorted(os.listdir(preset_dir)) == ["config.json", "metadata.json", "model.weights.h5"]
    metadata = json.load(open(os.path.join(preset_dir, "metadata.json")))
    assert metadata["num_classes"] == 3 and metadata["classes"] == ["road", "car", "sky"] and "labels" not in metadata
    assert metadata["architecture"] == "stt_psp_tiny" and metadata["stt_keras_version"] == stt_keras.__version__
    assert metadata["parameter_count"] == model.count_params()
    assert "compile_config" not in json.load(open(os.path.join(preset_dir, "config.json")))
    clips = _batch(7)[0]
    expected = model(clips).numpy()  # eager calls: the same kernels on both sides
    loaded = STTSegmenter.from_preset(preset_dir)
    for ours, theirs in zip(model.weights, loaded.weights, strict=True):
        assert ours.path.removeprefix("stt_psp_tiny/") == theirs.path.removeprefix("stt_psp_tiny/")
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    np.testing.assert_array_equal(loaded(clips).numpy(), expected)
    assert loaded.preset_metadata["colors"][2] == [7, 8, 9]
    np.testing.assert_array_equal(stt_keras.load_model(preset_dir)(clips).numpy(), expected)
    fresh = STTSegmenter.from_preset(preset_dir, load_weights=False)
    assert not np.allclose(fresh(clips).numpy(), expected)
    # and it trains on: compile() defaults on a loaded preset.
    loaded.compile()
    loaded.fit(clips, _batch(7)[1], batch_size=2, epochs=1, verbose=0)


def test_preset_loads_in_a_fresh_process(preset_dir):
    code = """
        import json, sys, numpy as np
        import stt_keras
        from stt_keras.models import STTSegmenter
        model = STTSegmenter.from_preset(sys.argv[1])
        print(json.dumps({"num_classes": model.num_classes, "classes": model.preset_metadata["classes"]}))
    """
    got = _run_alone(code, preset_dir)
    assert got == {"num_classes": 3, "classes": ["road", "car", "sky"]}


def test_save_to_preset_replaces_a_preset_but_never_foreign_files(fitted, tmp_path, monkeypatch):
    model, _, _ = fitted
    directory = tmp_path / "p"
    model.save_to_preset(str(directory))
    before = {name: (directory / name).read_bytes() for name in os.listdir(directory)}
    # A failure half way leaves the earlier preset as it was and no partial folder behind.
    monkeypatch.setattr(type(model), "save_weights", lambda self, path: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        model.save_to_preset(str(directory), classes=["a", "b", "c"])
    monkeypatch.undo()
    assert {name: (directory / name).read_bytes() for name in os.listdir(directory)} == before
    assert sorted(os.listdir(tmp_path)) == ["p"]
    model.save_to_preset(str(directory), classes=["a", "b", "c"])  # replacing an earlier preset is fine
    assert json.load(open(directory / "metadata.json"))["classes"] == ["a", "b", "c"]
    with pytest.warns(DeprecationWarning, match="classes="):  # the keyword's deprecated name still answers
        model.save_to_preset(str(directory), labels=["x", "y", "z"])
    metadata = json.load(open(directory / "metadata.json"))
    assert metadata["classes"] == ["x", "y", "z"] and "labels" not in metadata
    metadata["labels"] = metadata.pop("classes")  # a preset written when the key was "labels" loads with "classes"
    (directory / "metadata.json").write_text(json.dumps(metadata))
    assert STTSegmenter.from_preset(str(directory)).preset_metadata["classes"] == ["x", "y", "z"]
    with pytest.raises(ValueError, match="`classes` only"):
        model.save_to_preset(str(directory), classes=["a", "b", "c"], labels=["a", "b", "c"])
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="todo.txt"):
        model.save_to_preset(str(other))
    assert (other / "todo.txt").read_text() == "mine"
    with pytest.raises(ValueError, match="2 names but the model has 3 classes"):
        model.save_to_preset(str(tmp_path / "q"), classes=["a", "b"])


def test_preset_errors_name_the_problem(fitted, preset_dir, tmp_path):
    import shutil

    model, path, _ = fitted
    with pytest.raises(FileNotFoundError, match="No preset directory at .*missing"):
        STTSegmenter.from_preset(str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="not a built-in preset .*stt_psp18.* and not a preset directory"):
        STTSegmenter.from_preset("stt_psp_huge")
    with pytest.raises(ValueError, match="is a file, not a preset directory; load a .keras file with"):
        STTSegmenter.from_preset(path)
    with pytest.raises(ValueError, match="pass num_classes"):
        STTSegmenter.from_preset("stt_psp_tiny")
    with pytest.raises(ValueError, match=r"\['top_ratio'\] apply to built-in preset names only"):
        STTSegmenter.from_preset(preset_dir, top_ratio=0.5)
    with pytest.raises(ValueError, match="has 3 classes, not num_classes=5"):
        STTSegmenter.from_preset(preset_dir, num_classes=5)
    broken = tmp_path / "broken"
    shutil.copytree(preset_dir, broken)
    weights = broken / "model.weights.h5"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelFileError, match="model.weights.h5 does not match its checksum"):
        STTSegmenter.from_preset(str(broken))
    weights.unlink()
    with pytest.raises(ModelFileError, match="incomplete: model.weights.h5 missing"):
        stt_keras.load_model(str(broken))
    # A built-in name keeps today's meaning.
    assert STTSegmenter.from_preset("stt_psp_tiny", num_classes=4).num_classes == 4


def test_preset_without_checksums_is_refused_unless_verify_false(fitted, preset_dir, tmp_path):
    """Integrity is required: a metadata.json without usable "files" checksums is refused (one line),
    so that swapped weights are never loaded silently; verify=False is the explicit opt-out."""
    import shutil

    model, _, _ = fitted
    frames = np.random.default_rng(0).integers(0, 256, (1, model.num_key_frames + 1, 64, 64, 3)).astype(np.uint8)
    other = STTSegmenter.from_config(model.get_config())  # the same architecture, other weights
    other(frames)

    def variant(name, change):
        folder = tmp_path / name
        shutil.copytree(preset_dir, folder)
        metadata = json.loads((folder / "metadata.json").read_text())
        change(metadata)
        (folder / "metadata.json").write_text(json.dumps(metadata))
        return str(folder)

    cases = {
        "no_files": (lambda m: m.pop("files"), r'records no "files" checksums.*verify=False'),
        "files_list": (lambda m: m.update(files=[["config.json", "x"]]), r'"files" in metadata.json must map .* not a list'),
        "no_bytes": (lambda m: m["files"]["model.weights.h5"].pop("bytes"), r'entry \{"sha256".*for model.weights.h5 '
                                                                              r'\(needs "sha256" and "bytes"\)'),
        "no_weights_entry": (lambda m: m["files"].pop("model.weights.h5"), "has no entry for model.weights.h5"),
        "bytes_as_text": (lambda m: m["files"]["config.json"].update(bytes="12"), "for config.json"),
    }
    for name, (change, message) in cases.items():
        folder = variant(name, change)
        for load in (STTSegmenter.from_preset, stt_keras.load_model):
            with pytest.raises(ModelFileError, match=message) as caught:
                load(folder)
            assert "\n" not in str(caught.value), name
    # Swapped weights with the checksums deleted: refused; loaded only when the caller opts out.
    swapped = variant("swapped", lambda m: m.pop("files"))
    other.save_weights(os.path.join(swapped, "model.weights.h5"))
    with pytest.raises(ModelFileError, match="records no"):
        STTSegmenter.from_preset(swapped)
    loaded = STTSegmenter.from_preset(swapped, verify=False)
    np.testing.assert_allclose(loaded(frames), other(frames), atol=1e-5)
    assert stt_keras.load_model(swapped, verify=False).num_classes == 3
    # verify=False on an intact preset changes nothing.
    np.testing.assert_allclose(STTSegmenter.from_preset(preset_dir, verify=False)(frames), model(frames), atol=1e-5)


@pytest.mark.parametrize("name", ["stt_bise_tiny", "psp_tiny"])
def test_preset_round_trip_of_bisenet_and_a_per_frame_model(name, tmp_path):
    keras.utils.set_random_seed(6)
    model = STTSegmenter.from_preset(name, num_classes=4)
    x = np.random.default_rng(0).integers(0, 256, (1, 4, 64, 64, 3) if model.stt else (1, 64, 64, 3)).astype(np.uint8)
    expected = model(x).numpy()
    model.save_to_preset(str(tmp_path / name))
    loaded = STTSegmenter.from_preset(str(tmp_path / name))
    assert len(loaded.weights) == len(model.weights)
    np.testing.assert_array_equal(loaded(x).numpy(), expected)
