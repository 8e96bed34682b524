"""Quantization-aware fine-tuning (`stt_keras.quantization`): the simulated rounding is the int8 converter's,
the hooks reach every layer the export quantizes, and leave the model as it was."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema

from stt_keras import quantization
from stt_keras.export import tflite
from stt_keras.models import STTSegmenter
from tflite_graph import random_frames

RNG = np.random.default_rng(0)


def _converted_conv_weights(model_bytes):
    """[(dequantized kernel [kh, kw, in, out], int8 values)] of every CONV_2D in a converted model."""
    model = schema.ModelT.InitFromPackedBuf(bytearray(model_bytes), 0)
    graph = model.subgraphs[0]
    found = []
    for op in graph.operators:
        code = model.operatorCodes[op.opcodeIndex]
        if max(code.builtinCode, code.deprecatedBuiltinCode) != schema.BuiltinOperator.CONV_2D:
            continue
        weights = graph.tensors[op.inputs[1]]
        values = np.frombuffer(bytes(bytearray(model.buffers[weights.buffer].data)), np.int8).reshape(weights.shape)
        scales = np.asarray(weights.quantization.scale, np.float32).reshape(-1, 1, 1, 1)
        found.append((np.transpose(values * scales, (1, 2, 3, 0)), values))
    return found


def test_kernel_rounding_is_the_int8_converters():
    # Output channels of very different sizes: per-channel scales, as the converter's.
    kernel = (RNG.normal(size=(3, 3, 3, 5)) * np.array([0.01, 0.3, 1.0, 4.0, 0.5])).astype(np.float32)

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 3], tf.float32, name="frame")], autograph=False)
    def step(frame):
        return {"logits": tf.nn.relu(tf.nn.conv2d(frame, kernel, 1, "SAME"))}

    model_bytes, _ = tflite.convert(tflite.frozen_function(step), "int8", random_frames(8, 8), float_head=0)
    (converted, values), = _converted_conv_weights(model_bytes)
    assert values.min() >= -127 and np.abs(values).max() == 127  # symmetric, narrow range: the claim tested
    simulated = quantization.fake_quant_kernel(kernel).numpy()
    np.testing.assert_allclose(simulated, converted, rtol=1e-6, atol=1e-7)
    assert np.abs(simulated - kernel).max() > 1e-4  # and it does round


def test_activation_rounding_has_256_levels_over_the_range_with_zero_exact():
    x = tf.constant(RNG.uniform(-0.7, 2.3, size=(2, 16, 16, 4)).astype(np.float32))
    rounded = quantization.fake_quant_activation(x).numpy()
    step = (rounded.max() - rounded.min()) / 255
    assert len(np.unique(rounded)) <= 256
    assert np.abs(rounded - x.numpy()).max() <= step / 2 + 1e-6
    assert quantization.fake_quant_activation(tf.constant([0.0, 0.3, 1.0])).numpy()[0] == 0.0
    relu = tf.nn.relu(x)  # non-negative: the range starts at 0, as a ReLU output's calibrated range does
    assert quantization.fake_quant_activation(relu).numpy().min() == 0.0


def test_gradients_pass_straight_through():
    kernel = tf.Variable(RNG.normal(size=(1, 1, 3, 2)).astype(np.float32))
    x = tf.constant(RNG.normal(size=(1, 4, 4, 3)).astype(np.float32))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(tf.nn.conv2d(quantization.fake_quant_activation(x),
                                          quantization.fake_quant_kernel(kernel), 1, "SAME"))
    gradient = tape.gradient(loss, kernel).numpy()
    with tf.GradientTape() as tape:
        float_loss = tf.reduce_sum(tf.nn.conv2d(x, kernel, 1, "SAME"))
    np.testing.assert_allclose(gradient, tape.gradient(float_loss, kernel).numpy(), rtol=0.05)


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(3)
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=5, top_ratio=0.5)
    clip = RNG.integers(0, 256, size=(1, 4, 64, 64, 3)).astype(np.uint8)
    return model, clip


def test_every_quantized_layer_is_hooked_and_the_model_is_left_as_it_was(model, tmp_path):
    model, clip = model
    before = np.asarray(model(clip, training=False))
    config = model.get_config()
    convs = [la for la in model._flatten_layers() if isinstance(la, keras.layers.Conv2D)]
    with quantization.fake_quantized(model) as hooked:
        rounded = np.asarray(model(clip, training=False))
        assert all("convolution_op" in vars(conv) for conv in convs)
        assert "weights_of" in vars(model.stt)
        kernel, _ = model.stt.weights_of("query")
        assert len(np.unique(np.asarray(kernel)[:, 0])) <= 255  # W^Q rounded, per channel
        assert len(np.unique(np.asarray(model.stt.weights_of("norm1")[0]))) > 0  # a norm's weights pass untouched
        np.testing.assert_array_equal(np.asarray(model.stt.weights_of("norm1")[0]), model.stt.norm1.gamma.numpy())
    assert hooked >= len(convs) + 1
    difference = np.abs(rounded - before)
    assert 0 < difference.max() < 0.5 * np.abs(before).max()  # rounded, not broken
    np.testing.assert_array_equal(np.asarray(model(clip, training=False)), before)  # hooks gone
    assert not any("convolution_op" in vars(conv) for conv in convs) and "weights_of" not in vars(model.stt)
    assert model.get_config() == config
    path = os.path.join(tmp_path, "m.keras")
    model.save(path)
    from stt_keras import load_model

    np.testing.assert_allclose(np.asarray(load_model(path)(clip, training=False)), before, atol=1e-5)


def test_a_quantization_aware_step_trains_through_the_rounding(model):
    model, clip = model
    labels = RNG.integers(0, 5, size=(1, 64, 64)).astype(np.int32)
    with quantization.fake_quantized(model):
        with tf.GradientTape() as tape:
            logits = model(clip, training=True)
            loss = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(labels, logits, from_logits=True))
        gradients = tape.gradient(loss, model.trainable_variables)
    named = {v.path: g for v, g in zip(model.trainable_variables, gradients)}
    missing = [path for path, g in named.items() if g is None and "aux" not in path]
    assert not missing, missing[:5]
    assert any(float(tf.reduce_max(tf.abs(g))) > 0 for path, g in named.items() if "stt" in path and "query" in path)


def test_stt_train_quantization_aware_traces_the_rounding_and_saves_a_float_model(tmp_path, monkeypatch):
    from stt_keras import load_model
    from stt_keras.training.train import train

    traced = []  # the hooks look the rounding up by name when the train and validation steps are traced
    rounding = quantization.fake_quant_activation
    monkeypatch.setattr(quantization, "fake_quant_activation", lambda x: traced.append(1) or rounding(x))
    out = str(tmp_path / "qat")
    model = train("stt_psp_tiny", out=out, steps=2, checkpoint_every=2, batch_size=2, synthetic_sequences=2,
                  synthetic_size=(32, 64), val_batches=1, verbose=0, quantization_aware=True, skip_scan=True)
    convs = sum(isinstance(layer, keras.layers.Conv2D) for layer in model._flatten_layers())
    assert len(traced) >= convs  # every convolution's input rounded, in at least one traced step
    assert not any("convolution_op" in vars(layer) for layer in model._flatten_layers())  # hooks gone after fit
    settings = json.load(open(os.path.join(out, "run.json")))["settings"]
    assert settings["quantization_aware"] is True
    saved = load_model(os.path.join(out, "last.keras"), compile=False)
    clip = RNG.integers(0, 256, size=(1, 4, 32, 64, 3)).astype(np.uint8)
    np.testing.assert_allclose(np.asarray(saved(clip)), np.asarray(model(clip, training=False)), atol=1e-5)


def test_dense_layers_round_like_convolutions():
    """A Dense layer (SegFormer's MLPs) computes the 1x1 convolution of the same kernel, rounded the same way."""
    dense = keras.Sequential([keras.Input((2, 3, 5)), keras.layers.Dense(3, activation="relu")])  # on a map, as SegFormer's
    conv = keras.Sequential([keras.Input((2, 3, 5)), keras.layers.Conv2D(3, 1, activation="relu")])
    conv.set_weights([dense.get_weights()[0][None, None], dense.get_weights()[1]])
    x = RNG.normal(size=(4, 2, 3, 5)).astype(np.float32)
    before = np.asarray(dense(x))
    with quantization.fake_quantized(dense) as hooked, quantization.fake_quantized(conv):
        rounded = np.asarray(dense(x))
        np.testing.assert_allclose(rounded, np.asarray(conv(x)), atol=1e-6)
    assert hooked == 1 and np.abs(rounded - before).max() > 0
    np.testing.assert_array_equal(np.asarray(dense(x)), before)
