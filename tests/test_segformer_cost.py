"""benchmarks/segformer_cost.py: its tilings option is checked before any work, and a forced tiling is the one
the exported attention uses (and is undone)."""

import importlib.util
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "segformer_cost.py")


def _cost_module():
    spec = importlib.util.spec_from_file_location("segformer_cost", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("tiling", ["5x2", "eight"])
def test_a_bad_tiling_is_refused_in_one_line(tiling):
    result = subprocess.run([sys.executable, SCRIPT, "--tflite-int8", "--tilings", "auto", tiling],
                            capture_output=True, text=True, timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 2
    assert f"segformer_cost.py: error: --tilings: {tiling!r}" in result.stderr, result.stderr


def test_a_forced_tiling_is_what_the_attention_uses_and_is_undone():
    from stt_keras.layers import dense_masked

    module = _cost_module()
    radii, rng = [2, 1], np.random.default_rng(0)
    q = tf.constant(rng.normal(size=(1, 12, 20, 8)).astype(np.float32))
    packed = tf.constant(rng.normal(size=(1, 12, 20, 2 * 16)).astype(np.float32))
    auto = dense_masked.attention_tiling(radii, 8, 2)
    expected = dense_masked.windowed_attention(q, packed, radii, 2)
    calls = []
    original = dense_masked._tile_tables
    with module.attention_tiling((8, 1)):
        assert dense_masked.attention_tiling(radii, 8, 2) == (8, 1)
        dense_masked._tile_tables = lambda h, w, r, tile: calls.append(tile) or original(h, w, r, tile)
        try:
            got = dense_masked.windowed_attention(q, packed, radii, 2)
        finally:
            dense_masked._tile_tables = original
    assert calls == [8]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)  # the same function at another tiling
    assert dense_masked.attention_tiling(radii, 8, 2) == auto == (4, auto[1])
