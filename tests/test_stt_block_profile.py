"""benchmarks/stt_block_profile.py times the STT block cut into op groups: the cuts must compose to the block."""

import importlib.util
import os

import numpy as np
import tensorflow as tf

from stt_keras.layers import SparseTemporalTransformer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _profile_module():
    spec = importlib.util.spec_from_file_location("stt_block_profile", os.path.join(ROOT, "benchmarks", "stt_block_profile.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_profiled_groups_compose_to_the_whole_block():
    h, w, d = 10, 12, 32
    stt = SparseTemporalTransformer(num_key_frames=7, start_size=1, end_size=5, expansion=1, neighborhood_radius=5,
                                    top_ratio=0.5, num_heads=4, reduction=4, implementation="dense_masked")
    rng = np.random.default_rng(0)
    stt(rng.normal(size=(1, h, w, d)).astype(np.float32), rng.normal(size=(1, 7, h, w, d)).astype(np.float32))
    for v in stt.weights:
        base = 1.0 if v.path.endswith("gamma") else 0.0
        v.assign((base + 0.3 * rng.normal(size=v.shape)).astype(np.float32))
    groups = _profile_module().group_functions(stt, h, w)
    assert set(groups) == {"query", "attention", "post", "nsm", "top_mask", "blend", "block"}
    features = tf.constant(groups["block"][1]["features"])
    packed = tf.constant(groups["block"][1]["packed"])

    def run(group, *args):
        return groups[group][0](*args)["y"]

    out = run("post", features, run("attention", run("query", features), packed))
    mask = run("top_mask", run("nsm", features, packed))
    assert 0 < float(tf.reduce_sum(mask)) < h * w  # a real selection: both branches of the blend are used
    np.testing.assert_allclose(run("blend", mask, out, features), run("block", features, packed), rtol=1e-5, atol=1e-5)
