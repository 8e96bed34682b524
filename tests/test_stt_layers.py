"""The STT core layers against the plain NumPy reference (tests/stt_reference.py)."""

import os
import tempfile

import numpy as np
import pytest
import keras
import tensorflow as tf

import stt_reference as ref
from layer_checks import assert_close, check_layer
from tolerances import assert_float32_close
from stt_keras import kernels
from stt_keras.layers import (
    NSMQuerySelection,
    SparseTemporalTransformer,
    key_set_size,
    key_window_radii,
    nsm_score,
)


def weights_of(layer):
    return {"_".join(v.path.split("/")[-2:]): np.asarray(v.numpy(), np.float64) for v in layer.weights}


def random_clip(batch, frames, h, w, d, seed=0):
    rng = np.random.default_rng(seed)
    q = rng.normal(size=(batch, h, w, d)).astype("float32")
    k = rng.normal(size=(batch, frames, h, w, d)).astype("float32")
    return q, k


def randomize(layer, seed=1):
    """Non-trivial weights (non-zero biases, non-unit norms) so every term is tested."""
    rng = np.random.default_rng(seed)
    for v in layer.weights:
        scale = 1.0 / np.sqrt(v.shape[0]) if len(v.shape) == 2 else 0.3
        base = 1.0 if v.path.endswith("gamma") else 0.0
        v.assign((base + scale * rng.normal(size=v.shape)).astype("float32"))


# ---------------------------------------------------------------- key windows
@pytest.mark.parametrize(
    "args, expected",
    [
        ((7, 1, 5, 1), [5, 5, 5, 4, 3, 2, 1]),
        ((3, 2, 3, 2), [3, 3, 2]),
        ((4, 2, 9, 0), [2, 2, 2, 2]),
        ((1, 3, 3, 1), [3]),
        ((5, 1, 2, 1), [2, 2, 2, 2, 1]),
    ],
)
def test_key_window_radii(args, expected):
    assert key_window_radii(*args) == expected == ref.key_window_radii(*args)
    assert key_set_size(*args) == sum((2 * r + 1) ** 2 for r in expected)


def test_key_set_size_paper():
    assert key_set_size(7, 1, 5, 1) == 3 * 121 + 81 + 49 + 25 + 9 == 527


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(num_key_frames=0), "num_key_frames"),
        (dict(num_key_frames=2.5), "num_key_frames"),
        (dict(num_key_frames=3, start_size=0), "start_size"),
        (dict(num_key_frames=3, start_size=4, end_size=2), "start_size"),
        (dict(num_key_frames=3, expansion=-1), "expansion"),
    ],
)
def test_key_window_radii_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        key_window_radii(**kwargs)


