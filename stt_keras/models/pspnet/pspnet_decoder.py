"""PSPNet decoder: pyramid pooling module, classifier, bilinear upsampling to the input size."""

import keras
from keras import ops

from stt_keras.models.blocks import (
    ConvBNReLU, SegmentationDecoder, adaptive_average_pool, build_sublayer, resize_to, with_channels,
)


@keras.saving.register_keras_serializable(package="stt_keras")
class PSPNetDecoder(SegmentationDecoder):
    """(features [N, h, w, d], skips, output size) -> logits [N, H, W, num_classes].

    Pyramid pooling at bins (1, 2, 3, 6), each branch a 1x1 ConvBNReLU to d/4 and
    a bilinear upsampling back to h x w; concatenated with the input, a 3x3
    ConvBNReLU to `head_channels`, dropout, a 1x1 classifier, then bilinear
    upsampling to H x W. With `aux_head`, the auxiliary head (used in training
    only) reads the stage-4 skip: a 3x3 ConvBNReLU to 256, dropout, classifier.

    Args:
        num_classes: output classes.
        head_channels: width of the fusion conv (512 in PSPNet).
        bins: pyramid bins.
        dropout: dropout rate before the classifiers.
        aux_head: build the auxiliary head.

    Call arguments:
        features: [N, h, w, d] (the encoder's features or the STT output).
        skips: {"aux": P4 [N, h4, w4, C4]}, as `PSPNetEncoder` returns it.
        output_size: (H, W) of the logits.
        training: BatchNorm and dropout in training mode.
        return_aux: also return the auxiliary logits (needs aux_head=True).

    Example:
    >>> import numpy as np
    >>> decoder = PSPNetDecoder(num_classes=5, head_channels=32)
    >>> features = np.random.rand(1, 8, 8, 64).astype("float32")
    >>> skips = {"aux": np.random.rand(1, 8, 8, 48).astype("float32")}
    >>> logits, aux = decoder(features, skips, output_size=(64, 64), return_aux=True)
    >>> tuple(logits.shape), tuple(aux.shape)
    ((1, 64, 64, 5), (1, 64, 64, 5))
    >>> decoder.compute_output_shape((1, 8, 8, 64), {"aux": (1, 8, 8, 48)}, output_size=(64, 64))
    (1, 64, 64, 5)
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
        self.dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy, name="dropout")
        self.classifier = keras.layers.Conv2D(num_classes, 1, dtype=self.dtype_policy, name="classifier")
        if aux_head:
            self.aux_conv = ConvBNReLU(256, 3, dtype=self.dtype_policy, name="aux_conv")
            self.aux_dropout = keras.layers.Dropout(dropout, dtype=self.dtype_policy, name="aux_dropout")
            self.aux_classifier = keras.layers.Conv2D(num_classes, 1, dtype=self.dtype_policy, name="aux_classifier")

    def build(self, features_shape=None, skips_shape=None):
        # A file saved before this method took the skip shapes rebuilds it with the
        # features' shape alone (or none): the first call builds the rest (see `call`).
        if features_shape is None:
            return
        d = features_shape[-1]
        if not self.branches:  # made here: their width follows the input's
            self.branches = [
                ConvBNReLU(d // len(self.bins), 1, dtype=self.dtype_policy, name=f"pool{b}") for b in self.bins
            ]
        widths = [build_sublayer(branch, (features_shape[0], b, b, d))[-1] for b, branch in zip(self.bins, self.branches)]
        x = build_sublayer(self.fuse, with_channels(features_shape, d + sum(widths)))
        build_sublayer(self.classifier, x)
        if self.aux_head and skips_shape is not None:
            if "aux" not in skips_shape:
                raise ValueError(
                    f"PSPNetDecoder {self.name!r} has an auxiliary head, which reads skips['aux']; "
                    f"got skips {sorted(skips_shape)}. Pass the encoder's 'aux' map or use aux_head=False."
                )
            build_sublayer(self.aux_classifier, build_sublayer(self.aux_conv, skips_shape["aux"]))

    def call(self, features, skips, output_size, training=None, return_aux=False):
        self.check_return_aux(return_aux)
        if not self.classifier.built or (self.aux_head and not self.aux_classifier.built):
            self.build(tuple(features.shape), keras.tree.map_structure(lambda t: tuple(t.shape), skips))
        h, w = features.shape[1], features.shape[2]
        parts = [features]
        for bins, branch in zip(self.bins, self.branches):
            pooled = branch(adaptive_average_pool(features, bins), training=training)
            parts.append(resize_to(pooled, h, w))
        x = self.fuse(ops.concatenate(parts, axis=-1), training=training)
        logits = resize_to(self.classifier(self.dropout(x, training=training)), *output_size)
        if not return_aux:
            return logits
        x = self.aux_conv(skips["aux"], training=training)
        return logits, resize_to(self.aux_classifier(self.aux_dropout(x, training=training)), *output_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_classes": self.num_classes, "head_channels": self.head_channels, "bins": list(self.bins),
             "dropout": self.dropout_rate, "aux_head": self.aux_head}
        )
        return config
