"""Small building blocks shared by the segmentation heads."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="stt_keras")
class ConvBNReLU(keras.layers.Layer):
    """Conv2D (no bias) -> BatchNorm -> ReLU, the unit every head here is made of.

    BatchNorm after a bias-free conv is what the TFLite converter folds into the
    convolution of a frozen graph.
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