# ----------------------------------------------------------------- NSM score
@pytest.mark.parametrize(
    "shape, radius",
    [((2, 9, 13, 6), 2), ((1, 16, 16, 4), 5), ((1, 3, 20, 5), 3), ((1, 1, 1, 3), 2), ((1, 5, 4, 8), 0)],
)
def test_nsm_score_matches_reference(shape, radius):
    x = np.random.default_rng(3).normal(size=shape).astype("float32")
    ours = nsm_score(x, radius).numpy()
    expected = ref.nsm_score(x.astype(np.float64), radius)
    np.testing.assert_allclose(ours, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("temperature", [0.05, 1.0])
def test_nsm_score_with_temperature_matches_reference_and_ignores_scale(temperature):
    x = np.random.default_rng(5).normal(size=(1, 9, 10, 6)).astype("float32")
    ours = nsm_score(x, 2, temperature).numpy()
    np.testing.assert_allclose(ours, ref.nsm_score(x.astype(np.float64), 2, temperature), rtol=1e-4, atol=1e-4)
    scaled = x * np.random.default_rng(6).uniform(0.1, 10, size=(1, 9, 10, 1)).astype("float32")
    np.testing.assert_allclose(nsm_score(scaled, 2, temperature).numpy(), ours, rtol=1e-4, atol=1e-4)


def test_non_finite_features_are_never_selected_and_both_paths_agree():
    x = np.random.default_rng(8).normal(size=(1, 12, 12, 8)).astype("float32")
    x[0, 5, 6, 3] = np.nan
    x[0, 0, 11, 0] = np.inf
    native = nsm_score(x, 2).numpy()[0]
    with kernels.portable_ops():
        portable = nsm_score(x, 2).numpy()[0]
    poisoned = np.zeros((12, 12), bool)
    poisoned[3:8, 4:9] = True
    poisoned[0:3, 9:12] = True
    np.testing.assert_array_equal(np.isneginf(native), poisoned)
    np.testing.assert_array_equal(np.isneginf(portable), poisoned)
    np.testing.assert_allclose(native[~poisoned], portable[~poisoned], rtol=1e-4, atol=1e-4)
    assert np.isfinite(native[~poisoned]).all()
    idx, _ = NSMQuerySelection(radius=2, top_ratio=0.5)(x)
    assert not poisoned.reshape(-1)[idx.numpy()[0]].any()


def test_nsm_score_zero_on_uniform_map():
    x = np.ones((1, 10, 12, 4), "float32") * 0.7
    np.testing.assert_allclose(nsm_score(x, 3).numpy(), 0.0, atol=1e-5)


def test_nsm_score_is_high_on_a_boundary():
    x = np.zeros((1, 12, 12, 2), "float32")
    x[:, :, :6, 0] = 1.0
    x[:, :, 6:, 1] = 1.0
    s = nsm_score(x, 2).numpy()[0]
    assert s[:, 5:7].min() > s[:, :3].max() + 0.1


def test_query_selection_matches_reference(tmp_path):
    x = np.random.default_rng(4).normal(size=(2, 9, 11, 8)).astype("float32")
    layer, (idx, scores) = check_layer(lambda: NSMQuerySelection(radius=2, top_ratio=0.3), (x,), tmp_path)
    expected = ref.select_queries(ref.nsm_score(x.astype(np.float64), 2), 0.3)
    assert idx.shape == expected.shape == (2, 30)
    for b in range(2):
        assert set(idx.numpy()[b]) == set(expected[b])


@pytest.mark.parametrize("ratio, count", [(0.0, 0), (1.0, 99), (0.5, 50), (0.001, 1)])
def test_query_selection_counts(ratio, count):
    idx, _ = NSMQuerySelection(radius=1, top_ratio=ratio)(np.random.rand(1, 9, 11, 2).astype("float32"))
    assert idx.shape == (1, count)
    assert len(set(idx.numpy()[0])) == count


@pytest.mark.parametrize("ratio", [-0.1, 1.5, "half"])
def test_query_selection_rejects_bad_ratio(ratio):
    with pytest.raises(ValueError, match="top_ratio"):
        NSMQuerySelection(top_ratio=ratio)


def test_query_selection_rejects_bad_rank():
    with pytest.raises(ValueError, match="rank 4"):
        NSMQuerySelection()(np.zeros((2, 3, 4), "float32"))


# ------------------------------------------------------ STT against NumPy
CASES = [
    # (batch, T, h, w, d, heads, s, e, eps, r, top_ratio, key_selection)
    (2, 3, 9, 13, 32, 2, 1, 3, 1, 2, 0.5, "window"),  # windows clipped by every border
    (1, 2, 16, 16, 16, 2, 2, 4, 2, 1, 0.3, "window"),  # two full tiles
    (1, 7, 10, 12, 32, 4, 1, 5, 1, 5, 0.5, "window"),  # paper radii on a small map
    (1, 2, 5, 7, 16, 1, 1, 1, 0, 3, 1.0, "window"),  # every point a query
    (2, 2, 6, 5, 16, 2, 1, 2, 1, 2, 0.4, "all"),  # vanilla
    (1, 3, 1, 1, 16, 2, 1, 2, 1, 1, 1.0, "window"),  # 1x1 map
    (1, 2, 3, 17, 16, 4, 3, 3, 1, 2, 0.7, "window"),  # h smaller than the radius
]


def make_stt(case, **extra):
    b, t, h, w, d, heads, s, e, eps, r, ratio, sel = case
    return SparseTemporalTransformer(
        num_key_frames=t, start_size=s, end_size=e, expansion=eps, neighborhood_radius=r,
        top_ratio=ratio, num_heads=heads, reduction=4, key_selection=sel, **extra,
    )


@pytest.fixture(params=["native", "tf"])
def attention_kernel(request):
    """Runs a test with the native windowed-attention kernel, then with the pure-TF path."""
    if request.param == "tf":
        with kernels.portable_ops():
            yield request.param
    else:
        if os.environ.get("STT_KERAS_NATIVE") != "0":
            assert kernels.use_native(), kernels.native_status()  # must build wherever the tests run
        yield request.param


def check_against_reference(case, implementation):
    """The block (with random weights) against the NumPy reference; exactly the top-ratio points change."""
    b, t, h, w, d, heads, s, e, eps, r, ratio, sel = case
    q, k = random_clip(b, t, h, w, d)
    layer = make_stt(case, implementation=implementation)
    layer(q, k)
    randomize(layer)
    ours = layer(q, k).numpy()
    expected = ref.stt_block(
        q.astype(np.float64), k.astype(np.float64), weights_of(layer), num_key_frames=t,
        start_size=s, end_size=e, expansion=eps, neighborhood_radius=r, top_ratio=ratio,
        num_heads=heads, key_selection=sel, epsilon=1e-5,
    )
    np.testing.assert_allclose(ours, expected, rtol=2e-4, atol=2e-4)
    changed = np.abs(ours - q).max(axis=-1) > 0
    assert changed.sum() == b * max(1, int(np.floor(ratio * h * w + 0.5)))



@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-{c[-1]}-{c[-2]}")
def test_stt_matches_reference(case, attention_kernel):
    check_against_reference(case, "sparse")


@pytest.mark.parametrize("extra", [dict(norm_first=True), dict(nsm_temperature=0.1), dict(ffn_channels=24),
                                   dict(change_weight=1.5), dict(change_weight=0.5, nsm_temperature=0.1),
                                   dict(norm_first=True, residual_gate=True)],
                         ids=["norm_first", "nsm_temperature", "ffn_channels", "change", "change_cos", "residual_gate"])
def test_variants_match_reference(extra, attention_kernel):
    b, t, h, w, d = 2, 3, 9, 13, 32
    q, k = random_clip(b, t, h, w, d)
    layer = make_stt(CASES[0], **extra)
    layer(q, k)
    randomize(layer)
    expected = ref.stt_block(
        q.astype(np.float64), k.astype(np.float64), weights_of(layer), num_key_frames=t, start_size=1,
        end_size=3, expansion=1, neighborhood_radius=2, top_ratio=0.5, num_heads=2,
        nsm_temperature=extra.get("nsm_temperature"), norm_first=extra.get("norm_first", False),
        change_weight=extra.get("change_weight", 0.0), residual_gate=extra.get("residual_gate", False),
    )
    np.testing.assert_allclose(layer(q, k).numpy(), expected, rtol=2e-4, atol=2e-4)


def test_change_selection_picks_the_points_the_previous_frame_saw_differently():
    # A strong weight makes selection follow the change: the points whose features
    # differ from the nearest key frame's are exactly the queries.
    rng = np.random.default_rng(2)
    k = rng.normal(size=(1, 2, 8, 8, 16)).astype("float32")
    q = k[:, -1].copy()
    q[0, 2:4, 3:7] = rng.normal(size=(2, 4, 16))  # 8 points changed since the last frame
    layer = SparseTemporalTransformer(num_key_frames=2, num_heads=2, neighborhood_radius=1, top_ratio=8 / 64,
                                      change_weight=100.0)
    layer(q, k)
    chosen = set(layer.select(tf.constant(q), layer.project_keys(k)).numpy()[0])
    assert chosen == {y * 8 + x for y in range(2, 4) for x in range(3, 7)}


def test_block_keeps_the_query_at_full_width():
    """The paper's block: W^Q/W^K/W^V reduce to d/4 inside attention only; W^O, the
    residual, both LayerNorms and the FFN are at full width d (FFN hidden d / heads)."""
    layer = SparseTemporalTransformer(num_key_frames=2, num_heads=4, reduction=4, neighborhood_radius=1)
    q, k = random_clip(1, 2, 6, 6, 64)
    layer(q, k)
    shapes = {"_".join(v.path.split("/")[-2:]): tuple(v.shape) for v in layer.weights}
    assert shapes["query_kernel"] == shapes["key_kernel"] == shapes["value_kernel"] == (64, 16)
    assert shapes["output_kernel"] == (16, 64)
    assert shapes["ffn1_kernel"] == (64, 16) and shapes["ffn2_kernel"] == (16, 64)
    assert shapes["norm1_gamma"] == shapes["norm2_gamma"] == (64,)
    assert layer.project_keys(k).shape[-1] == 2 * 16  # the cached state stays at 2 d / 4
    # Zero attention and FFN weights: selected points become LN(LN(q)), which keeps
    # the query's direction (no bottleneck): cosine ~1 with the centred input.
    for v in layer.weights:
        if "kernel" in v.path and ("output" in v.path or "ffn2" in v.path):
            v.assign(np.zeros(v.shape, "float32"))
    out = layer(q, k).numpy()[0]
    changed = np.abs(out - q[0]).max(-1) > 0
    a = out[changed] - out[changed].mean(-1, keepdims=True)
    b = q[0][changed] - q[0][changed].mean(-1, keepdims=True)
    cos = (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)
    assert cos.min() > 0.999


def test_norm_first_starts_as_identity_inside_a_model():
    # Keras builds a model's sublayers in a stateless scope, where an `assign` in
    # build() is dropped: identity at start must come from initializers.
    from stt_keras.models import STTSegmenter

    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=3, norm_first=True)
    clip = np.random.default_rng(0).integers(0, 255, (1, 4, 32, 32, 3)).astype("uint8")
    model(clip)
    assert np.abs(model.stt.output_kernel.numpy()).max() == 0
    assert np.abs(model.stt.ffn2_kernel.numpy()).max() == 0
    features = model.encoder(clip[:, -1])["features"]
    keys = model.encoder(clip[0])["features"][None, :-1]
    np.testing.assert_array_equal(model.stt(features, keys).numpy(), features.numpy())


