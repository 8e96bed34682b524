"""int8 export keeps the classifier (and what follows it) float: `export.tflite.convert(..., float_head=)`."""

import numpy as np
import pytest
import tensorflow as tf

from stt_keras.export import tflite
from tflite_graph import conv_weight_types, random_frames

H, W, C, K = 8, 12, 6, 5
RNG = np.random.default_rng(0)
W1 = RNG.normal(size=(3, 3, 3, C)).astype(np.float32) * 0.3
W2 = RNG.normal(size=(3, 3, C, C)).astype(np.float32) * 0.3
WC = RNG.normal(size=(1, 1, C, K)).astype(np.float32) * 0.5
WS = RNG.normal(size=(1, 1, C, 4)).astype(np.float32) * 0.5


def _step():
    """frame -> conv -> conv ("fuse") -> 1x1 classifier -> 2x upsampling = logits; a state from another conv."""

    @tf.function(input_signature=[tf.TensorSpec([1, H, W, 3], tf.float32, name="frame")], autograph=False)
    def step(frame):
        x = tf.nn.relu(tf.nn.conv2d(frame, W1, 1, "SAME"))
        state = tf.nn.conv2d(x, WS, 1, "SAME")
        with tf.name_scope("decoder"):
            x = tf.nn.relu(tf.nn.conv2d(x, W2, 1, "SAME"))
            logits = tf.image.resize(tf.nn.conv2d(x, WC, 1, "SAME"), [2 * H, 2 * W])
        return {"logits": logits, "next_state": state}

    return tflite.frozen_function(step)


def test_head_tensors_walk_back_from_the_logits_only():
    float_bytes, _ = tflite.convert(_step(), "float32")
    one = tflite.head_tensors(float_bytes, 1)
    two = tflite.head_tensors(float_bytes, 2)
    assert len(one) == 2 and len(two) == 3 and set(one) < set(two)  # classifier + resize; + the conv before
    with pytest.raises(ValueError, match="none of the outputs"):
        tflite.head_tensors(float_bytes, 1, outputs=("missing",))
    with pytest.raises(ValueError, match="convs"):
        tflite.head_tensors(float_bytes, -1)


@pytest.mark.parametrize("float_head, float_convs", [(0, set()), (1, {K}), (2, {K, C}), ("decoder", {K, C})])
def test_float_head_keeps_exactly_those_convolutions_float(float_head, float_convs):
    concrete = _step()
    model_bytes, settings = tflite.convert(concrete, "int8", random_frames(H, W), float_head=float_head)
    types = conv_weight_types(model_bytes)
    assert {c for c, t in types.items() if t == "FLOAT32"} == float_convs, types
    assert types[4] == "INT8"  # the state's conv is not downstream of the classifier
    assert ("float_head" in settings) == bool(float_head)

    frame = np.random.default_rng(2).uniform(-1, 1, (1, H, W, 3)).astype(np.float32)
    logits = tflite.run(model_bytes, {"frame": frame})["logits"]
    if float_head:
        # A float classifier on int8 features: the logits are not on an int8 grid (256 levels).
        assert len(np.unique(logits)) > 256
    else:
        assert len(np.unique(logits)) <= 256
    expected = concrete(frame=tf.constant(frame))["logits"].numpy()
    assert np.abs(logits - expected).max() < 0.2 * np.abs(expected).max()  # still the same function


def test_the_export_cli_passes_the_float_head_through():
    from stt_keras.export import cli

    parser = cli.build_parser()
    args = parser.parse_args(["--model", "m.keras", "--out", "o"])
    assert cli.int8_float_head(args.int8_float_head) == tflite.FLOAT_HEAD_CONVS == 1  # the default is the classifier
    for flag, expected in [("0", 0), ("2", 2), ("decoder", "decoder")]:
        args = parser.parse_args(["--model", "m.keras", "--out", "o", "--int8-float-head", flag])
        assert cli.int8_float_head(args.int8_float_head) == expected
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m.keras", "--out", "o", "--int8-float-head", "all"])
