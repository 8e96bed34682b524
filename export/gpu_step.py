"""Trace glue for the GPU form: what the exporter does while it traces a model for a GPU.

The delegate-friendly computation itself is the library's: `STTSegmenter.stream_step(...,
implementation="dense_masked")` with a packed state (stt_keras/layers/dense_masked.py). Here is
only what changes the traced graph of the encoder/decoder, not the function:
`split_wide_convolutions` keeps convolution weights inside the GPU's texture size.
"""

import contextlib
import math

import tensorflow as tf

from stt_keras.layers.dense_masked import MAX_TEXTURE_SIDE, SCOPE as STT_SCOPE  # noqa: F401  (int8 export keeps it float)


@contextlib.contextmanager
def split_wide_convolutions(model, limit=MAX_TEXTURE_SIDE):
    """While active, every Conv2D of `model` whose weights exceed the GPU's texture side
    (kh * kw * input channels > `limit`) convolves input-channel slices and adds them.

    LiteRT's GPU accelerator stores 3x3 convolution weights in textures kh*kw*C_in
    texels high: PSPNet's fusion conv (3x3, 1024 -> 512) needed 128 x 9216, above
    WebGPU's default 8192 (SwiftShader's limit, and common on phones), and gave
    outputs off by their whole scale. Two 512-channel convolutions plus an ADD fit.
    Same function, so float parity is unchanged; the graph is traced inside it.
    """
    import keras

    patched = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if type(layer) is not keras.layers.Conv2D or getattr(layer, "groups", 1) != 1 or not layer.built:
            continue
        kh, kw, cin, _ = layer.kernel.shape
        parts = math.ceil(kh * kw * cin / limit)
        if parts <= 1:
            continue
        size = 4 * math.ceil(cin / parts / 4)
        sizes = [size] * (cin // size) + ([cin % size] if cin % size else [])

        def convolution_op(inputs, kernel, layer=layer, sizes=sizes):
            from keras import ops

            xs = tf.split(inputs, sizes, axis=-1)
            ks = tf.split(kernel, sizes, axis=2)
            out = None
            for x, k in zip(xs, ks):
                y = ops.conv(x, k, strides=list(layer.strides), padding=layer.padding,
                             dilation_rate=layer.dilation_rate, data_format=layer.data_format)
                out = y if out is None else out + y
            return out

        layer.convolution_op = convolution_op  # an instance attribute shadows the method
        patched.append(layer)
    try:
        yield [layer.name for layer in patched]
    finally:
        for layer in patched:
            del layer.convolution_op
