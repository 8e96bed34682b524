"""Segmentation models: backbones, heads, STTSegmenter, presets, saving, training, streaming."""

import json
import zipfile

import numpy as np
import pytest
import keras
import keras_hub
import tensorflow as tf

from stt_keras import StreamingSegmenter
from stt_keras.models import STTSegmenter, list_presets
from stt_keras.models.blocks import adaptive_average_pool
from stt_keras.models.resnet_features import RESNET_VARIANTS, ResNetFeatures

H, W, CLASSES = 64, 64, 5


def clip(batch=1, frames=4, seed=0, h=H, w=W):
    return np.random.default_rng(seed).integers(0, 256, size=(batch, frames, h, w, 3)).astype("uint8")


# ------------------------------------------------------------- backbones
def test_output_strides_share_weights_and_early_stages():
    x = np.random.default_rng(0).uniform(0, 255, (1, 64, 64, 3)).astype("float32")
    models = {s: ResNetFeatures("resnet_tiny", s) for s in (8, 16, 32)}
    for m in models.values():
        m(x)
    weights = models[32].get_weights()
    for s in (8, 16):
        assert [w.shape for w in models[s].get_weights()] == [w.shape for w in weights]
        models[s].set_weights(weights)
    out = {s: m(x) for s, m in models.items()}
    for s in (8, 16):
        np.testing.assert_allclose(out[s]["P3"], out[32]["P3"], atol=1e-5)  # stages before the change agree
    assert out[8]["P5"].shape == (1, 8, 8, 128)
    assert out[16]["P5"].shape == (1, 4, 4, 128)
    assert out[32]["P5"].shape == (1, 2, 2, 128)


def test_dilation_is_applied_at_output_stride_8():
    f = ResNetFeatures("resnet_tiny", 8)
    rates = {l.name: l.dilation_rate for l in f.backbone.layers if isinstance(l, keras.layers.Conv2D) and l.kernel_size == (3, 3)}
    assert rates["stack2_block0_1_conv"] == (2, 2)
    assert rates["stack3_block0_2_conv"] == (4, 4)
    assert rates["stack1_block0_1_conv"] == (1, 1)
    # An impulse reaches farther in P5 than it would without dilation.
    x = np.zeros((1, 192, 192, 3), "float32")
    x[0, 96, 96] = 255.0
    base = f(np.zeros_like(x))["P5"].numpy()
    reach = np.abs(f(x)["P5"].numpy() - base).max(axis=(0, 3)) > 1e-6
    f2 = ResNetFeatures("resnet_tiny", 8)
    for layer in f2.backbone.layers:
        if isinstance(layer, keras.layers.Conv2D):
            layer.dilation_rate = (1, 1)
    f2(x)
    f2.set_weights(f.get_weights())
    reach2 = np.abs(f2(x)["P5"].numpy() - f2(np.zeros_like(x))["P5"].numpy()).max(axis=(0, 3)) > 1e-6
    assert reach.sum() > reach2.sum()


def test_imagenet_weights_load_through_from_preset_from_a_local_directory(tmp_path):
    cfg = {k: v for k, v in RESNET_VARIANTS["resnet18"].items() if k != "preset"}
    source = keras_hub.models.ResNetBackbone(**cfg, stackwise_num_strides=[1, 2, 2, 2])
    rng = np.random.default_rng(0)
    source.set_weights([rng.normal(size=w.shape).astype("float32") for w in source.get_weights()])
    source.save_to_preset(str(tmp_path / "resnet18_preset"))
    features = ResNetFeatures("resnet18", 8, weights=str(tmp_path / "resnet18_preset"))
    for a, b in zip(features.backbone.get_weights(), source.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_unreachable_preset_gives_a_clear_error(tmp_path):
    with pytest.raises(RuntimeError, match="save_to_preset"):
        ResNetFeatures("resnet18", 8, weights=str(tmp_path / "missing_preset"))


def test_preset_of_another_architecture_is_rejected(tmp_path):
    cfg = {k: v for k, v in RESNET_VARIANTS["resnet_tiny"].items() if k != "preset"}
    keras_hub.models.ResNetBackbone(**cfg, stackwise_num_strides=[1, 2, 2, 2]).save_to_preset(str(tmp_path / "tiny"))
    with pytest.raises(ValueError, match="does not fit resnet18"):
        ResNetFeatures("resnet18", 8, weights=str(tmp_path / "tiny"))


@pytest.mark.parametrize("h, w", [(7, 10), (6, 6), (13, 5)])
def test_adaptive_average_pool_matches_pytorch_definition(h, w):
    x = np.random.default_rng(1).normal(size=(2, h, w, 3)).astype("float32")
    for bins in (1, 2, 3, 6):
        ours = adaptive_average_pool(tf.constant(x), bins).numpy()
        expected = np.zeros((2, bins, bins, 3), "float32")
        for i in range(bins):
            for j in range(bins):
                y0, y1 = (i * h) // bins, -(-((i + 1) * h) // bins)
                x0, x1 = (j * w) // bins, -(-((j + 1) * w) // bins)
                expected[:, i, j] = x[:, y0:y1, x0:x1].mean(axis=(1, 2))
        np.testing.assert_allclose(ours, expected, atol=1e-5)


# --------------------------------------------------------------- presets
def test_presets_listed():
    names = set(list_presets())
    for required in ("stt_psp18", "stt_psp50", "stt_psp101", "stt_bise18", "stt_bise34",
                     "psp18", "psp50", "psp101", "bise18", "bise34", "stt_psp_tiny", "psp_tiny"):
        assert required in names


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="stt_psp18"):
        STTSegmenter.from_preset("stt_psp19", num_classes=19)


