"""STT on KerasHub image segmenters (`STTSegmenter.from_image_segmenter`, the stt_segformer_* presets).

No hub is reachable here: the KerasHub SegFormers are built from their constructor
arguments (tiny MiTs, and the real B0 configuration at a small image size), saved
with KerasHub's `save_to_preset`, and loaded through the same `from_preset` code a
user with a download runs. The references are KerasHub's own models: the wrapped
model with a fresh (identity) STT must give their logits, frame by frame.
"""

import math
import os
import subprocess
import sys
from unittest import mock

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

import stt_keras
from stt_keras import StreamingSegmenter
from stt_keras.models import STTSegmenter
from stt_keras.models.keras_hub_segmenters import PresetUnavailable

SCALE = [1 / (255 * 0.229), 1 / (255 * 0.224), 1 / (255 * 0.225)]
OFFSET = [-0.485 / 0.229, -0.456 / 0.224, -0.406 / 0.225]
TINY = dict(layerwise_depths=[1, 2, 1, 1], hidden_dims=[16, 24, 36, 48], layerwise_num_heads=[1, 2, 3, 4],
            projection_filters=16)
B0 = dict(layerwise_depths=[2, 2, 2, 2], hidden_dims=[32, 64, 160, 256], layerwise_num_heads=[1, 2, 5, 8],
          projection_filters=256)


def keras_hub_segformer(config, size, num_classes=5, seed=0):
    """A KerasHub SegFormerImageSegmenter from constructor arguments, with a converter and random BatchNorm stats."""
    config = dict(config)
    filters = config.pop("projection_filters")
    mit = keras_hub.models.MiTBackbone(
        **config, num_layers=4, layerwise_sr_ratios=[8, 4, 2, 1], max_drop_path_rate=0.1,
        layerwise_patch_sizes=[7, 3, 3, 3], layerwise_strides=[4, 2, 2, 2], image_shape=(*size, 3))
    backbone = keras_hub.models.SegFormerBackbone(image_encoder=mit, projection_filters=filters)
    converter = keras_hub.layers.SegFormerImageConverter(image_size=size, scale=SCALE, offset=OFFSET)
    preprocessor = keras_hub.models.SegFormerImageSegmenterPreprocessor(image_converter=converter)
    segmenter = keras_hub.models.SegFormerImageSegmenter(backbone=backbone, num_classes=num_classes,
                                                         preprocessor=preprocessor)
    rng = np.random.default_rng(seed)
    bn = backbone.linear_fuse.layers[1]  # trained-looking statistics, so the BatchNorm copy is checked
    bn.moving_mean.assign(rng.normal(0, 0.5, bn.moving_mean.shape))
    bn.moving_variance.assign(rng.uniform(0.5, 2, bn.moving_variance.shape))
    return segmenter


def reference(segmenter, frames):
    """KerasHub's logits for raw frames: its preprocessor (rescale/normalise) and the model, as predict runs them."""
    return segmenter.predict(frames, verbose=0)


def frames_for(shape, seed=1):
    return np.random.default_rng(seed).uniform(0, 255, shape).astype("float32")


@pytest.fixture(scope="module")
def tiny():
    return keras_hub_segformer(TINY, (64, 64))


@pytest.fixture(scope="module")
def tiny_preset(tiny, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("hub") / "tiny_segformer")
    tiny.save_to_preset(path)
    return path


@pytest.fixture(scope="module")
def b0_preset(tmp_path_factory):
    """KerasHub's SegFormer-B0 architecture (19 classes, as segformer_b0_cityscapes_1024) saved as a preset dir."""
    path = str(tmp_path_factory.mktemp("hub") / "segformer_b0")
    keras_hub_segformer(B0, (64, 64), num_classes=19).save_to_preset(path)
    return path