def test_window_equals_all_keys_when_windows_cover_the_map():
    q, k = random_clip(2, 2, 4, 5, 16)
    win = SparseTemporalTransformer(num_key_frames=2, start_size=5, end_size=5, num_heads=2, top_ratio=0.6, neighborhood_radius=1)
    full = SparseTemporalTransformer.from_config({**win.get_config(), "key_selection": "all"})
    win(q, k)
    randomize(win)
    full(q, k)
    full.set_weights(win.get_weights())
    assert_close(win(q, k), full(q, k), atol=1e-5)


def test_top_ratio_zero_is_identity():
    q, k = random_clip(2, 3, 6, 7, 16)
    layer = SparseTemporalTransformer(num_key_frames=3, num_heads=2, top_ratio=0.0)
    np.testing.assert_array_equal(layer(q, k).numpy(), q)


def test_top_ratio_rules_are_one_range_one_count_one_coverage():
    from stt_keras.layers import validation

    for bad in (-0.1, 1.5, "half", True, None):
        with pytest.raises(ValueError, match=r"--top-ratio must be (a number )?in \[0, 1\]"):
            validation.check_top_ratio(bad, name="--top-ratio")
    assert validation.check_top_ratio(0) == 0.0 and validation.check_top_ratio(1) == 1.0
    for points in (1, 2, 7, 63, 64, 99):
        for ratio in (0.0, 0.001, 0.25, 0.5, 0.75, 0.999, 1.0):
            count = validation.query_count(ratio, points)
            assert count == ref.num_selected(ratio, points)  # the NumPy reference's rule
            if ratio > 0:  # a map whose size is known only at run time counts the same
                assert int(validation.query_count(ratio, tf.constant(points))) == count
            expected = "none" if count == 0 else "all" if count == points else "some"
            assert validation.coverage(ratio, points) == expected
    assert validation.coverage(0.999) == "some" and validation.coverage(1.0) == "all"


def test_a_ratio_that_rounds_to_every_point_is_top_ratio_one_in_both_implementations():
    # 0.995 of 8x8 points is all 64: no score, no selection, no mask (`validation.coverage`).
    q, k = random_clip(1, 2, 8, 8, 16)
    outputs = {}
    for ratio in (0.995, 1.0):
        layer = SparseTemporalTransformer(num_key_frames=2, num_heads=2, top_ratio=ratio, neighborhood_radius=1)
        layer.build(q.shape, k.shape)
        randomize(layer)
        assert sorted(layer.select(tf.constant(q), layer.project_keys(k)).numpy()[0]) == list(range(64))
        outputs[ratio] = [layer.attend(q, layer.project_keys(k), implementation=i).numpy()
                          for i in ("sparse", "dense_masked")]
    for i in range(2):
        np.testing.assert_array_equal(outputs[0.995][i], outputs[1.0][i])
    from stt_keras.layers import dense_masked

    np.testing.assert_array_equal(dense_masked.top_mask(tf.random.normal([1, 8, 8, 1]), 0.995).numpy(), 1.0)


def test_key_outside_every_window_has_no_effect_and_inside_does(attention_kernel):
    # T=1, radius 1: the key frame influences selected points only within 1 pixel.
    h, w = 12, 12
    q, k = random_clip(1, 1, h, w, 16, seed=7)
    layer = SparseTemporalTransformer(num_key_frames=1, start_size=1, end_size=1, num_heads=2, top_ratio=0.05, neighborhood_radius=1)
    base = layer(q, k).numpy()
    selected = np.argwhere(np.abs(base - q).max(-1)[0] > 0)
    near = np.zeros((h, w), bool)
    for u, v in selected:
        near[max(u - 1, 0): u + 2, max(v - 1, 0): v + 2] = True
    far = np.argwhere(~near)[0]
    k_far = k.copy()
    k_far[0, 0, far[0], far[1]] += 5.0
    np.testing.assert_array_equal(layer(q, k_far).numpy(), base)
    u, v = selected[0]
    k_near = k.copy()
    k_near[0, 0, u, v] += 5.0
    assert np.abs(layer(q, k_near).numpy() - base).max() > 1e-3


