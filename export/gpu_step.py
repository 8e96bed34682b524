"""Trace glue for the dense_masked form: what the exporter does while it traces a model for a GPU.

The delegate-friendly computation itself is the library's: `STTSegmenter.stream_step(...,
implementation="dense_masked")` with a packed state (stt_keras/layers/dense_masked.py). Here is
only what changes the traced graph of the encoder/decoder, not the function:
`gpu_convolutions` traces the convolutions the accelerator gets wrong (weights above its texture
size, int8 strided 1x1) as equivalent ones it gets right.
"""

import contextlib
import math

import tensorflow as tf

from stt_keras.layers.dense_masked import MAX_TEXTURE_SIDE, SCOPE as STT_SCOPE  # noqa: F401  (int8 export keeps it float)
from stt_keras.layers.dense_masked import QUANTIZABLE as STT_QUANTIZED  # noqa: F401  (but these sub-scopes: int8)


@contextlib.contextmanager
def gpu_convolutions(model, limit=MAX_TEXTURE_SIDE):
    """While active, the Conv2D layers of `model` that LiteRT's GPU accelerator gets wrong are
    traced as an equivalent graph it gets right; yields the names of the layers changed.

    - Wide weights (kh * kw * input channels > `limit`): the accelerator stores 3x3
      convolution weights in textures kh*kw*C_in texels high; PSPNet's fusion conv
      (3x3, 1024 -> 512) needed 128 x 9216, above WebGPU's default 8192 (SwiftShader's
      limit, and common on phones), and gave outputs off by their whole scale. They
      convolve input-channel slices and add them (two 512-channel convolutions fit).
    - Strided 1x1 convolutions (ResNet's downsampling shortcuts): in an int8 model the
      accelerator computes them wrongly (ai-edge-litert 2.3.0: max error 9.0 on outputs
      of scale 6.2 for 16x32x64 -> 8x16x64; float is exact), which made the int8 model
      agree with its own CPU labels on 80% of pixels. They become a strided slice
      (x[:, ::s, ::s]) and a stride-1 1x1 convolution: exact on the accelerator.

    Same function (SAME and VALID padding coincide for a 1x1 kernel), so float parity is
    unchanged; the graph is traced inside it.
    """
    import keras
    from keras import ops

    patched = []
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if (type(layer) is not keras.layers.Conv2D or getattr(layer, "groups", 1) != 1 or not layer.built
                or layer.data_format != "channels_last"):
            continue
        kh, kw, cin, _ = layer.kernel.shape
        parts = math.ceil(kh * kw * cin / limit)
        strides = tuple(layer.strides)
        subsample = (kh, kw) == (1, 1) and strides != (1, 1)
        if parts <= 1 and not subsample:
            continue
        size = 4 * math.ceil(cin / parts / 4)
        sizes = [size] * (cin // size) + ([cin % size] if cin % size else [])

        def convolution_op(inputs, kernel, layer=layer, sizes=sizes, subsample=subsample, strides=strides):
            if subsample:  # a 1x1 kernel reads every s-th row and column from the first
                inputs = inputs[:, ::strides[0], ::strides[1], :]
                strides = (1, 1)
            xs = tf.split(inputs, sizes, axis=-1) if len(sizes) > 1 else [inputs]
            ks = tf.split(kernel, sizes, axis=2) if len(sizes) > 1 else [kernel]
            out = None
            for x, k in zip(xs, ks):
                y = ops.conv(x, k, strides=list(strides), padding=layer.padding,
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