def test_unknown_override_is_rejected():
    with pytest.raises(ValueError, match="top_ratio"):
        STTSegmenter.from_preset("stt_psp_tiny", num_classes=3, top_raito=0.3)
    with pytest.raises(ValueError, match="per-frame"):
        STTSegmenter.from_preset("psp_tiny", num_classes=3, top_ratio=0.3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["stt_psp18", "stt_bise18", "psp18", "stt_psp50", "psp101", "stt_bise34"])
def test_paper_presets_build(name):
    model = STTSegmenter.from_preset(name, num_classes=19)
    frames = 8 if name.startswith("stt") else 1
    x = clip(frames=frames, h=64, w=128)
    out = model(x if frames > 1 else x[:, 0])
    assert out.shape == (1, 64, 128, 19)


# ------------------------------------------------------- the clip model
@pytest.mark.parametrize("name", ["stt_psp_tiny", "stt_bise_tiny"])
def test_clip_model_is_encoder_stt_decoder(name):
    model = STTSegmenter.from_preset(name, num_classes=CLASSES)
    x = clip()
    out = model(x).numpy()
    enc = [model.encoder(x[:, i]) for i in range(4)]
    keys = tf.stack([e["features"] for e in enc[:3]], axis=1)
    mixed = model.stt(enc[3]["features"], keys)
    skips = {k: v for k, v in enc[3].items() if k != "features"}
    expected = model.decoder(mixed, skips, output_size=(H, W)).numpy()
    np.testing.assert_allclose(out, expected, atol=1e-4)
    # The past matters: other key frames change the prediction.
    other = x.copy()
    other[:, :3] = clip(seed=5)[:, :3]
    assert np.abs(model(other).numpy() - out).max() > 1e-4


def test_top_ratio_zero_equals_the_per_frame_model():
    stt = STTSegmenter.from_preset("stt_psp_tiny", num_classes=CLASSES, top_ratio=0.0)
    base = STTSegmenter.from_preset("psp_tiny", num_classes=CLASSES)
    x = clip()
    stt(x)
    base(x[:, -1])
    base.encoder.set_weights(stt.encoder.get_weights())
    base.decoder.set_weights(stt.decoder.get_weights())
    np.testing.assert_allclose(stt(x).numpy(), base(x[:, -1]).numpy(), atol=1e-5)
    np.testing.assert_allclose(base(x).numpy(), base(x[:, -1]).numpy(), atol=1e-6)  # a clip uses its last frame


def test_keras_round_trip_in_safe_mode(tmp_path):
    for name in ("stt_psp_tiny", "stt_bise_tiny", "psp_tiny"):
        model = STTSegmenter.from_preset(name, num_classes=CLASSES)
        x = clip() if name.startswith("stt") else clip()[:, -1]
        expected = model(x).numpy()
        path = str(tmp_path / f"{name}.keras")
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        np.testing.assert_array_equal(loaded(x).numpy(), expected)


def _with_edited_config(path, new_path, edit):
    """A copy of the .keras file `path` at `new_path` whose config.json went through `edit(config)` (in place):
    a file as earlier code wrote it."""
    with zipfile.ZipFile(path) as archive:
        files = {n: archive.read(n) for n in archive.namelist()}
    config = json.loads(files["config.json"])
    edit(config)
    files["config.json"] = json.dumps(config).encode()
    with zipfile.ZipFile(new_path, "w") as archive:
        for n, data in files.items():
            archive.writestr(n, data)
    return new_path