def test_batch_elements_are_independent():
    case = CASES[0]
    q, k = random_clip(2, 3, 9, 13, 32)
    layer = make_stt(case)
    both = layer(q, k).numpy()
    for i in range(2):
        assert_close(layer(q[i: i + 1], k[i: i + 1]), both[i: i + 1], atol=1e-5)


def test_layer_checks_window(tmp_path):
    q, k = random_clip(2, 3, 9, 13, 32)
    check_layer(lambda: make_stt(CASES[0]), (q, k), tmp_path, atol=1e-5)


@pytest.mark.parametrize("implementation", ["sparse", "dense_masked"])
def test_residual_gate_starts_as_the_identity_and_every_weight_learns(implementation):
    """Zero gates, Glorot W^O and FFN: the block is exactly the identity, the gates get gradient at
    once, and once they move every weight gets gradient; non-zero gates change the output."""
    q, k = (tf.constant(x) for x in random_clip(2, 2, 9, 10, 16))
    layer = SparseTemporalTransformer(num_key_frames=2, num_heads=2, top_ratio=0.5, neighborhood_radius=2,
                                      norm_first=True, residual_gate=True, implementation=implementation)
    np.testing.assert_array_equal(layer(q, k).numpy(), q.numpy())
    assert [v.path.split("/")[-2:] for v in layer.weights[-2:]] == [["gates", "attention"], ["gates", "ffn"]]
    assert np.abs(layer.output_kernel.numpy()).mean() > 0.05 and np.abs(layer.ffn2_kernel.numpy()).mean() > 0.05  # Glorot

    def gradients():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.sin(layer(q, k)))
        return {v.path.split("/", 1)[1]: np.abs(np.asarray(g)).max() if g is not None else None
                for v, g in zip(layer.trainable_weights, tape.gradient(loss, layer.trainable_weights))}

    at_start = gradients()
    assert at_start["gates/attention"] > 0 and at_start["gates/ffn"] > 0
    assert at_start["output/kernel"] == 0  # behind a zero gate, as a zero W^O was in front of it
    layer.gates.attention.assign(np.full(16, 0.1, "float32"))
    layer.gates.ffn.assign(np.full(16, 0.1, "float32"))
    assert np.abs(layer(q, k).numpy() - q.numpy()).max() > 1e-2
    assert all(g is not None and g > 0 for g in gradients().values())


def test_layer_checks_all_keys(tmp_path):
    q, k = random_clip(2, 2, 6, 5, 16)
    check_layer(lambda: make_stt(CASES[4]), (q, k), tmp_path, atol=1e-5)


def test_projected_keys_path_equals_call():
    q, k = random_clip(1, 3, 9, 13, 32)
    layer = make_stt(CASES[0])
    assert_close(layer.attend(q, layer.project_keys(k)), layer(q, k), atol=1e-6)
    # Frame-by-frame projection (what streaming caches) equals the batched one.
    per_frame = tf.stack([layer.project_keys(k[:, i]) for i in range(3)], axis=1)
    assert_close(per_frame, layer.project_keys(k), atol=1e-6)


def test_dynamic_spatial_shape():
    layer = SparseTemporalTransformer(num_key_frames=2, num_heads=2, neighborhood_radius=2)
    qi = keras.Input((None, None, 16))
    ki = keras.Input((2, None, None, 16))
    model = keras.Model([qi, ki], layer(qi, ki))
    for h, w in [(5, 9), (11, 8)]:
        q, k = random_clip(1, 2, h, w, 16)
        assert_close(model([q, k]), layer(q, k), atol=1e-6)
        assert model([q, k]).shape == (1, h, w, 16)


# ------------------------------------------------------------- gradients
def test_gradients_reach_every_weight_and_both_inputs():
    q, k = random_clip(2, 2, 9, 10, 16)
    q, k = tf.constant(q), tf.constant(k)
    layer = SparseTemporalTransformer(num_key_frames=2, num_heads=2, top_ratio=0.5, neighborhood_radius=2)
    layer(q, k)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch([q, k])
        loss = tf.reduce_sum(tf.sin(layer(q, k)))
    grads = tape.gradient(loss, layer.trainable_weights + [q, k])
    for var, g in zip(layer.trainable_weights + ["query", "keys"], grads):
        name = getattr(var, "path", var)
        assert g is not None, f"no gradient for {name}"
        assert np.abs(np.asarray(g)).max() > 0, f"zero gradient for {name}"


@pytest.mark.parametrize("sel", ["window", "all"])
def test_gradients_match_finite_differences(sel, attention_kernel):
    # top_ratio=1 keeps the (piecewise constant) selection fixed under perturbation.
    rng = np.random.default_rng(11)
    q = tf.constant(rng.normal(size=(1, 4, 5, 8)), tf.float64)
    k = tf.constant(rng.normal(size=(1, 2, 4, 5, 8)), tf.float64)
    layer = SparseTemporalTransformer(num_key_frames=2, start_size=1, end_size=2, num_heads=2, top_ratio=1.0, neighborhood_radius=1, key_selection=sel)
    layer(q, k)
    randomize(layer)
    probe = tf.constant(rng.normal(size=(1, 4, 5, 8)), tf.float32)

    def loss(q, k):
        return tf.reduce_sum(layer(q, k) * probe)

    with tf.GradientTape() as tape:
        tape.watch([q, k])
        value = loss(q, k)
    gq, gk = tape.gradient(value, [q, k])
    gw = None
    with tf.GradientTape() as tape:
        value = loss(q, k)
    gw = tape.gradient(value, layer.ffn1_kernel)
    eps = 1e-2
    for _ in range(4):
        i = tuple(rng.integers(0, s) for s in q.shape)
        dq = np.zeros(q.shape)
        dq[i] = eps
        fd = (loss(q + dq, k) - loss(q - dq, k)).numpy() / (2 * eps)
        np.testing.assert_allclose(gq.numpy()[i], fd, rtol=0.05, atol=2e-3)
        j = tuple(rng.integers(0, s) for s in k.shape)
        dk = np.zeros(k.shape)
        dk[j] = eps
        fd = (loss(q, k + dk) - loss(q, k - dk)).numpy() / (2 * eps)
        np.testing.assert_allclose(gk.numpy()[j], fd, rtol=0.05, atol=2e-3)
    w0 = layer.ffn1_kernel.numpy()
    m = (1, 2)
    for sign in (1, -1):
        w = w0.copy()
        w[m] += sign * eps
        layer.ffn1_kernel.assign(w)
        if sign == 1:
            plus = loss(q, k).numpy()
        else:
            minus = loss(q, k).numpy()
    layer.ffn1_kernel.assign(w0)
    np.testing.assert_allclose(gw.numpy()[m], (plus - minus) / (2 * eps), rtol=0.05, atol=2e-3)


