"""PSPNet decoder: pyramid pooling module, classifier, bilinear upsampling to the input size."""

import keras
from keras import ops

from stt_keras.models.blocks import ConvBNReLU, adaptive_average_pool, resize_to


@keras.saving.register_keras_serializable(package="stt_keras")
class PSPNetDecoder(keras.layers.Layer):
    """(features [N, h, w, d], skips, output size) -> logits [N, H, W, num_classes].

    Pyramid pooling at bins (1, 2, 3, 6), each branch a 1x1 ConvBNReLU to d/4 and
    a bilinear upsampling back to h x w; concatenated with the input, a 3x3
    ConvBNReLU to `head_channels`, dropout, a 1x1 classifier, then bilinear
    upsampling to H x W. With `aux_head`, `aux_logits` computes the auxiliary
    head on the stage-4 skip (a 3x3 ConvBNReLU to 256, dropout, classifier).

    Args:
        num_classes: output classes.
        head_channels: width of the fusion conv (512 in PSPNet).
        bins: pyramid bins.
        dropout: dropout rate before the classifiers.
        aux_head: build the auxiliary head (used in training only).
    """

    def __init__(self, num_classes, head_channels=512, bins=(1, 2, 3, 6), dropout=0.1, aux_head=True, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.head_channels = head_channels
        self.bins = tuple(bins)
        self.dropout_rate = dropout
        self.aux_head = aux_head
        self.branches = []
        self.fuse = ConvBNReLU(head_channels, 3, dtype=self.dtype_policy, name="fuse")
        self.dropout = keras.layers.Dropout(dropout)
        self.classifier = keras.layers.Conv2D(num_classes, 1, dtype=self.dtype_policy, name="classifier")
        if aux_head:
            self.aux_conv = ConvBNReLU(256, 3, dtype=self.dtype_policy, name="aux_conv")
            self.aux_dropout = keras.layers.Dropout(dropout)
            self.aux_classifier = keras.layers.Conv2D(num_classes, 1, dtype=self.dtype_policy, name="aux_classifier")

    def build(self, features_shape):
        d = features_shape[-1]
        self.branches = [
            ConvBNReLU(d // len(self.bins), 1, dtype=self.dtype_policy, name=f"pool{b}") for b in self.bins
        ]
        self.built = True

    def call(self, features, skips, output_size, training=None):
        h, w = features.shape[1], features.shape[2]
        parts = [features]
        for bins, branch in zip(self.bins, self.branches):
            pooled = branch(adaptive_average_pool(features, bins), training=training)
            parts.append(resize_to(pooled, h, w))
        x = self.fuse(ops.concatenate(parts, axis=-1), training=training)
        logits = self.classifier(self.dropout(x, training=training))
        return resize_to(logits, *output_size)

    def aux_logits(self, features, skips, output_size, training=None):
        x = self.aux_conv(skips["aux"], training=training)
        return resize_to(self.aux_classifier(self.aux_dropout(x, training=training)), *output_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_classes": self.num_classes, "head_channels": self.head_channels, "bins": list(self.bins),
             "dropout": self.dropout_rate, "aux_head": self.aux_head}
        )
        return config