@pytest.mark.parametrize("name", ["stt_bise_tiny", "psp_tiny"])
def test_files_saved_before_the_build_contract_still_load(name, tmp_path):
    """Earlier files carry no usable build config for the encoder and decoder: the model's build() finishes them."""
    model = STTSegmenter.from_preset(name, num_classes=CLASSES)
    x = clip() if name.startswith("stt") else clip()[:, -1]
    expected = model(x).numpy()
    path = str(tmp_path / "new.keras")
    model.save(path)

    def earlier_build_configs(config):
        for key in ("encoder", "decoder"):  # the build configs the earlier code wrote
            sub = config["config"][key]
            if sub["class_name"] == "PSPNetDecoder":
                sub["build_config"] = {"input_shape": sub["build_config"]["shapes_dict"]["features_shape"]}
            else:
                sub["build_config"] = {"shapes_dict": {}}

    old = _with_edited_config(path, str(tmp_path / "old.keras"), earlier_build_configs)
    loaded = keras.saving.load_model(old, safe_mode=True)
    np.testing.assert_array_equal(loaded(x).numpy(), expected)
    assert loaded.decoder.aux_classifier.built and len(loaded.weights) == len(model.weights)


def _forbid_calls(monkeypatch, model):
    """Makes running the model or any of its parts an error (undone by monkeypatch.undo())."""
    def ran(self, *args, **kwargs):
        raise AssertionError(f"{type(self).__name__}.call ran; building and loading must not run the model")

    for part in (model, model.encoder, model.decoder, model.stt):
        if part is not None:
            monkeypatch.setattr(type(part), "call", ran)
    monkeypatch.setattr(keras.Model, "__call__", ran)  # the KerasHub backbone inside the encoder


@pytest.mark.parametrize("name", ["stt_psp_tiny", "psp_tiny", "stt_bise_tiny", "bise_tiny"])
def test_build_makes_from_shapes_the_variables_a_first_call_makes(name, monkeypatch):
    """build() runs nothing and creates what a first call creates: the same variables (paths, shapes, order and,
    from the same seed, values), so the model gives the same logits and files written by either fit the other."""
    x = clip() if name.startswith("stt") else clip()[:, -1]
    keras.utils.set_random_seed(7)
    called = STTSegmenter.from_preset(name, num_classes=CLASSES)
    expected = called(x).numpy()
    keras.utils.set_random_seed(7)
    model = STTSegmenter.from_preset(name, num_classes=CLASSES)
    _forbid_calls(monkeypatch, model)
    model.build()
    monkeypatch.undo()
    assert model.built and model.decoder.aux_classifier.built
    assert [(w.path, tuple(w.shape)) for w in model.weights] == [(w.path, tuple(w.shape)) for w in called.weights]
    for ours, theirs in zip(model.weights, called.weights):
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.path)
    np.testing.assert_array_equal(model(x).numpy(), expected)
    assert model.get_build_config() == {"input_shape": [None, 4, None, None, 3] if name.startswith("stt")
                                        else [None, None, None, 3]}


@pytest.mark.parametrize("name", ["stt_psp_tiny", "bise_tiny"])
def test_files_load_built_without_running_the_model(name, tmp_path, monkeypatch):
    """A .keras file, one whose build config holds the first batch's shape (as files written before build()
    existed do) and a preset directory whose config.json has no build config all load built, running nothing."""
    model = STTSegmenter.from_preset(name, num_classes=CLASSES)
    x = clip() if name.startswith("stt") else clip()[:, -1]
    expected = model(x).numpy()
    path = str(tmp_path / "model.keras")
    model.save(path)

    def first_batch_build_config(config):
        assert config["build_config"] == model.get_build_config()
        config["build_config"] = {"input_shape": list(x.shape)}

    old = _with_edited_config(path, str(tmp_path / "old.keras"), first_batch_build_config)
    preset = str(tmp_path / "preset")
    model.save_to_preset(preset)
    with open(f"{preset}/config.json") as f:
        config = json.load(f)
    del config["build_config"]
    with open(f"{preset}/config.json", "w") as f:
        json.dump(config, f)
    _forbid_calls(monkeypatch, model)
    loaded = [keras.saving.load_model(path, safe_mode=True), keras.saving.load_model(old, safe_mode=True),
              STTSegmenter.from_preset(preset, verify=False)]
    monkeypatch.undo()
    for other in loaded:
        assert other.built
        np.testing.assert_array_equal(other(x).numpy(), expected)