def test_identity_at_start_on_clips_frame_by_frame(tiny):
    model = STTSegmenter.from_image_segmenter(tiny)
    assert model.stt.norm_first and model.num_key_frames == 3
    video = frames_for((2, 7, 64, 64, 3))
    for t in range(3, 7):
        expected = reference(tiny, video[:, t])
        np.testing.assert_allclose(model(video[:, t - 3:t + 1]).numpy(), expected, atol=1e-4, rtol=0)
    twin = STTSegmenter.from_image_segmenter(tiny, stt=None)
    assert twin.stt is None
    np.testing.assert_allclose(twin(video[:, 0]).numpy(), reference(tiny, video[:, 0]), atol=1e-4, rtol=0)
    # Raw RGB in: uint8 frames give what their float values give.
    as_uint8 = np.round(video[:, :4]).astype("uint8")
    np.testing.assert_allclose(model(as_uint8).numpy(), model(as_uint8.astype("float32")).numpy(), atol=1e-6)


@pytest.mark.parametrize("implementation", ["sparse", "dense_masked"])
def test_identity_at_start_streaming(tiny, implementation):
    model = STTSegmenter.from_image_segmenter(tiny)
    video = frames_for((6, 1, 64, 64, 3), seed=2)
    state = model.initial_state(1, 64, 64, packed=True)
    for t in range(6):
        logits, state = model.stream_step(video[t], state, tf.constant(t == 0), implementation=implementation)
        np.testing.assert_allclose(logits.numpy(), reference(tiny, video[t]), atol=1e-4, rtol=0)
    stream = StreamingSegmenter(model)
    for t in range(4):
        np.testing.assert_allclose(stream.step(video[t, 0]).numpy()[None], reference(tiny, video[t]), atol=1e-4, rtol=0)


