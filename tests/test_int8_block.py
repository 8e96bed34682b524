"""int8 export of the STT block: its plain 1x1 convolutions are quantized, the rest stays float
(`export.tflite.convert(..., keep_float_scope=, quantized_subscopes=)`, `dense_masked.QUANTIZABLE`)."""

import numpy as np
import tensorflow as tf

from stt_keras.export import tflite
from tflite_graph import conv_weight_types, random_frames
from stt_keras.layers import dense_masked

H, W, C = 8, 12, 6
RNG = np.random.default_rng(0)
W_IN = RNG.normal(size=(3, 3, 3, C)).astype(np.float32) * 0.3
W_KEYS = RNG.normal(size=(1, 1, C, 4)).astype(np.float32) * 0.5
W_FFN = RNG.normal(size=(1, 1, C, 5)).astype(np.float32) * 0.5
W_OUT = RNG.normal(size=(1, 1, 5, 7)).astype(np.float32) * 0.5


def _step():
    """frame -> conv; under "blk": a "keys" conv (the state), a softmax, an "ffn" conv; then a classifier."""

    @tf.function(input_signature=[tf.TensorSpec([1, H, W, 3], tf.float32, name="frame")], autograph=False)
    def step(frame):
        x = tf.nn.relu(tf.nn.conv2d(frame, W_IN, 1, "SAME"))
        with tf.name_scope("blk"):
            with tf.name_scope("keys"):
                keys = tf.nn.conv2d(x, W_KEYS, 1, "SAME")
            state = tf.concat([keys, keys], axis=-1)  # an output tensor is named after the output, not its scope
            x = x * tf.nn.softmax(x, axis=-1)
            with tf.name_scope("ffn"):
                x = tf.nn.relu(tf.nn.conv2d(x, W_FFN, 1, "SAME"))
        logits = tf.nn.conv2d(x, W_OUT, 1, "SAME")
        return {"logits": logits, "next_state": state}

    return tflite.frozen_function(step)


def test_quantized_subscopes_are_int8_inside_the_float_scope():
    concrete = _step()
    whole, settings = tflite.convert(concrete, "int8", random_frames(H, W), keep_float_scope="blk", float_head=0)
    assert conv_weight_types(whole) == {C: "INT8", 4: "FLOAT32", 5: "FLOAT32", 7: "INT8"}
    assert "quantized_in_float_scope" not in settings
    part, settings = tflite.convert(concrete, "int8", random_frames(H, W), keep_float_scope="blk", float_head=0,
                                    quantized_subscopes=("ffn",))
    assert conv_weight_types(part) == {C: "INT8", 4: "FLOAT32", 5: "INT8", 7: "INT8"}
    assert "blk/ffn" in settings["quantized_in_float_scope"]
    # The softmax between them stays float either way.
    assert "SOFTMAX" in tflite.float_ops_in_quantized(part) or "EXP" in tflite.float_ops_in_quantized(part)

    frame = np.random.default_rng(2).uniform(-1, 1, (1, H, W, 3)).astype(np.float32)
    expected = concrete(frame=tf.constant(frame))
    for model_bytes in (whole, part):
        out = tflite.run(model_bytes, {"frame": frame})
        for name in ("logits", "next_state"):  # still the same function, within int8 error
            reference = expected[name].numpy().reshape(-1)
            assert np.corrcoef(out[name].reshape(-1), reference)[0, 1] > 0.95, name


def test_the_block_names_what_int8_quantizes():
    assert dense_masked.QUANTIZABLE == ("keys", "query", "output", "ffn")
    from stt_keras.export.gpu_step import STT_QUANTIZED, STT_SCOPE

    assert (STT_SCOPE, STT_QUANTIZED) == (dense_masked.SCOPE, dense_masked.QUANTIZABLE)


def test_the_gpu_setting_keeps_the_whole_block_float():
    from stt_keras.export import cli
    from stt_keras.export.gpu_step import STT_QUANTIZED

    assert cli.int8_block_subscopes(1) == cli.int8_block_subscopes(0) == STT_QUANTIZED
    assert cli.int8_block_subscopes("decoder") == ()
