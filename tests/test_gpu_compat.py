"""export.gpu_compat: each GPU-delegate rule caught on a small model that breaks it, and a clean model passes."""

import numpy as np
import pytest
import tensorflow as tf

from export import gpu_compat

X = tf.TensorSpec([1, 8, 8, 4], tf.float32, name="x")
W = np.random.default_rng(0).normal(size=(3, 3, 4, 4)).astype(np.float32)


def convert(fn, *specs):
    concrete = tf.function(fn, input_signature=list(specs) or [X]).get_concrete_function()
    return tf.lite.TFLiteConverter.from_concrete_functions([concrete], tf.Module()).convert()


def conv(x):
    return tf.nn.relu(tf.nn.conv2d(x, W, 1, "SAME"))


def reasons_of(report, name):
    return [r for op in report.ops if op.name == name for r in op.reasons]


def test_clean_model_is_compatible_in_one_partition():
    def clean(x):
        y = conv(x)
        y = tf.image.resize(y, (16, 16), "bilinear")
        y = tf.concat([y, y * 2.0], axis=-1)
        idx = tf.constant(np.arange(7, dtype=np.int32)[::-1].copy())
        g = tf.gather(tf.reshape(y, [256, 8]), idx)  # 1-D constant indices on a float table
        return tf.nn.softmax(y, axis=-1), tf.reduce_mean(y, axis=-1, keepdims=True), g

    report = gpu_compat.check_model(convert(clean))
    assert report.compatible, report.summary()
    assert len(report.partitions) == 1 and report.largest_partition == len(report.ops)


@pytest.mark.parametrize(
    "name, fn, op, reason",
    [
        ("top_k", lambda x: tf.math.top_k(tf.reshape(conv(x), [1, -1]), k=5).values, "TOPK_V2", "not a GPU op"),
        ("argmax", lambda x: tf.argmax(conv(x), axis=-1), "ARG_MAX", "not a GPU op"),
        ("scatter", lambda x: tf.tensor_scatter_nd_update(tf.reshape(conv(x), [256]), [[1], [3]], [1.0, 2.0]),
         "SCATTER_ND", "not a GPU op"),
        ("gather_nd", lambda x: tf.gather_nd(conv(x), [[0, 1, 2], [0, 3, 4]]), "GATHER_ND", "not a GPU op"),
        ("rank5", lambda x: tf.reshape(tf.reshape(conv(x), [1, 2, 4, 8, 4]) + 1.0, [1, 8, 8, 4]), "ADD", "rank 5"),
        ("shrink", lambda x: conv(x)[:, 0] * 2.0, "STRIDED_SLICE", "shrinkAxisMask"),
        ("gather_2d", lambda x: tf.gather(tf.reshape(conv(x), [64, 4]), tf.constant([[0, 1], [2, 3]])), "GATHER",
         "1-D indices"),
        ("int32", lambda x: tf.cast(conv(x), tf.int32) + 1, "ADD", "runtime INT32"),
        ("outer_mul", lambda x: tf.reshape(conv(x), [1, 256, 1]) * tf.reshape(conv(x)[..., :1], [1, 1, 64]), "MUL",
         "smaller in some dimension"),
    ],
)
def test_each_rule_is_caught(name, fn, op, reason):
    report = gpu_compat.check_model(convert(fn))
    assert not report.compatible, name
    found = reasons_of(report, op)
    assert any(reason in r for r in found), (name, report.summary())


def test_control_flow_and_dynamic_shapes():
    def loop(x):
        return tf.map_fn(lambda row: row * 2.0, conv(x)[0])[None]

    report = gpu_compat.check_model(convert(loop))
    assert "WHILE" in report.unsupported_by_type() and report.other_subgraph_ops > 0

    dynamic = convert(lambda x: conv(x) + 1.0, tf.TensorSpec([1, None, None, 4], tf.float32, name="x"))
    report = gpu_compat.check_model(dynamic)
    assert any("dynamic shape" in r for op in report.ops for r in op.reasons), report.summary()


def test_flex_ops_are_reported():
    @tf.function(input_signature=[tf.TensorSpec([2, 2], tf.float32)])
    def det(x):
        return tf.linalg.det(x)[None]

    converter = tf.lite.TFLiteConverter.from_concrete_functions([det.get_concrete_function()], tf.Module())
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    report = gpu_compat.check_model(converter.convert())
    assert any(name.startswith("CUSTOM:Flex") for name in report.unsupported_by_type())


def test_one_unsupported_op_in_the_middle_splits_the_graph():
    def split(x):
        y = conv(x)
        z = tf.cast(tf.argmax(y, axis=-1), tf.float32)[..., None]  # leaves the GPU
        return conv(conv(y * z))

    report = gpu_compat.check_model(convert(split))
    assert len(report.partitions) == 2, report.summary()
    sizes = sorted(len(p) for p in report.partitions)
    assert sizes[-1] == report.largest_partition and sizes[0] >= 1
    assert report.to_dict()["partitions"] == [len(p) for p in report.partitions]


def test_cli_exit_code(tmp_path):
    path = tmp_path / "m.tflite"
    path.write_bytes(convert(lambda x: tf.argmax(conv(x), axis=-1)))
    assert gpu_compat.main([str(path)]) == 1
    path.write_bytes(convert(conv))
    assert gpu_compat.main([str(path), "--json"]) == 0
