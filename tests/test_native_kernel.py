"""The native windowed-attention kernel: equal to the pure-TF path, used only where it may be."""

import os

import numpy as np
import pytest
import tensorflow as tf

from stt_keras import kernels
from stt_keras.layers import SparseTemporalTransformer, temporal_attention
from tolerances import assert_float32_close

pytestmark = pytest.mark.skipif(os.environ.get("STT_KERAS_NATIVE") == "0", reason="native kernel disabled")


def native():
    module = kernels.load()
    assert module is not None, kernels.native_status()
    return module


def attention_ops_depth(radii, d_head):
    """float32 roundings of one output (tests/tolerances.py): the score's dot product, the softmax
    sum and the weighted sum over every key of the windows."""
    keys = sum((2 * r + 1) ** 2 for r in radii)
    return d_head + 2 * keys


def tf_path(q_full, kv, positions, radii, heads):
    b, h, w, d_r = q_full.shape
    out = temporal_attention.windowed_attention(tf.constant(q_full), tf.constant(kv), radii, heads)
    return tf.gather(tf.reshape(out, [b, h * w, d_r]), positions, batch_dims=1).numpy()


# (batch, h, w, radii, heads, d_head): the compiled head shapes (8x16, 4x8) and the
# generic path (3x5), maps smaller than a window, 1x1.
CASES = [
    (2, 11, 13, [1, 2, 3], 8, 16),
    (1, 9, 20, [5, 5, 2, 0], 4, 8),
    (2, 5, 4, [3, 1], 3, 5),
    (1, 1, 1, [2, 1], 2, 4),
    (1, 30, 7, [1], 8, 32),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_native_equals_tf_path(case):
    b, h, w, radii, heads, d_head = case
    d_r = heads * d_head
    rng = np.random.default_rng(0)
    q_full = (rng.normal(size=(b, h, w, d_r)) * 0.5).astype("float32")
    kv = rng.normal(size=(b, len(radii), h, w, 2 * d_r)).astype("float32")
    n = max(1, h * w // 2)
    positions = np.stack([rng.permutation(h * w)[:n] for _ in range(b)]).astype("int32")
    q = np.take_along_axis(q_full.reshape(b, h * w, d_r), positions[..., None], axis=1)
    ours = native().stt_windowed_attention(q, positions, kv, radii=radii, num_heads=heads).numpy()
    assert_float32_close(ours, tf_path(q_full, kv, positions, radii, heads), attention_ops_depth(radii, d_head))



def test_a_radius_past_the_map_equals_the_map_wide_window():
    """Windows are clipped to the map: radius 3 already covers a 3x4 map, and 10^6 (whose unclipped window,
    (2 r + 1)^2 keys, overflowed a 32-bit count and sized the buffers) gives the same bits."""
    rng = np.random.default_rng(5)
    q = rng.normal(size=(1, 6, 16)).astype("float32")
    kv = rng.normal(size=(1, 2, 3, 4, 32)).astype("float32")
    positions = np.array([[0, 3, 5, 6, 8, 11]], np.int32)
    near = native().stt_windowed_attention(q, positions, kv, radii=[3, 4], num_heads=2).numpy()
    far = native().stt_windowed_attention(q, positions, kv, radii=[10**6, 10**9], num_heads=2).numpy()
    np.testing.assert_array_equal(far, near)

def test_native_rejects_bad_positions_and_shapes():
    q = np.zeros((1, 2, 16), np.float32)
    kv = np.zeros((1, 1, 3, 3, 32), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="outside the 3x3 map"):
        native().stt_windowed_attention(q, np.array([[0, 9]], np.int32), kv, radii=[1], num_heads=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="frames but radii"):
        native().stt_windowed_attention(q, np.array([[0, 1]], np.int32), kv, radii=[1, 1], num_heads=2)
    with pytest.raises(tf.errors.InvalidArgumentError, match="2 d_r"):
        native().stt_windowed_attention(q, np.array([[0, 1]], np.int32), kv[..., :16], radii=[1], num_heads=2)



def _wrong_rank_calls():
    """(op, arguments with one input of the wrong rank, that input's name) for every input of both ops."""
    q, positions, kv = np.zeros((1, 2, 16), np.float32), np.array([[0, 1]], np.int32), np.zeros((1, 1, 3, 3, 32), np.float32)
    attention = dict(queries=q, positions=positions, key_values=kv, radii=[1], num_heads=2)
    wrong = {"queries": q[0], "positions": positions[0], "key_values": kv[0]}
    for name, value in wrong.items():
        yield "stt_windowed_attention", {**attention, name: value}, name
    yield "stt_nsm_score", dict(features=np.zeros((4, 4, 8), np.float32), radius=1), "features"


@pytest.mark.parametrize("mode", ["graph", "eager"])
@pytest.mark.parametrize("call", list(_wrong_rank_calls()), ids=lambda call: f"{call[0]}-{call[2]}")
def test_a_wrong_rank_is_refused_naming_the_input(call, mode):
    """Graph construction runs the shape function (ValueError), an eager call the kernel's check."""
    op_name, arguments, name = call
    op = getattr(native(), op_name)
    if mode == "graph":
        with pytest.raises(ValueError, match=rf"input {name} must be \[.*\] \(rank \d\), got shape"):
            tf.function(lambda: op(**arguments)).get_concrete_function()
    else:
        with pytest.raises(tf.errors.InvalidArgumentError, match=rf"{name} must be \[.*\], got"):
            op(**arguments)


def _mismatched_calls():
    """(arguments of the attention op with one disagreement between inputs or attributes, what the error says)."""
    q, positions, kv = np.zeros((1, 2, 16), np.float32), np.array([[0, 1]], np.int32), np.zeros((1, 1, 3, 3, 32), np.float32)
    good = dict(queries=q, positions=positions, key_values=kv, radii=[1], num_heads=2)
    like_queries = r"positions must be \[B, N\] like queries"
    kv_like_queries = r"key_values must be \[B, T, h, w, 2 d_r\] with the queries' B and d_r"
    yield "positions-B", {**good, "positions": np.zeros((2, 2), np.int32)}, like_queries
    yield "positions-N", {**good, "positions": np.zeros((1, 3), np.int32)}, like_queries
    yield "key_values-B", {**good, "key_values": np.zeros((2, 1, 3, 3, 32), np.float32)}, kv_like_queries
    yield "key_values-channels", {**good, "key_values": kv[..., :16]}, kv_like_queries
    yield "radii", {**good, "radii": [1, 1]}, "key_values has 1 frames but radii has 2"
    yield "num_heads", {**good, "num_heads": 3}, "d_r must be divisible by num_heads"


@pytest.mark.parametrize("mode", ["graph", "eager"])
@pytest.mark.parametrize("call", list(_mismatched_calls()), ids=lambda call: call[0])
def test_inputs_that_disagree_are_refused_with_the_same_words_in_graph_and_eager(call, mode):
    _, arguments, message = call
    op = native().stt_windowed_attention
    if mode == "graph":
        with pytest.raises(ValueError, match=message):
            tf.function(lambda: op(**arguments)).get_concrete_function()
    else:
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            op(**arguments)

def test_native_gradients_equal_tf_path_gradients():
    rng = np.random.default_rng(3)
    b, h, w, radii, heads = 2, 6, 7, [2, 1], 2
    q = tf.constant(rng.normal(size=(b, 20, 8)).astype("float32"))
    kv = tf.constant(rng.normal(size=(b, 2, h, w, 16)).astype("float32"))
    positions = tf.constant(np.stack([rng.permutation(h * w)[:20] for _ in range(b)]).astype("int32"))
    probe = tf.constant(rng.normal(size=(b, 20, 8)).astype("float32"))
    grads = []
    for portable in (False, True):
        with tf.GradientTape() as tape:
            tape.watch([q, kv])
            if portable:
                full = tf.scatter_nd(tf.stack([tf.broadcast_to(tf.range(b)[:, None], [b, 20]), positions], -1), q, [b, h * w, 8])
                out = temporal_attention.windowed_attention(tf.reshape(full, [b, h, w, 8]), kv, radii, heads)
                out = tf.gather(tf.reshape(out, [b, h * w, 8]), positions, batch_dims=1)
            else:
                out = temporal_attention.selected_windowed_attention(q, positions, kv, radii, heads)
            loss = tf.reduce_sum(out * probe)
        grads.append(tape.gradient(loss, [q, kv]))
    for a, c in zip(*grads):  # the backward pass adds the same sums once more
        assert_float32_close(a.numpy(), c.numpy(), 2 * attention_ops_depth(radii, 8 // heads))


def op_types(fn, *args):
    return {op.type for op in fn.get_concrete_function(*args).graph.get_operations()}


def test_native_op_only_where_allowed():
    layer = SparseTemporalTransformer(num_key_frames=2, num_heads=2, neighborhood_radius=1)
    q = tf.zeros([1, 5, 6, 16])
    k = tf.zeros([1, 2, 5, 6, 16])
    layer(q, k)
    assert "SttWindowedAttention" in op_types(tf.function(layer), q, k)
    assert "SttWindowedAttention" not in op_types(tf.function(layer, jit_compile=True), q, k)

    def portable(q, k):
        with kernels.portable_ops():
            return layer(q, k)

    assert "SttWindowedAttention" not in op_types(tf.function(portable), q, k)


def test_saved_model_never_needs_the_native_library(tmp_path):
    layer = SparseTemporalTransformer(num_key_frames=2, num_heads=2, neighborhood_radius=1)
    q = tf.random.normal([1, 5, 6, 16])
    k = tf.random.normal([1, 2, 5, 6, 16])
    expected = layer(q, k).numpy()
    module = tf.Module()
    module.keras_variables = [v.value for v in layer.variables]  # as export/saved_model.py does
    module.f = tf.function(lambda q, k: layer(q, k), input_signature=[tf.TensorSpec(q.shape), tf.TensorSpec(k.shape)])
    tf.saved_model.save(module, str(tmp_path / "sm"))  # traces under the save context
    pb = open(tmp_path / "sm" / "saved_model.pb", "rb").read()
    assert b"SttWindowedAttention" not in pb
    loaded = tf.saved_model.load(str(tmp_path / "sm"))  # kept alive: it owns the variables
    np.testing.assert_allclose(loaded.f(q, k).numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("case", [(2, 9, 21, 16, 2), (1, 5, 4, 8, 3), (1, 1, 1, 4, 1), (1, 12, 40, 32, 5), (1, 7, 7, 8, 0), (1, 20, 17, 24, 7)],
                         ids=str)
def test_native_nsm_equals_tf_path(case):
    from stt_keras.layers import nsm

    b, h, w, d, r = case
    x = np.random.default_rng(1).normal(size=(b, h, w, d)).astype("float32")
    x[0, 0, 0] = 0.0  # a zero vector: cosine 0 by the shared denominator floor
    ours = native().stt_nsm_score(x, radius=r).numpy()
    with kernels.portable_ops():
        expected = nsm.nsm_score(x, r).numpy()
    assert_float32_close(ours, expected, d + 2 * (2 * r + 1) ** 2)  # cosines, then their windowed mean


def test_native_nsm_rejects_radius_over_7():
    with pytest.raises((tf.errors.InvalidArgumentError, ValueError), match="at most 7"):
        native().stt_nsm_score(np.zeros((1, 4, 4, 8), np.float32), radius=8)



# Slow (a developer's check, `make test-slow`): it compiles the library once more, and another compiler version
# may warn about something new without anything being wrong on the user's machine (the build itself is tested by
# every kernel test of the default suite).
@pytest.mark.slow
@pytest.mark.parametrize("march", ["native", "x86-64-v3"])
def test_the_library_builds_without_warnings_in_our_sources(tmp_path, monkeypatch, march):
    """-Wall -Wextra, TensorFlow's headers as system headers: the compiler says nothing about our files, for this
    CPU and for the AVX2 profile of STT_KERAS_NATIVE_MARCH, whose 16-float vectors are not native."""
    import platform
    import shutil

    from stt_keras.kernels import build

    if shutil.which(os.environ.get("CXX", "g++")) is None:
        pytest.skip("no C++ compiler")
    if march != "native" and platform.machine() != "x86_64":
        pytest.skip(f"-march={march} is an x86-64 target")
    assert {"-Wall", "-Wextra"} <= set(build.FLAGS) and "-w" not in build.FLAGS
    monkeypatch.setenv("STT_KERAS_CACHE", str(tmp_path))
    monkeypatch.setenv("STT_KERAS_NATIVE_MARCH", march)
    path = build.library_path()
    messages = build.build(path)
    ours = tuple(os.path.basename(name) for name in (*build.SOURCES, *build.HEADERS))
    warnings = [line for line in messages.splitlines()
                if ("warning" in line or "note:" in line) and any(name in line for name in ours)]
    assert not warnings, messages[-4000:]
    assert build.verify(path) is None

FALLBACK_SCRIPT = """
import os, sys, numpy as np
from stt_keras import kernels
from stt_keras.layers import SparseTemporalTransformer
mode = sys.argv[1]
if mode == "corrupt":  # damaged after it was built and recorded: it passes the checksum file check but not dlopen
    import hashlib
    path = kernels._library_path()
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    open(path, "wb").write(b"not a shared library")
    open(path + ".sha256", "w").write(hashlib.sha256(b"not a shared library").hexdigest())
    os.chmod(path, 0o644), os.chmod(path + ".sha256", 0o644)
print("USE_NATIVE", kernels.use_native())
print("STATUS", kernels.native_status())
print("SO_FILES", sorted(f for f in os.listdir(os.environ["STT_KERAS_CACHE"]) if f.endswith(".so")))
layer = SparseTemporalTransformer(num_key_frames=1, num_heads=2, neighborhood_radius=1)
out = layer(np.ones((1, 4, 4, 16), np.float32), np.ones((1, 1, 4, 4, 16), np.float32))
print("FINITE", bool(np.isfinite(out.numpy()).all()))
"""


@pytest.mark.parametrize("mode", ["no-compiler", "corrupt"])
def test_unbuildable_or_corrupt_library_falls_back_to_pure_tf(tmp_path, mode):
    import subprocess
    import sys

    env = {**os.environ, "STT_KERAS_CACHE": str(tmp_path / "cache"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    if mode == "no-compiler":
        env["CXX"] = str(tmp_path / "no-such-compiler")
        (tmp_path / "cache").mkdir()
    result = subprocess.run([sys.executable, "-c", FALLBACK_SCRIPT, mode], env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "USE_NATIVE False" in out and "STATUS unavailable:" in out and "FINITE True" in out
    assert "pure-TF path" in result.stderr  # the user is told, once
    if mode == "no-compiler":
        assert "SO_FILES []" in out  # a failed build leaves nothing half-written


def test_onnx_export_writes_a_native_op_as_a_node_of_the_given_custom_domain(tmp_path):
    """onnx_export.export's custom handlers and domains (benchmarks/native_onnx.py): the op keeps its
    inputs and attributes, in the domain named, and the file imports that domain."""
    from stt_keras.export import onnx_export

    module = kernels.load()

    @tf.function(input_signature=[tf.TensorSpec([1, 8, 8, 4], tf.float32)], autograph=False)
    def score(x):
        return {"score": module.stt_nsm_score(x, radius=2)}

    def as_custom(ctx, node, name, args):
        node.domain = "stt.test"
        return node

    model = onnx_export.export(score, score.input_signature, tmp_path / "score.onnx",
                               custom_handlers={"SttNsmScore": as_custom}, custom_domains=["stt.test"])
    nodes = [n for n in model.graph.node if n.op_type == "SttNsmScore"]
    assert len(nodes) == 1 and nodes[0].domain == "stt.test"
    assert [a.i for a in nodes[0].attribute if a.name == "radius"] == [2]
    assert ("stt.test", 1) in {(o.domain, o.version) for o in model.opset_import}
    # The edge demo's session loads the custom-op libraries such a file needs (a missing one is named).
    from stt_edge_demo.runners import OnnxSession

    with pytest.raises(Exception, match="nonexistent/libstt_ops.so"):
        OnnxSession(tmp_path / "score.onnx", custom_ops_libraries=["/nonexistent/libstt_ops.so"])