def _fixed_mit_calls(aspect):
    """KerasHub 0.32's MiT attention and Mix-FFN with one change: h, w from the frame's aspect, not sqrt(N).

    (KerasHub takes h = w = sqrt(tokens), so its MiT runs square frames only; with this
    fix it is the reference for non-square ones.)
    """
    from keras import ops
    from keras_hub.src.models.mit import mit_layers

    def hw(n):
        h = int(round(math.sqrt(n / aspect)))
        return h, n // h

    def ffn_call(self, x):
        x = self.fc1(x)
        shape = ops.shape(x)
        h, w = hw(shape[1])
        x = ops.reshape(self.dwconv(ops.reshape(x, (shape[0], h, w, shape[2]))), (shape[0], -1, shape[2]))
        return self.fc2(ops.nn.gelu(x))

    def attention_call(self, x):
        h, w = hw(ops.shape(x)[1])
        # Same code as KerasHub's, with (h, w) for the reshape before the reduction conv.
        shape = ops.shape(x)
        b, n, c = shape[0], shape[1], shape[2]
        q = ops.transpose(ops.reshape(self.q(x), (b, n, self.num_heads, c // self.num_heads)), [0, 2, 1, 3])
        if self.sr_ratio > 1:
            x = self.norm(ops.reshape(self.sr(ops.reshape(x, (b, h, w, c))), [b, -1, c]))
        k = ops.transpose(ops.reshape(self.k(x), [b, -1, self.num_heads, c // self.num_heads]), [0, 2, 1, 3])
        v = ops.transpose(ops.reshape(self.v(x), [b, -1, self.num_heads, c // self.num_heads]), [0, 2, 1, 3])
        attn = ops.nn.softmax((q @ ops.transpose(k, [0, 1, 3, 2])) * self.scale, axis=-1)
        return self.proj(ops.reshape(ops.transpose(attn @ v, [0, 2, 1, 3]), [b, n, c]))

    return (mock.patch.object(mit_layers.MixFFN, "call", ffn_call),
            mock.patch.object(mit_layers.SegFormerMultiheadAttention, "call", attention_call))


@pytest.mark.parametrize("size", [(96, 96), (96, 160)])
def test_any_frame_size_with_the_same_weights(tiny, size):
    """Built at 64x64, used at another size = KerasHub's segmenter built at that size with the same weights."""
    model = STTSegmenter.from_image_segmenter(tiny, stt=None)
    frames = frames_for((2, *size, 3), seed=3)
    patches = _fixed_mit_calls(size[1] / size[0]) if size[0] != size[1] else ()
    for patch in patches:
        patch.start()
    try:
        there = keras_hub_segformer(TINY, size)
        there.set_weights(tiny.get_weights())
        expected = reference(there, frames)
    finally:
        for patch in patches:
            patch.stop()
    np.testing.assert_allclose(model(frames).numpy(), expected, atol=1e-4, rtol=0)
    # The STT's map: MiT stage 1, at 1/4 of the frame (the default stage), with stage 1's channels.
    assert model.encoder.compute_output_shape((2, *size, 3))["features"] == (2, -(-size[0] // 4), -(-size[1] // 4), 16)


def test_keras_hub_square_only_is_real():
    """Why the encoder is ours: KerasHub 0.32's MiT itself fails on a non-square frame."""
    hub = keras_hub_segformer(TINY, (96, 160))
    with pytest.raises(Exception):
        hub(frames_for((1, 96, 160, 3)))


def test_local_keras_hub_preset_directory_and_new_classes(tiny, tiny_preset):
    from_dir = STTSegmenter.from_image_segmenter(tiny_preset)
    frames = frames_for((1, 4, 64, 64, 3), seed=4)
    np.testing.assert_allclose(from_dir(frames).numpy(), reference(tiny, frames[:, -1]), atol=1e-4, rtol=0)
    other = STTSegmenter.from_image_segmenter(tiny_preset, num_classes=3, stt={"num_key_frames": 2})
    assert other.num_classes == 3 and other.num_key_frames == 2 and other.stt.norm_first
    assert other(frames[:, 1:]).shape == (1, 64, 64, 3)
    with pytest.raises(TypeError, match="SegFormerImageSegmenter"):
        STTSegmenter.from_image_segmenter(keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Dense(2)]))


@pytest.mark.slow  # about 60 s: the real B0 architecture, built, saved, loaded and run three times
def test_builtin_preset_from_a_keras_hub_preset_directory(b0_preset):
    model = STTSegmenter.from_preset("stt_segformer_b0", image_segmenter_weights=b0_preset)
    assert model.name == "stt_segformer_b0" and model.num_classes == 19
    hub = keras_hub.models.ImageSegmenter.from_preset(b0_preset)  # what the user's download gives
    frames = frames_for((1, 4, 64, 64, 3), seed=5)
    np.testing.assert_allclose(model(frames).numpy(), reference(hub, frames[:, -1]), atol=1e-4, rtol=0)
    twin = STTSegmenter.from_preset("segformer_b0", image_segmenter_weights=b0_preset)
    np.testing.assert_allclose(twin(frames[:, -1]).numpy(), reference(hub, frames[:, -1]), atol=1e-4, rtol=0)
    assert model.state_shape(64, 128) == (1, 3, 16, 32, 16)  # the stage-1 map (1/4), 2 d_r = 2 * 32 / 4
    assert model.stt.residual_gate and model.stt.norm_first


def test_builtin_preset_refuses_another_architecture(tiny_preset):
    with pytest.raises(ValueError, match="not the b0 architecture"):
        STTSegmenter.from_preset("stt_segformer_b0", image_segmenter_weights=tiny_preset)


def test_no_hub_one_clear_line(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("HTTPSConnectionPool(host='api.kaggle.com'): Max retries exceeded\nmore detail")

    monkeypatch.setattr(keras_hub.models.ImageSegmenter, "from_preset", offline)
    with pytest.raises(PresetUnavailable) as info:
        STTSegmenter.from_preset("stt_segformer_b0")
    message = str(info.value)
    assert "\n" not in message and "segformer_b0_cityscapes_1024" in message
    assert "save_to_preset" in message and "image_segmenter_weights=None" in message


def test_random_weights_architecture():
    model = STTSegmenter.from_preset("stt_segformer_b0", image_segmenter_weights=None, num_classes=4)
    assert model(np.zeros((1, 4, 64, 96, 3), "uint8")).shape == (1, 64, 96, 4)
    assert model.encoder.hidden_dims == [32, 64, 160, 256] and model.decoder.projection_filters == 256
    # One head of 8 channels on the 32-channel stage-1 map ("auto" heads), and the user's number wins.
    assert model.stt.num_heads == 1 and model.stt.reduced_channels == 8
    from stt_keras.models.stt.stt_builders import make_stt

    assert make_stt({"num_heads": 4}, model.encoder).num_heads == 4
    b1 = STTSegmenter.from_preset("segformer_b1", image_segmenter_weights=None)
    assert b1.num_classes == 19 and b1.encoder.hidden_dims == [64, 128, 320, 512]


def test_keras_file_and_preset_round_trips(tiny, tmp_path):
    model = STTSegmenter.from_image_segmenter(tiny, num_classes=5)
    # Move the STT off the identity, so the round trip checks its weights too.
    model.stt.set_weights([w + 0.05 for w in model.stt.get_weights()])
    clip = frames_for((1, 4, 64, 96, 3), seed=6)
    expected = model(clip).numpy()
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(loaded(clip).numpy(), expected)
    model.save_to_preset(str(tmp_path / "preset"))
    again = STTSegmenter.from_preset(str(tmp_path / "preset"))
    np.testing.assert_array_equal(again(clip).numpy(), expected)
    # A fresh process: `import stt_keras` alone registers the SegFormer layers.
    np.save(tmp_path / "clip.npy", clip)
    code = ("import sys, numpy as np, keras, stt_keras; m = keras.saving.load_model(sys.argv[1]); "
            "np.save(sys.argv[3], m(np.load(sys.argv[2])).numpy())")
    subprocess.run([sys.executable, "-c", code, path, str(tmp_path / "clip.npy"), str(tmp_path / "out.npy")],
                   check=True, capture_output=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), expected)
    twin = STTSegmenter.from_image_segmenter(tiny, stt=None)
    assert np.abs(expected - twin(clip[:, -1]).numpy()).max() > 1e-3  # the STT did act


def test_mixed_precision(tiny):
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper() not in ("ALL", "DEFAULT"):
        pytest.skip("ONEDNN_MAX_CPU_ISA is set: half precision needs oneDNN's full ISA on this CPU")  # as test_layer_contract
    model = STTSegmenter.from_image_segmenter(tiny, dtype="mixed_float16")
    clip = frames_for((1, 4, 64, 64, 3), seed=7)
    out = model(clip).numpy()
    assert out.dtype == np.float32 and np.all(np.isfinite(out))
    expected = reference(tiny, clip[:, -1])
    assert np.abs(out - expected).max() <= 2e-2 * np.abs(expected).max()
    assert all(v.dtype == "float32" for v in model.weights)


# ------------------------------------------------------------------------------- DeepLabV3+
def keras_hub_deeplab(size, num_classes=4, seed=0):
    """A small KerasHub DeepLabV3+ (bottleneck ResNet, one block per stage) with trained-looking BatchNorm stats."""
    resnet = keras_hub.models.ResNetBackbone(
        input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64, 64, 64],
        stackwise_num_blocks=[1, 1, 1, 1], stackwise_num_strides=[1, 2, 2, 2], block_type="bottleneck_block",
        image_shape=(None, None, 3))
    backbone = keras_hub.models.DeepLabV3Backbone(
        image_encoder=resnet, spatial_pyramid_pooling_key="P5", upsampling_size=8, dilation_rates=[6, 12, 18],
        low_level_feature_key="P2", image_shape=(*size, 3))
    converter = keras_hub.layers.DeepLabV3ImageConverter(image_size=size, scale=1 / 127.5, offset=-1)
    preprocessor = keras_hub.models.DeepLabV3ImageSegmenterPreprocessor(image_converter=converter)
    segmenter = keras_hub.models.DeepLabV3ImageSegmenter(backbone=backbone, num_classes=num_classes,
                                                         preprocessor=preprocessor)
    rng = np.random.default_rng(seed)
    for w in segmenter.weights:
        if "moving_variance" in w.path:
            w.assign(rng.uniform(0.5, 2, w.shape))
        elif "moving_mean" in w.path:
            w.assign(rng.normal(0, 0.3, w.shape))
    return segmenter


@pytest.fixture(scope="module")
def deeplab():
    return keras_hub_deeplab((96, 96))


def test_deeplab_identity_at_start_and_streaming(deeplab):
    model = STTSegmenter.from_image_segmenter(deeplab)
    assert model.name == "stt_deeplab_v3" and model.encoder.num_channels == 256
    video = frames_for((1, 6, 96, 96, 3), seed=8)
    expected = [reference(deeplab, video[:, t]) for t in range(6)]
    scale = np.abs(np.array(expected)).max()
    for t in range(3, 6):
        np.testing.assert_allclose(model(video[:, t - 3:t + 1]).numpy(), expected[t], atol=1e-5 * scale + 1e-6)
    state = model.initial_state(1, 96, 96)
    for t in range(6):
        logits, state = model.stream_step(video[:, t], state, tf.constant(t == 0))
        np.testing.assert_allclose(logits.numpy(), expected[t], atol=1e-5 * scale + 1e-6)
    twin = STTSegmenter.from_image_segmenter(deeplab, stt=None)
    np.testing.assert_allclose(twin(video[:, 0]).numpy(), expected[0], atol=1e-5 * scale + 1e-6)


def test_deeplab_any_size_and_preset_directory(deeplab, tmp_path):
    path = str(tmp_path / "deeplab")
    deeplab.save_to_preset(path)
    model = STTSegmenter.from_image_segmenter(path, stt=None)
    there = keras_hub_deeplab((128, 160))
    there.set_weights(deeplab.get_weights())
    frames = frames_for((1, 128, 160, 3), seed=9)
    expected = reference(there, frames)
    np.testing.assert_allclose(model(frames).numpy(), expected, atol=1e-5 * np.abs(expected).max() + 1e-6)
    with pytest.raises(ValueError, match="not the resnet50 architecture"):
        STTSegmenter.from_preset("stt_deeplabv3plus_r50", image_segmenter_weights=path)
    with pytest.raises(ValueError, match="starts from a SegFormerImageSegmenter"):
        STTSegmenter.from_preset("stt_segformer_b0", image_segmenter_weights=path)


def test_auto_heads_are_at_least_8_channels_wide():
    from stt_keras.models.stt.stt_builders import auto_num_heads

    # channels -> heads at reduction 4: SegFormer-B0/B1 stage 1, widths that only some counts divide, wide maps.
    cases = {16: 1, 32: 1, 64: 2, 96: 3, 100: 1, 120: 3, 128: 4, 256: 4, 512: 4}
    assert {d: auto_num_heads(d, 4) for d in cases} == cases
    assert auto_num_heads(64, 1) == 4 and auto_num_heads(64, 2) == 4 and auto_num_heads(48, 2) == 3


def test_deeplab_preset_random_weights():
    model = STTSegmenter.from_preset("stt_deeplabv3plus_r50", image_segmenter_weights=None)
    assert model.stt.num_heads == 4  # its 256-channel map keeps the 4 heads (64 channels of attention)
    assert model.num_classes == 21 and model.state_shape(64, 96) == (1, 3, 2, 3, 128)
    assert model(np.zeros((1, 4, 64, 96, 3), "uint8")).shape == (1, 64, 96, 21)


# --------------------------------------------------------------------------------- stt-train
@pytest.mark.slow  # about 60 s: two steps of the real B0 architecture, compiled under mixed_float16
def test_stt_train_from_a_keras_hub_preset_directory_frozen_encoder_mixed_precision(b0_preset, tmp_path):
    from stt_keras.training.train import train

    model = train("stt_segformer_b0", out=str(tmp_path / "run"), init_from=b0_preset, freeze="encoder",
                  mixed_precision=True, steps=2, checkpoint_every=2, batch_size=1, crop=(64, 64),
                  synthetic_size=(64, 128), synthetic_sequences=2, val_batches=1, verbose=0)
    assert keras.mixed_precision.global_policy().name == "float32"  # the caller's policy again
    assert model.encoder.dtype_policy.name == "mixed_float16" and not model.encoder.trainable
    hub = keras_hub.models.ImageSegmenter.from_preset(b0_preset)
    start = STTSegmenter.from_image_segmenter(hub, num_classes=model.num_classes)
    for ours, theirs in zip(model.encoder.weights, start.encoder.weights):  # frozen: the KerasHub weights
        np.testing.assert_array_equal(ours.numpy(), theirs.numpy())
    moved = [np.abs(a.numpy() - b.numpy()).max() for a, b in zip(model.decoder.trainable_weights,
                                                                   start.decoder.trainable_weights)]
    assert max(moved) > 0  # the decoder (and its new 7-class classifier) trained
    history = open(tmp_path / "run" / "history.csv").read().splitlines()
    assert len(history) == 2 and "nan" not in history[1]


def test_stt_train_without_the_hub_fails_with_one_line(monkeypatch, tmp_path, capsys):
    from stt_keras.training import train as train_module

    def offline(*args, **kwargs):
        raise ConnectionError("Failed to resolve 'api.kaggle.com'")

    monkeypatch.setattr(keras_hub.models.ImageSegmenter, "from_preset", offline)
    with pytest.raises(SystemExit) as info:
        train_module.main(["--preset", "stt_segformer_b0", "--out", str(tmp_path / "run"), "--steps", "1"])
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stt-train: error: "), err
    assert "save_to_preset" in err[0]
    with pytest.raises(SystemExit) as info:
        train_module.main(["--preset", "segformer_b0", "--out", str(tmp_path / "run2"), "--freeze", "encoder+decoder"])
    assert info.value.code == 2 and "nothing to train" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- stt-export
@pytest.mark.slow  # about 3 minutes: every export of a tiny STT-SegFormer at 64x128
def test_stt_export_of_an_stt_segformer(tiny, tmp_path):
    """SavedModel, TFLite (float32/float16/dynamic range/int8, both forms) and ONNX with parity."""
    import json

    from stt_keras.export import cli as export_cli

    model = STTSegmenter.from_image_segmenter(tiny, stt={"top_ratio": 0.5})
    rng = np.random.default_rng(0)  # off the identity, so the exported STT is exercised
    model.stt.set_weights([w + 0.02 * rng.normal(size=w.shape).astype("float32") for w in model.stt.get_weights()])
    path = str(tmp_path / "stt_segformer.keras")
    model.save(path)
    out = str(tmp_path / "export")
    args = export_cli.build_parser().parse_args(
        ["--model", path, "--out", out, "--size", "64x128", "--parity-sequences", "1", "--parity-frames", "6",
         "--calibration-sequences", "2", "--calibration-frames", "6"])
    export_cli.run_export(args)
    report = json.load(open(os.path.join(out, "export_report.json")))
    assert report["saved_model"]["signatures"][:2] == ["serving_default", "step"]
    files = report["files"]
    for name in ("stt_float32.tflite", "stt_gpu_float32.tflite", "stt_step.onnx", "stt_gpu_step.onnx"):
        assert files[name]["parity"]["label_agreement"] == 1.0, name
        assert files[name]["parity"]["logits_max_abs_diff"] < 1e-4, name
    assert files["stt_int8.tflite"]["parity"]["label_agreement"] > 0.9  # an untrained model: many near-ties
    gpu = files["stt_gpu_float32.tflite"].get("gpu_accelerator")
    if gpu:  # where a Vulkan device is there: the whole step on LiteRT's GPU accelerator
        assert gpu["fully_accelerated"] and gpu["label_agreement_with_cpu"] == 1.0