# --------------------------------------------------------- mixed precision
@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy):
    q, k = random_clip(1, 2, 9, 10, 16)
    ref_layer = SparseTemporalTransformer(num_key_frames=2, num_heads=2, neighborhood_radius=2)
    expected = ref_layer(q, k).numpy()
    layer = SparseTemporalTransformer(num_key_frames=2, num_heads=2, neighborhood_radius=2, dtype=policy)
    layer(q, k)
    layer.set_weights(ref_layer.get_weights())
    out = layer(q, k)
    assert out.dtype == tf.float16 if policy == "mixed_float16" else tf.bfloat16
    tol = 0.05 if policy == "mixed_float16" else 0.2
    np.testing.assert_allclose(np.asarray(out, np.float32), expected, atol=tol, rtol=tol)
    xla = tf.function(lambda a, b: layer(a, b), jit_compile=True)(q, k)
    assert np.isfinite(np.asarray(xla, np.float32)).all()


# ------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, q_shape, k_shape, message",
    [
        ({}, (1, 8, 8), (1, 2, 8, 8, 16), "query"),
        ({}, (1, 8, 8, 16), (1, 8, 8, 16), "keys"),
        ({}, (1, 8, 8, 16), (1, 3, 8, 8, 16), "num_key_frames=2"),
        ({}, (1, 8, 8, 16), (1, 2, 8, 9, 16), "width"),
        ({}, (2, 8, 8, 16), (1, 2, 8, 8, 16), "batch size"),
        ({"num_heads": 3}, (1, 8, 8, 16), (1, 2, 8, 8, 16), "divisible"),
        ({"num_heads": 4, "reduction": 8}, (1, 8, 8, 16), (1, 2, 8, 8, 16), "divisible"),
    ],
)
def test_stt_rejects_bad_input(kwargs, q_shape, k_shape, message):
    layer = SparseTemporalTransformer(num_key_frames=2, **{"num_heads": 2, **kwargs})
    with pytest.raises(ValueError, match=message):
        layer(np.zeros(q_shape, "float32"), np.zeros(k_shape, "float32"))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_ratio": 1.2}, "top_ratio"),
        ({"key_selection": "dense"}, "key_selection"),
        ({"start_size": 6, "end_size": 5}, "start_size"),
        ({"num_heads": 0}, "num_heads"),
        ({"neighborhood_radius": -1}, "neighborhood_radius"),
        ({"nsm_temperature": 0.0}, "nsm_temperature"),
        ({"ffn_channels": 0}, "ffn_channels"),
        ({"change_weight": -1}, "change_weight"),
        ({"residual_gate": True}, "norm_first"),
    ],
)
def test_stt_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SparseTemporalTransformer(**kwargs)


# ------------------------------------------- implementation="dense_masked" (the exported dense_masked form)
WINDOW_CASES = [c for c in CASES if c[-1] == "window"]


