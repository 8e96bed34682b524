"""The checks every stt_keras layer goes through (the keras-hub TestCase idea).

`check_layer(make, inputs, tmp_path)` builds the layer with `make()`, calls it on
`inputs` (a tuple of positional arguments: arrays, or dicts of arrays such as a
decoder's skips) with `call_kwargs` (non-tensor arguments such as a decoder's
`output_size`) and verifies:
  * get_config -> from_config gives a layer with the same config and outputs;
  * eager, tf.function and jit_compile=True agree;
  * compute_output_shape matches the real output shapes (a shape, or a
    structure of them for dict or tuple outputs);
  * a .keras save/load in safe mode gives identical outputs: of a functional
    model wrapping the layer, or of the model itself for a keras.Model (a
    subclassed model that cannot take symbolic inputs).
"""

import importlib
import inspect
import pkgutil

import numpy as np
import keras
import tensorflow as tf


def stt_keras_modules():
    """Every module of the stt_keras package, imported."""
    import stt_keras

    return [importlib.import_module(info.name) for info in pkgutil.walk_packages(stt_keras.__path__, "stt_keras.")]


def stt_keras_layer_classes():
    """Every keras Layer (or Model) subclass defined in a stt_keras module that has a `call`.

    (A base class without one, such as SegmentationDecoder, is not a layer one can use.)
    """
    found = set()
    for module in stt_keras_modules():
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if (issubclass(obj, keras.layers.Layer) and obj.__module__.startswith("stt_keras.")
                    and obj.call is not keras.layers.Layer.call):
                found.add(obj)
    return found


def _as_list(x):
    """The output leaves in a fixed order (dicts by sorted key, as keras.tree flattens them)."""
    return keras.tree.flatten(x)


def _shape_list(shapes):
    """A shape, or a (nested) list/tuple/dict of shapes, as a flat list of tuples (dicts by sorted key)."""
    if isinstance(shapes, dict):
        return [s for key in sorted(shapes) for s in _shape_list(shapes[key])]
    if isinstance(shapes, (list, tuple)) and all(d is None or isinstance(d, int) for d in shapes):
        return [tuple(shapes)]
    return [s for part in shapes for s in _shape_list(part)]


def assert_close(a, b, atol=1e-5, rtol=1e-5, what=""):
    a, b = _as_list(a), _as_list(b)
    assert len(a) == len(b), f"{what}: {len(a)} outputs against {len(b)}"
    for x, y in zip(a, b):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol, err_msg=what)


def _symbolic(x):
    return keras.Input(shape=np.shape(x)[1:], batch_size=np.shape(x)[0], dtype=str(np.asarray(x).dtype))


def check_layer(make, inputs, tmp_path, atol=1e-5, call_kwargs=None, output_shape=True):
    """Runs the checks above; returns (layer, eager outputs).

    `output_shape=False` skips the compute_output_shape check (for a model that
    does not define it; say why where it is used).
    """
    kwargs = dict(call_kwargs or {})
    layer = make()
    eager = layer(*inputs, **kwargs)

    # Config round trip, same weights -> same outputs.
    config = layer.get_config()
    clone = layer.__class__.from_config(config)
    clone(*inputs, **kwargs)
    clone.set_weights(layer.get_weights())
    assert clone.get_config() == config
    assert_close(clone(*inputs, **kwargs), eager, atol=atol, what="from_config")

    # Graph and XLA parity.
    graph = tf.function(lambda *x: layer(*x, **kwargs))(*inputs)
    assert_close(graph, eager, atol=atol, what="tf.function")
    xla = tf.function(lambda *x: layer(*x, **kwargs), jit_compile=True)(*inputs)
    assert_close(xla, eager, atol=atol * 10, rtol=1e-4, what="jit_compile")

    # Output shape inference.
    if output_shape:
        input_shapes = [keras.tree.map_structure(lambda a: tuple(np.shape(a)), x) for x in inputs]
        shapes = _shape_list(layer.compute_output_shape(*input_shapes, **kwargs))
        assert shapes == [tuple(out.shape) for out in _as_list(eager)], "compute_output_shape"

    # .keras round trip in safe mode.
    path = str(tmp_path / f"{layer.name}.keras")
    if isinstance(layer, keras.Model):
        model = make_like(layer)
        model(*inputs, **kwargs)
        model.set_weights(layer.get_weights())
        model.save(path)
        loaded = keras.saving.load_model(path, safe_mode=True)
        assert_close(loaded(*inputs, **kwargs), model(*inputs, **kwargs), atol=0, rtol=0, what=".keras round trip")
        return layer, eager
    model_inputs = [keras.tree.map_structure(_symbolic, x) for x in inputs]
    model = keras.Model(model_inputs, make_like(layer)(*model_inputs, **kwargs))
    model.layers[-1].set_weights(layer.get_weights())
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert_close(loaded(list(inputs)), model(list(inputs)), atol=0, rtol=0, what=".keras round trip")
    assert_close(model(list(inputs)), eager, atol=atol, what="functional model")
    return layer, eager


def make_like(layer):
    return layer.__class__.from_config(layer.get_config())
