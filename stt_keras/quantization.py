"""Quantization-aware fine-tuning: the int8 export's rounding simulated in the float model.

`stt-export --quantizations int8` rounds every weight and activation of a float model
(post-training quantization). A model fine-tuned for a few hundred steps with that rounding in its
forward pass (fake quantization, gradients passed straight through) learns weights that tolerate
it; it is then exported the same way, by the same converter and calibration. The trained model
stays a plain float Keras model: nothing here is saved with it.

What is simulated is what the int8 export quantizes (`export.tflite.convert`):

- every convolution's and dense layer's kernel, per output channel, symmetric in [-127, 127]
  (the converter's int8 weights; a BatchNormalization or residual gate folded in later scales
  whole output channels, which per-channel rounding does not see);
- every convolution's and dense layer's input, per tensor, asymmetric in 256 steps over the
  batch's own range with 0 included (the calibration takes the min and max over its frames);
- the STT block's linear layers' kernels (W^Q, W^K, W^V, W^O, the FFN), read through
  `weights_of`; its attention and norms stay float, as they do in the int8 file.

Not simulated: depthwise convolutions and SegFormer's spatial reduction (it reads its kernel
directly), which the export still rounds.

The float classifier of the default export (`float_head=1`) is rounded here too: one conv of
rounding more than the file has, on the side of caution.

    >>> import numpy as np, keras
    >>> from stt_keras import quantization
    >>> model = keras.Sequential([keras.Input((4, 4, 3)), keras.layers.Conv2D(2, 1)])
    >>> x = np.random.default_rng(0).normal(size=(1, 4, 4, 3)).astype("float32")
    >>> with quantization.fake_quantized(model) as hooked:
    ...     rounded = np.asarray(model(x))
    >>> hooked, bool(np.abs(rounded - np.asarray(model(x))).max() > 0)
    (1, True)
"""

import contextlib

import keras
import tensorflow as tf

NUM_BITS = 8


def fake_quant_kernel(kernel):
    """A kernel [..., out] rounded per output channel to symmetric int8 (255 levels, zero exact)."""
    kernel = tf.convert_to_tensor(kernel)
    if kernel.dtype != tf.float32:  # tf.quantization.fake_quant_* take float32 only
        return tf.cast(fake_quant_kernel(tf.cast(kernel, tf.float32)), kernel.dtype)
    bound = tf.stop_gradient(tf.reduce_max(tf.abs(kernel), axis=list(range(kernel.shape.rank - 1))))
    bound = tf.maximum(bound, 1e-8)  # an all-zero channel (a zero-initialised branch) stays zero
    return tf.quantization.fake_quant_with_min_max_vars_per_channel(
        kernel, -bound, bound, num_bits=NUM_BITS, narrow_range=True)


def fake_quant_activation(x):
    """A tensor rounded per tensor to asymmetric int8 over its own range, 0 included."""
    x = tf.convert_to_tensor(x)
    if x.dtype != tf.float32:
        return tf.cast(fake_quant_activation(tf.cast(x, tf.float32)), x.dtype)
    low = tf.stop_gradient(tf.minimum(tf.reduce_min(x), 0.0))
    high = tf.stop_gradient(tf.maximum(tf.reduce_max(x), low + 1e-6))
    return tf.quantization.fake_quant_with_min_max_vars(x, low, high, num_bits=NUM_BITS)


def _hook_conv(layer):
    original = layer.convolution_op

    def convolution_op(inputs, kernel):
        return original(fake_quant_activation(inputs), fake_quant_kernel(kernel))

    layer.convolution_op = convolution_op
    return lambda: _unhook(layer, "convolution_op")


def _hook_dense(layer):
    def call(inputs, training=None):
        outputs = keras.ops.matmul(fake_quant_activation(inputs), fake_quant_kernel(layer.kernel))  # as Dense.call
        if layer.use_bias:
            outputs = outputs + layer.bias
        return layer.activation(outputs) if layer.activation is not None else outputs

    layer.call = call
    return lambda: _unhook(layer, "call")


def _hook_weights_of(layer):
    original = layer.weights_of

    def weights_of(sublayer):
        weights = original(sublayer)
        if len(weights) == 2 and len(weights[0].shape) == 2:  # a linear's (kernel, bias), not a norm's
            return fake_quant_kernel(weights[0]), weights[1]
        return weights

    layer.weights_of = weights_of
    return lambda: _unhook(layer, "weights_of")


def _unhook(layer, name):
    # The hook is an instance attribute over the class's method: deleting it restores the method.
    if name in vars(layer):
        object.__delattr__(layer, name)


def _hook(layer):
    if hasattr(layer, "weights_of"):  # the STT block: its maths reads the weights, its sublayers are not called
        return _hook_weights_of(layer)
    if isinstance(layer, (keras.layers.Conv1D, keras.layers.Conv2D, keras.layers.Conv3D)):
        return _hook_conv(layer)
    if type(layer) is keras.layers.Dense and layer.quantization_mode is None and not layer.lora_enabled:
        return _hook_dense(layer)
    return None


@contextlib.contextmanager
def fake_quantized(model):
    """Within the block, `model`'s convolutions, dense layers and STT blocks compute with int8
    rounding (module docstring). Functions traced inside (a `fit`'s train and test steps) keep it;
    the model's weights and config are untouched. Yields the number of layers hooked."""
    unhooks = []
    try:
        for layer in model._flatten_layers(include_self=False, recursive=True):
            unhook = _hook(layer)
            if unhook is not None:
                unhooks.append(unhook)
        yield len(unhooks)
    finally:
        for unhook in reversed(unhooks):
            unhook()