def test_build_checks_the_shape_it_is_given():
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=CLASSES)
    for shape, message in (((1, 3, H, W, 3), "T\\+1=4"), ((1, H, W, 3), "clip"), ((1, 4, H, W, 1), "3 \\(RGB\\)")):
        with pytest.raises(ValueError, match=message):
            model.build(shape)
    assert not model.built
    model.build((2, 4, 17, 9, 3))  # any frame size builds the same variables
    other = STTSegmenter.from_preset("stt_psp_tiny", num_classes=CLASSES)
    other.build()
    assert [(w.path, tuple(w.shape)) for w in model.weights] == [(w.path, tuple(w.shape)) for w in other.weights]


@pytest.mark.parametrize(
    "shape, dtype, message",
    [((1, 3, H, W, 3), "uint8", "T\\+1=4"), ((1, 4, H, W, 1), "uint8", "3 \\(RGB\\)"),
     ((1, H, W, 3), "uint8", "clip"), ((1, 4, H, W, 3), "int32", "dtype"), ((1, 4, 0, W, 3), "uint8", "1 pixel")],
)
def test_bad_input_is_named(shape, dtype, message):
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=CLASSES)
    with pytest.raises(ValueError, match=message):
        model(np.zeros(shape, dtype))


# ---------------------------------------------------------------- training
def _input_gradient(stop_key_gradients):
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=CLASSES, stop_key_gradients=stop_key_gradients)
    x = tf.constant(clip().astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(tf.sin(model(x, training=True)))
    return tape.gradient(loss, x).numpy()


def test_gradients_flow_through_every_frame_unless_stopped():
    g = _input_gradient(False)
    assert all(np.abs(g[:, i]).max() > 0 for i in range(4))
    g = _input_gradient(True)
    assert np.abs(g[:, :3]).max() == 0 and np.abs(g[:, 3]).max() > 0


def test_fit_on_clips_reduces_the_loss_and_uses_the_aux_head():
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=CLASSES)
    x = clip(batch=2)
    # Labels that depend on the image: a class per horizontal band.
    y = np.repeat((np.arange(H) * CLASSES // H)[None, :, None], W, axis=2).repeat(2, axis=0).astype("int32")
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=loss)
    history = model.fit(x, y, epochs=8, batch_size=2, verbose=0)
    assert history.history["loss"][-1] < 0.7 * history.history["loss"][0]
    # The aux head adds aux_weight * its loss to the training loss.
    logits = model(x, training=True)
    main = float(loss(y, logits))
    total = float(model.compute_loss(x=x, y=y, y_pred=logits, training=True))
    aux = float(loss(y, model._aux_logits))
    np.testing.assert_allclose(total, main + 0.4 * aux, rtol=1e-4)


def test_a_bisenet_training_step_moves_the_context_batchnorm_once():
    """One fit step updates a context-path BatchNorm once: m' = 0.9 m + 0.1 mean(batch) (twice gave 0.19)."""
    model = STTSegmenter.from_preset("bise_tiny", num_classes=CLASSES)
    x = clip(batch=2)[:, -1]
    model(x)  # builds; inference moves no statistics
    bn = model.decoder.arm32.conv.bn
    # What that BatchNorm normalises in the step: the conv of the encoder's training-mode
    # features (batch statistics: they do not depend on the moving ones, nor change with lr 0).
    pre = model.decoder.arm32.conv.conv(model.encoder(x, training=True)["features"]).numpy().astype("float64")
    old_mean, old_var = bn.moving_mean.numpy(), bn.moving_variance.numpy()
    model.compile(optimizer=keras.optimizers.SGD(0.0), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(x, np.zeros((2, H, W), "int32"), batch_size=2, epochs=1, shuffle=False, verbose=0)
    np.testing.assert_allclose(bn.moving_mean.numpy(), 0.9 * old_mean + 0.1 * pre.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), 0.9 * old_var + 0.1 * pre.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    assert model._aux_logits is not None  # the step did use the auxiliary head


@pytest.mark.parametrize("name", ["psp_tiny", "bise_tiny"])
def test_decoder_returns_logits_and_aux_from_one_pass(name):
    model = STTSegmenter.from_preset(name, num_classes=CLASSES)
    features, skips = model._encode(clip()[:, -1], False)
    logits, aux = model.decoder(features, skips, output_size=(H, W), return_aux=True)
    np.testing.assert_allclose(logits, model.decoder(features, skips, output_size=(H, W)), atol=1e-6)
    # The aux head is built with the rest, before any training call, and differs from the main head.
    assert model.decoder.aux_classifier.built and np.abs(aux.numpy() - logits.numpy()).max() > 1e-3
    no_aux = model.decoder.__class__.from_config({**model.decoder.get_config(), "aux_head": False})
    with pytest.raises(ValueError, match="aux_head=False"):
        no_aux(features, skips, output_size=(H, W), return_aux=True)


# --------------------------------------------------------------- streaming
@pytest.mark.parametrize("name", ["stt_psp_tiny", "stt_bise_tiny"])
def test_streaming_equals_the_clip_model_under_the_first_frame_policy(name):
    model = STTSegmenter.from_preset(name, num_classes=CLASSES)
    video = clip(frames=6, seed=3)[0]  # 6 frames, T = 3
    stream = StreamingSegmenter(model)
    for k in range(1, 7):
        streamed = stream.step(video[k - 1]).numpy()
        past = [video[0]] * max(0, 4 - k) + list(video[max(0, k - 4): k])  # T+1 = 4 frames ending at f_k
        expected = model(np.stack(past)[None]).numpy()[0]
        np.testing.assert_allclose(streamed, expected, atol=2e-4, err_msg=f"frame {k}")
    stream.reset()
    np.testing.assert_allclose(stream.step(video[2]).numpy(), model(np.stack([video[2]] * 4)[None]).numpy()[0], atol=2e-4)


def test_stream_step_is_a_pure_function_of_explicit_state():
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=CLASSES)
    video = clip(frames=3, seed=4)[0]
    state = model.initial_state(1, H, W)
    assert state.shape == (1, 3, H // 8, W // 8, 2 * 128 // 4)  # d_t = 128, reduction 4
    step = tf.function(model.stream_step)
    l1, s1 = step(video[None, 0], state, tf.constant(True))
    l2, s2 = step(video[None, 1], s1, tf.constant(False))
    l2_again, s2_again = step(video[None, 1], s1, tf.constant(False))
    np.testing.assert_array_equal(l2.numpy(), l2_again.numpy())
    np.testing.assert_array_equal(s2.numpy(), s2_again.numpy())
    # The newest slot holds this frame's projected features; the older ones shift.
    np.testing.assert_allclose(s2.numpy()[:, :-1], s1.numpy()[:, 1:])
    projected = model.stt.project_keys(model.encoder(video[None, 1])["features"]).numpy()
    np.testing.assert_allclose(s2.numpy()[:, -1], projected, atol=1e-5)


def test_streaming_rejects_per_frame_models_and_bad_frames():
    with pytest.raises(ValueError, match="STT model"):
        StreamingSegmenter(STTSegmenter.from_preset("psp_tiny", num_classes=CLASSES))
    stream = StreamingSegmenter(STTSegmenter.from_preset("stt_psp_tiny", num_classes=CLASSES))
    with pytest.raises(ValueError, match="frame"):
        stream.step(np.zeros((H, W), "uint8"))
    model = stream.model
    state = model.initial_state(2, H, W)
    with pytest.raises(ValueError, match="state batch"):
        model.stream_step(np.zeros((1, H, W, 3), "uint8"), state, True)
    with pytest.raises(ValueError, match="T=3"):
        model.stream_step(np.zeros((2, H, W, 3), "uint8"), state[:, :2], True)


@pytest.mark.parametrize("preset", ["stt_psp_tiny", "stt_bise_tiny"])
def test_state_shape_is_the_shape_stream_step_returns_without_running_the_encoder(preset):
    model = STTSegmenter.from_preset(preset, num_classes=CLASSES)
    sizes = [(H, W), (33, 47), (17, 9)]
    shapes = {size: (model.state_shape(*size), model.state_shape(*size, packed=True, batch=2)) for size in sizes}
    assert not model.encoder.built and not model.stt.built  # computed from compute_output_shape, nothing ran
    for (height, width), (unpacked, packed) in shapes.items():
        frame = np.random.default_rng(height).integers(0, 256, (1, height, width, 3)).astype("uint8")
        _, state = model.stream_step(frame, model.initial_state(1, height, width), True)
        assert tuple(state.shape) == unpacked
        features = model.encoder(frame)["features"]  # the state's map is the encoder's, with 2 d_r channels
        assert unpacked[2:] == (*features.shape[1:3], 2 * features.shape[-1] // model.stt.reduction)
        _, state = model.stream_step(np.repeat(frame, 2, 0), model.initial_state(2, height, width, packed=True), True)
        assert tuple(state.shape) == packed == (2, *unpacked[2:4], unpacked[1] * unpacked[4])
    assert model.compute_output_shape((2, 4, 33, 47, 3)) == (2, 33, 47, CLASSES)
    with pytest.raises(ValueError, match="height"):
        model.state_shape(0, W)
    with pytest.raises(ValueError, match="per-frame"):
        STTSegmenter.from_preset(preset.removeprefix("stt_"), num_classes=CLASSES).state_shape(H, W)
