"""Small building blocks shared by the segmentation heads."""

import numbers

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="stt_keras")
class ConvBNReLU(keras.layers.Layer):
    """Conv2D (no bias) -> BatchNorm -> ReLU, the unit every head here is made of.

    BatchNorm after a bias-free conv is what the TFLite converter folds into the
    convolution of a frozen graph.

    Example:
    >>> import numpy as np
    >>> block = ConvBNReLU(8, 3, strides=2)
    >>> y = block(np.random.rand(1, 16, 16, 3).astype("float32"))
    >>> tuple(y.shape), block.compute_output_shape((1, 16, 16, 3))
    ((1, 8, 8, 8), (1, 8, 8, 8))
    >>> bool(np.all(y.numpy() >= 0))  # ReLU
    True
    """

    def __init__(self, filters, kernel_size=3, strides=1, dilation_rate=1, activation="relu", **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.kernel_size = kernel_size
        self.strides = strides
        self.dilation_rate = dilation_rate
        self.activation = activation
        self.conv = keras.layers.Conv2D(
            filters, kernel_size, strides=strides, padding="same", dilation_rate=dilation_rate,
            use_bias=False, dtype=self.dtype_policy, name="conv",
        )
        self.bn = keras.layers.BatchNormalization(epsilon=1e-5, momentum=0.9, dtype=self.dtype_policy, name="bn")

    def build(self, input_shape):
        self.conv.build(input_shape)
        self.bn.build(self.conv.compute_output_shape(input_shape))
        self.built = True

    def call(self, x, training=None):
        x = self.bn(self.conv(x), training=training)
        return ops.relu(x) if self.activation == "relu" else x

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"filters": self.filters, "kernel_size": self.kernel_size, "strides": self.strides,
             "dilation_rate": self.dilation_rate, "activation": self.activation}
        )
        return config


def build_sublayer(layer, *shapes):
    """Builds `layer` for input `shapes` unless it is built already; returns its output shape.

    The parents' `build` methods chain their sublayers with it, so a parent builds
    every variable it owns from its input shapes alone, and building twice (a
    layer restored from an older file finishes building on its first call) never
    makes a second set of variables.
    """
    if not layer.built:
        layer.build(*shapes)
    return layer.compute_output_shape(*shapes)


def with_channels(shape, channels):
    """`shape` [N, h, w, C] with C replaced."""
    return (*tuple(shape)[:-1], channels)


def pooled_shape(shape):
    """The shape of a global average pool with keepdims: [N, 1, 1, C]."""
    return (shape[0], 1, 1, shape[-1])


# ----------------------------------------------- what the decoders share
def _static_size(output_size):
    """(height, width) as ints where they are known, None where they are tensors."""
    if output_size is None:
        return None, None
    return tuple(int(v) if isinstance(v, numbers.Integral) else None for v in output_size)


class SegmentationDecoder(keras.layers.Layer):
    """What PSPNetDecoder and BiSeNetDecoder share: the call contract and its output shapes.

    A subclass takes `num_classes` and `aux_head` and implements
    `call(features, skips, output_size, training=None, return_aux=False)`, which
    returns logits [N, H, W, num_classes] at `output_size` (H, W), or
    (logits, aux_logits) with `return_aux=True` from one pass.
    """

    def check_return_aux(self, return_aux):
        """A clear error for return_aux=True on a decoder without the auxiliary head."""
        if return_aux and not self.aux_head:
            raise ValueError(
                f"{self.__class__.__name__} {self.name!r} was built with aux_head=False; it has no aux logits to return."
            )

    def compute_output_shape(self, features_shape, skips_shape, output_size=None, return_aux=False):
        """[N, H, W, num_classes] (twice with `return_aux`); H, W None where `output_size` is not static ints."""
        shape = (features_shape[0], *_static_size(output_size), self.num_classes)
        return (shape, shape) if return_aux else shape

    def compute_output_spec(self, features, skips, output_size, training=None, return_aux=False):
        # The output size is a call argument, not a shape: Keras' own
        # compute_output_spec would pass compute_output_shape the input shapes only.
        skips_shape = keras.tree.map_structure(lambda t: tuple(t.shape), skips)
        shapes = self.compute_output_shape(tuple(features.shape), skips_shape, output_size, return_aux)
        return keras.tree.map_shape_structure(lambda s: keras.KerasTensor(s, dtype=self.compute_dtype), shapes)


def adaptive_average_pool(x, bins):
    """PyTorch-style adaptive average pooling of [B, h, w, C] to [B, bins, bins, C].

    Bin i covers rows floor(i h / bins) .. ceil((i + 1) h / bins) - 1. With static
    h and w the bins are fixed slices (what TFLite and its delegates want).
    """
    h, w = x.shape[1], x.shape[2]
    if h is None or w is None:  # dynamic size: the same slices with tensor bounds
        h, w = ops.shape(x)[1], ops.shape(x)[2]
    rows = []
    for i in range(bins):
        y0, y1 = (i * h) // bins, -(-((i + 1) * h) // bins)
        cols = []
        for j in range(bins):
            x0, x1 = (j * w) // bins, -(-((j + 1) * w) // bins)
            cols.append(ops.mean(x[:, y0:y1, x0:x1, :], axis=(1, 2), keepdims=True))
        rows.append(ops.concatenate(cols, axis=2))
    return ops.concatenate(rows, axis=1)


def resize_to(x, height, width):
    """Bilinear resize with half-pixel centres (align_corners=False)."""
    return ops.image.resize(x, (height, width), interpolation="bilinear")