def test_dense_masked_pieces_equal_the_sparse_pieces(monkeypatch):
    from stt_keras.layers import dense_masked, nsm, temporal_attention

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 13, 19, 16)).astype(np.float32)
    x[0, 3, 4] = 0.0  # a zero vector: cosine must be 0, not NaN
    np.testing.assert_allclose(dense_masked.nsm_score(tf.constant(x), 3)[..., 0], nsm.nsm_score(x, 3), rtol=1e-5, atol=1e-5)

    scores = np.stack([rng.permutation(13 * 19) for _ in range(2)]).reshape(2, 13, 19, 1).astype(np.float32) * 0.37
    for ratio in (0.05, 0.5, 0.93, 1.0):
        mask = dense_masked.top_mask(tf.constant(scores), ratio).numpy().reshape(2, -1)
        chosen = nsm.select_top(scores[..., 0], ratio).numpy()
        expected = np.zeros((2, 13 * 19), np.float32)
        np.put_along_axis(expected, chosen, 1.0, axis=1)
        np.testing.assert_array_equal(mask, expected)

    radii = [2, 1, 1]
    q = rng.normal(size=(2, 9, 14, 8)).astype(np.float32)
    kv = rng.normal(size=(2, 3, 9, 14, 16)).astype(np.float32)
    expected = temporal_attention.windowed_attention(q, kv, radii, num_heads=2)
    packed = dense_masked.pack_frames(tf.constant(kv))
    np.testing.assert_array_equal(dense_masked.unpack_frames(packed, 3), kv)
    got = dense_masked.windowed_attention(tf.constant(q), packed, radii, num_heads=2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # Tile groups (what keeps STT-PSP18's halos inside the GPU's textures): the same function, for runs
    # of tiles along a tile row (tile 4: 2 tiles of 136 keys, 6 groups; tile 8: 1 tile of 344 keys, 4 groups)
    # and for bands of whole tile rows (tile 4: 8 tiles, a band of 2 rows and one of 1; tile 8: 1 row each),
    # at the module's query tile and at the other one.
    for tile in (4, 8):
        monkeypatch.setattr(dense_masked, "ATTENTION_TILE", tile)
        halo = sum((tile + 2 * r) ** 2 for r in radii)
        for limit in ((2 if tile == 4 else 1) * halo, (8 if tile == 4 else 2) * halo, 10**6):
            monkeypatch.setattr(dense_masked, "MAX_HALO_ROWS", limit)
            got = dense_masked.windowed_attention(tf.constant(q), packed, radii, num_heads=2)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    # The whole map as one block (the small maps' form): every frame's map is the halo, one window mask.
    monkeypatch.setattr(dense_masked, "ATTENTION_TILE", dense_masked.WHOLE_MAP)
    got = dense_masked.windowed_attention(tf.constant(q), packed, radii, num_heads=2)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_dense_masked_attention_with_tiles_inside_the_map(monkeypatch):
    """Tiles whose halos lie inside the map and tiles whose halos reach out of it, in the same groups and
    alone: 26 x 29 points, 4 x 4 and 8 x 8 tiles, radii [2, 1] (the other tests' maps have border tiles
    only); one tile a group and all tiles in one."""
    from stt_keras.layers import dense_masked, temporal_attention

    rng = np.random.default_rng(3)
    radii = [2, 1]
    q = rng.normal(size=(1, 26, 29, 8)).astype(np.float32)
    kv = rng.normal(size=(1, 2, 26, 29, 16)).astype(np.float32)
    expected = temporal_attention.windowed_attention(q, kv, radii, num_heads=2)
    packed = dense_masked.pack_frames(tf.constant(kv))
    for tile in dense_masked.ATTENTION_TILES:
        monkeypatch.setattr(dense_masked, "ATTENTION_TILE", tile)
        valid, _, _ = dense_masked._tile_tables(26, 29, radii, tile)
        assert valid.all(axis=1).any() and not valid.all()  # both kinds of tile
        for rows in (1, 10**6):
            monkeypatch.setattr(dense_masked, "MAX_HALO_ROWS", rows)
            got = dense_masked.windowed_attention(tf.constant(q), packed, radii, num_heads=2)
            np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_dense_masked_attention_tiling_follows_the_block_shape(monkeypatch):
    """4 x 4 query tiles for few channels (STT-SegFormer's stage 1 and the tiny presets), 8 x 8 for STT-PSP18's
    d_r = 128; groups of at most MAX_HALO_ROWS key rows (halos of 200 and 1668 keys); a small map is one block;
    ATTENTION_TILE forces a tile."""
    from stt_keras.layers import dense_masked

    assert dense_masked.attention_tiling([3, 2, 1], 8, 4) == (4, 4096 // 200)  # STT-SegFormer-B0, MiT stage 1: d_r 8
    assert dense_masked.attention_tiling([3, 2, 1], 32, 4) == (4, 4096 // 200)  # stt_psp_tiny: d_r 32
    assert dense_masked.attention_tiling([5, 5, 5, 4, 3, 2, 1], 128, 8) == (8, 4096 // 1668)  # STT-PSP18
    # A small map is one block: STT-BiSe18 at 256 x 512 (8 x 16 points; 896 keys a point against 1668) and the
    # tiny presets at 64 x 128; not at twice the size, nor STT-PSP18's 32 x 64 map.
    whole = (dense_masked.WHOLE_MAP, 1)
    assert dense_masked.attention_tiling([5, 5, 5, 4, 3, 2, 1], 128, 8, 8, 16) == whole
    assert dense_masked.attention_tiling([3, 2, 1], 32, 4, 8, 16) == whole
    assert dense_masked.attention_tiling([5, 5, 5, 4, 3, 2, 1], 128, 8, 16, 32) == (8, 4096 // 1668)
    assert dense_masked.attention_tiling([3, 2, 1], 32, 4, 16, 32) == (4, 4096 // 200)
    assert dense_masked.attention_tiling([5, 5, 5, 4, 3, 2, 1], 128, 8, 32, 64) == (8, 4096 // 1668)
    monkeypatch.setattr(dense_masked, "MAX_HALO_ROWS", 100)
    assert dense_masked.attention_tiling([5, 5, 5, 4, 3, 2, 1], 128, 8) == (8, 1)  # at least one tile
    monkeypatch.setattr(dense_masked, "ATTENTION_TILE", 8)
    assert dense_masked.attention_tiling([3, 2, 1], 8, 4) == (8, 1)


@pytest.mark.parametrize("case", WINDOW_CASES, ids=lambda c: "x".join(map(str, c[:5])) + f"-{c[-2]}")
def test_dense_masked_matches_reference(case):
    check_against_reference(case, "dense_masked")


@pytest.mark.parametrize("extra", [dict(norm_first=True), dict(nsm_temperature=0.1), dict(ffn_channels=24),
                                   dict(change_weight=1.5), dict(change_weight=0.5, nsm_temperature=0.1, norm_first=True),
                                   dict(top_ratio=1.0), dict(norm_first=True, residual_gate=True)],
                         ids=["norm_first", "nsm_temperature", "ffn_channels", "change", "all_options", "top100",
                              "residual_gate"])
def test_dense_masked_variants_match_reference(extra):
    b, t, h, w, d = 2, 3, 9, 13, 32
    q, k = random_clip(b, t, h, w, d)
    ratio = extra.pop("top_ratio", 0.5)
    case = CASES[0][:10] + (ratio, "window")
    layer = make_stt(case, implementation="dense_masked", **extra)
    layer(q, k)
    randomize(layer)
    expected = ref.stt_block(
        q.astype(np.float64), k.astype(np.float64), weights_of(layer), num_key_frames=t, start_size=1,
        end_size=3, expansion=1, neighborhood_radius=2, top_ratio=ratio, num_heads=2,
        nsm_temperature=extra.get("nsm_temperature"), norm_first=extra.get("norm_first", False),
        change_weight=extra.get("change_weight", 0.0), residual_gate=extra.get("residual_gate", False),
    )
    np.testing.assert_allclose(layer(q, k).numpy(), expected, rtol=2e-4, atol=2e-4)


def test_implementation_is_a_choice_of_the_layer_and_of_each_call(tmp_path):
    q, k = random_clip(1, 3, 9, 13, 32)
    sparse = make_stt(CASES[0])
    sparse(q, k)
    randomize(sparse)
    dense = SparseTemporalTransformer.from_config({**sparse.get_config(), "implementation": "dense_masked"})
    dense(q, k)
    dense.set_weights(sparse.get_weights())
    assert sparse.get_config()["implementation"] == "sparse"  # the default
    kv = sparse.project_keys(k)
    packed = tf.reshape(tf.transpose(kv, [0, 2, 3, 1, 4]), [1, 9, 13, -1])
    expected = sparse(q, k).numpy()
    for out in (dense(q, k), sparse.attend(q, kv, implementation="dense_masked"),
                sparse.attend(q, packed, implementation="dense_masked"), sparse.attend(q, packed),
                dense.attend(q, kv, implementation="sparse")):
        np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)
    check_layer(lambda: make_stt(CASES[0], implementation="dense_masked"), (q, k), tmp_path, atol=1e-5)


@pytest.mark.parametrize("norm_first, residual_gate", [(False, False), (True, False), (True, True)])
def test_the_shared_block_maths_keeps_every_int8_scope_of_dense_masked(norm_first, residual_gate):
    # `block.project_queries/post_attention` run both implementations; under dense_masked their ops
    # must stay in the sub-scopes int8 export quantizes, each a 1x1 convolution and nothing else heavy.
    from stt_keras.layers import dense_masked

    q, k = random_clip(1, 2, 8, 8, 16)
    layer = SparseTemporalTransformer(num_key_frames=2, num_heads=2, top_ratio=0.5, neighborhood_radius=1,
                                      norm_first=norm_first, residual_gate=residual_gate)
    layer.build(q.shape, k.shape)

    @tf.function
    def step(query, frame):
        with tf.name_scope(dense_masked.SCOPE):
            current = dense_masked.project_keys(layer, frame)
            return dense_masked.attend(layer, query, tf.concat([current, current], axis=-1))

    graph = step.get_concrete_function(tf.TensorSpec(q.shape), tf.TensorSpec(q.shape)).graph
    convolutions = {scope: 0 for scope in dense_masked.QUANTIZABLE}
    for op in graph.get_operations():
        scope = op.name.split("/")[1] if op.name.startswith(dense_masked.SCOPE + "/") else None
        if op.type == "Conv2D":
            assert scope in convolutions, f"{op.name}: a 1x1 convolution outside the quantized scopes"
            convolutions[scope] += 1
        assert op.type != "MatMul" or scope not in convolutions, f"{op.name} in a quantized scope"
    # keys (W^K|W^V), query (W^Q), output (W^O), ffn (two layers); the change term is off.
    assert convolutions == {"keys": 1, "query": 1, "output": 1, "ffn": 2}


def test_old_weight_names_read_the_sublayers_weights():
    from stt_keras.layers import compat

    q, k = random_clip(1, 2, 6, 6, 16)
    layer = SparseTemporalTransformer(num_key_frames=2, num_heads=2, neighborhood_radius=1)
    layer(q, k)
    assert len(compat.WEIGHT_NAMES) == 16 and [name for name in compat.WEIGHT_NAMES if not hasattr(layer, name)] == []
    variables = [v for sublayer in layer._weight_layers() for v in sublayer.weights]
    assert [getattr(layer, name) for name in compat.WEIGHT_NAMES] == variables  # the same variables, in order
    assert [v.path.split("/")[-2] + "_" + v.path.split("/")[-1] for v in variables] == list(compat.WEIGHT_NAMES)
    assert layer.weights_of("norm2") == (layer.norm2.gamma, layer.norm2.beta)
    with pytest.raises(ValueError):
        layer.weights_of("attention")


def test_dense_masked_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="implementation"):
        SparseTemporalTransformer(implementation="dense")
    with pytest.raises(ValueError, match="key_selection='window' only"):
        SparseTemporalTransformer(key_selection="all", implementation="dense_masked")
    layer = SparseTemporalTransformer(num_key_frames=2, num_heads=2, neighborhood_radius=2)
    q, k = random_clip(1, 2, 5, 9, 16)
    layer(q, k)
    with pytest.raises(ValueError, match="key_selection='window' only"):
        SparseTemporalTransformer(num_key_frames=2, num_heads=2, key_selection="all").attend(q, layer.project_keys(k), "dense_masked")
    dynamic = tf.function(lambda a, b: layer.attend(a, b, implementation="dense_masked"),
                          input_signature=[tf.TensorSpec([1, None, None, 16]), tf.TensorSpec([1, 2, None, None, 8])])
    with pytest.raises(ValueError, match="static height and width"):
        dynamic.get_concrete_function()


def test_dense_masked_gradients_match_finite_differences_and_reach_every_weight():
    rng = np.random.default_rng(11)
    q = tf.constant(rng.normal(size=(1, 4, 5, 8)), tf.float64)
    k = tf.constant(rng.normal(size=(1, 2, 4, 5, 8)), tf.float64)
    probe = tf.constant(rng.normal(size=(1, 4, 5, 8)), tf.float32)
    layer = SparseTemporalTransformer(num_key_frames=2, start_size=1, end_size=2, num_heads=2, top_ratio=1.0,
                                      neighborhood_radius=1, implementation="dense_masked")
    layer(q, k)
    randomize(layer)

    def loss(q, k):
        return tf.reduce_sum(layer(q, k) * probe)

    with tf.GradientTape() as tape:
        tape.watch([q, k])
        value = loss(q, k)
    gq, gk = tape.gradient(value, [q, k])
    eps = 1e-2
    for _ in range(4):
        for x, g, other in ((q, gq, 0), (k, gk, 1)):
            i = tuple(rng.integers(0, s) for s in x.shape)
            dx = np.zeros(x.shape)
            dx[i] = eps
            args = [(q + dx, k), (q, k + dx)][other], [(q - dx, k), (q, k - dx)][other]
            fd = (loss(*args[0]) - loss(*args[1])).numpy() / (2 * eps)
            np.testing.assert_allclose(g.numpy()[i], fd, rtol=0.05, atol=2e-3)
    # With a mask in play (top_ratio 0.5) every weight and both inputs still get a gradient.
    q, k = random_clip(2, 2, 9, 10, 16)
    q, k = tf.constant(q), tf.constant(k)
    layer = SparseTemporalTransformer(num_key_frames=2, num_heads=2, top_ratio=0.5, neighborhood_radius=2,
                                      implementation="dense_masked")
    layer(q, k)
    with tf.GradientTape() as tape:
        tape.watch([q, k])
        value = tf.reduce_sum(tf.sin(layer(q, k)))
    grads = tape.gradient(value, layer.trainable_weights + [q, k])
    for var, g in zip(layer.trainable_weights + ["query", "keys"], grads):
        assert g is not None and np.abs(np.asarray(g)).max() > 0, f"no gradient for {getattr(var, 'path', var)}"


@pytest.mark.parametrize("overrides", [dict(top_ratio=0.5), dict(top_ratio=0.5, norm_first=True, nsm_temperature=0.1,
                                                                  change_weight=1.0),
                                       dict(top_ratio=0.5, norm_first=True, residual_gate=True)],
                         ids=["top50", "options", "residual_gate"])
def test_stream_step_implementations_agree_with_either_state_layout(overrides):
    from stt_keras.layers import dense_masked
    from stt_keras.models import STTSegmenter

    tf.keras.utils.set_random_seed(4)
    model = STTSegmenter.from_preset("stt_psp_tiny", num_classes=5, **overrides)
    model(np.zeros((1, 4, 32, 48, 3), np.uint8))
    for v in model.stt.weights:  # norm_first starts at zero: make every term count
        v.assign(v.numpy() + np.random.default_rng(5).normal(0, 0.05, v.shape).astype(np.float32))
    rng = np.random.default_rng(1)
    state = model.initial_state(1, 32, 48)
    packed = dense_masked.pack_frames(state)
    for t in range(3):
        frame = rng.integers(0, 256, (1, 32, 48, 3)).astype(np.uint8)
        logits, new_state = model.stream_step(frame, state, t == 0)  # a Python flag: no branch traced
        branched_logits, branched_state = model.stream_step(frame, state, tf.constant(t == 0))
        np.testing.assert_allclose(branched_logits, logits, atol=1e-6)
        np.testing.assert_allclose(branched_state, new_state, atol=1e-6)
        dense_logits, dense_state = model.stream_step(frame, state, t == 0, implementation="dense_masked")
        packed_logits, packed = model.stream_step(frame, packed, np.float32([t == 0]), implementation="dense_masked")
        np.testing.assert_allclose(dense_logits, logits, atol=1e-4)
        np.testing.assert_allclose(packed_logits, logits, atol=1e-4)
        np.testing.assert_allclose(dense_state, new_state, atol=1e-5)
        np.testing.assert_allclose(dense_masked.unpack_frames(packed, model.num_key_frames), new_state, atol=1e-5)
        state = new_state
    with pytest.raises(ValueError, match="implementation"):
        model.stream_step(frame, state, False, implementation="gpu")


def stt_block_ops_depth(layer, channels):
    """float32 roundings on the longest path through the block (tests/tolerances.py): the reduction
    lengths of query projection, scores, softmax, weighted sum, output projection, LayerNorm, FFN, LayerNorm."""
    c = layer.get_config()
    d_r = channels // c["reduction"]
    n_k = key_set_size(c["num_key_frames"], c["start_size"], c["end_size"], c["expansion"])
    ffn = c["ffn_channels"] or d_r
    return channels + d_r // c["num_heads"] + 2 * n_k + d_r + channels + channels + ffn + channels


@pytest.mark.parametrize("tag", ["postnorm", "prenorm"])
def test_files_saved_before_the_block_had_sublayers_load_with_identical_outputs(tag):
    """tests/data/stt_block_*.keras were saved at commit 64a7d8e, when the block's 16 weights
    were its own `add_weight` variables (with the inputs and outputs of that code in the .npz).
    The outputs were computed on the CPU that wrote them: here they agree within float32 rounding
    (another CPU sums in another order), and a real change (a swapped weight, another layer order)
    is thousands of times further away."""
    folder = os.path.join(os.path.dirname(__file__), "data")
    expected = np.load(os.path.join(folder, f"stt_block_{tag}.npz"))
    inputs = [expected["query"], expected["keys"]]
    model = keras.saving.load_model(os.path.join(folder, f"stt_block_{tag}.keras"), safe_mode=True)
    out = model(inputs).numpy()
    stt = model.get_layer("stt")
    depth = stt_block_ops_depth(stt, expected["query"].shape[-1])
    tol = assert_float32_close(out, expected["output"], ops_depth=depth, err_msg="committed output")
    assert [type(layer).__name__ for layer in stt._weight_layers()] == ["Dense"] * 4 + ["LayerNormalization"] + \
        ["Dense"] * 2 + ["LayerNormalization"]
    assert not any("load_own_variables" in vars(layer) for layer in stt._weight_layers())  # the one-time skip is gone

    # The tolerance still sees a real change: swapped weights, or the other order of norms and attention.
    query, key, value, output, norm1, ffn1, ffn2, norm2 = stt._weight_layers()
    for a, b in [(query, key), (norm1, norm2), (ffn1, query)]:
        wa, wb = a.get_weights(), b.get_weights()
        a.set_weights(wb)
        b.set_weights(wa)
        swapped = model(inputs).numpy()
        a.set_weights(wa)
        b.set_weights(wb)
        assert np.abs(swapped - expected["output"]).max() > 1000 * tol, f"{a.name} <-> {b.name} swapped"
    other_order = SparseTemporalTransformer.from_config({**stt.get_config(), "norm_first": not stt.norm_first})
    other_order(*inputs)
    other_order.set_weights(stt.get_weights())
    assert np.abs(other_order(*inputs).numpy() - expected["output"]).max() > 1000 * tol, "norm_first flipped"
    np.testing.assert_array_equal(model(inputs).numpy(), out)  # the weights are back

    # A file saved now has the sublayers' layout and round-trips exactly (same process, same kernels).
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "now.keras")
        model.save(path)
        again = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_array_equal(again(inputs).numpy(), out)
