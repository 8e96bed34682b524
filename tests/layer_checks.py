"""The checks every stt_keras layer goes through (the keras-hub TestCase idea).

`check_layer(make, inputs)` builds the layer with `make()`, calls it on `inputs`
(a tuple of arrays) and verifies:
  * get_config -> from_config gives a layer with the same config and outputs;
  * a .keras save/load of a model wrapping the layer (safe mode) gives identical outputs;
  * eager, tf.function and jit_compile=True agree;
  * compute_output_shape matches the real output shape.
"""

import numpy as np
import keras
import tensorflow as tf


def _as_list(x):
    return list(x) if isinstance(x, (tuple, list)) else [x]


def assert_close(a, b, atol=1e-5, rtol=1e-5, what=""):
    for x, y in zip(_as_list(a), _as_list(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol, err_msg=what)


def check_layer(make, inputs, tmp_path, atol=1e-5):
    layer = make()
    eager = layer(*inputs)

    # Config round trip, same weights -> same outputs.
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    clone(*inputs)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == config
    assert_close(clone(*inputs), eager, atol=atol, what="from_config")

    # Graph and XLA parity.
    graph = tf.function(lambda *x: layer(*x))(*inputs)
    assert_close(graph, eager, atol=atol, what="tf.function")
    xla = tf.function(lambda *x: layer(*x), jit_compile=True)(*inputs)
    assert_close(xla, eager, atol=atol * 10, rtol=1e-4, what="jit_compile")

    # Output shape inference.
    shapes = layer.compute_output_shape(*[tuple(np.shape(x)) for x in inputs])
    if isinstance(eager, (tuple, list)):
        for s, out in zip(shapes, eager):
            assert tuple(s) == tuple(out.shape)
    else:
        assert tuple(shapes) == tuple(eager.shape)

    # .keras round trip in safe mode.
    model_inputs = [keras.Input(shape=np.shape(x)[1:], batch_size=np.shape(x)[0]) for x in inputs]
    model = keras.Model(model_inputs, make_like(layer)(*model_inputs))
    model.layers[-1].set_weights(layer.get_weights())
    path = str(tmp_path / "layer.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert_close(loaded(list(inputs)), model(list(inputs)), atol=0, rtol=0, what=".keras round trip")
    assert_close(model(list(inputs)), eager, atol=atol, what="functional model")
    return layer, eager


def make_like(layer):
    return layer.__class__.from_config(layer.get_config())
