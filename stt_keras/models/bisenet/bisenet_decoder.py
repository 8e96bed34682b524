"""BiSeNet (v1) decoder: attention refinement, feature fusion, classifier, upsampling."""

import keras
from keras import ops

from stt_keras.models.blocks import ConvBNReLU, resize_to


@keras.saving.register_keras_serializable(package="stt_keras")
class AttentionRefinement(keras.layers.Layer):
    """x -> ConvBNReLU(x) * sigmoid(BN(conv1x1(global_avg(ConvBNReLU(x)))))."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = ConvBNReLU(filters, 3, dtype=self.dtype_policy, name="conv")
        self.attention = ConvBNReLU(filters, 1, activation=None, dtype=self.dtype_policy, name="attention")

    def call(self, x, training=None):
        x = self.conv(x, training=training)
        weights = ops.sigmoid(self.attention(ops.mean(x, axis=(1, 2), keepdims=True), training=training))
        return x * weights

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="stt_keras")
class FeatureFusion(keras.layers.Layer):
    """[spatial, context] -> y = ConvBNReLU(concat); y + y * sigmoid(conv(relu(conv(global_avg(y)))))."""

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = ConvBNReLU(filters, 1, dtype=self.dtype_policy, name="conv")
        self.squeeze = keras.layers.Conv2D(filters // 4, 1, activation="relu", dtype=self.dtype_policy, name="squeeze")
        self.excite = keras.layers.Conv2D(filters, 1, activation="sigmoid", dtype=self.dtype_policy, name="excite")

    def call(self, spatial, context, training=None):
        y = self.conv(ops.concatenate([spatial, context], axis=-1), training=training)
        return y + y * self.excite(self.squeeze(ops.mean(y, axis=(1, 2), keepdims=True)))

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="stt_keras")
class BiSeNetDecoder(keras.layers.Layer):
    """(features P5, skips {"p4", "spatial"}, output size) -> logits [N, H, W, num_classes].

    Context: global average of P5 (ConvBNReLU) added to ARM(P5), upsampled to
    1/16, refined, added to ARM(P4), upsampled to 1/8, refined; fused with the
    spatial path (FFM), a 3x3 ConvBNReLU, a 1x1 classifier, bilinear upsampling.
    `aux_logits` classifies the 1/16 context map (training only).
    """

    def __init__(self, num_classes, context_channels=128, fusion_channels=256, aux_head=True, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.context_channels = context_channels
        self.fusion_channels = fusion_channels
        self.aux_head = aux_head
        p = dict(dtype=self.dtype_policy)
        self.global_context = ConvBNReLU(context_channels, 1, name="global_context", **p)
        self.arm32 = AttentionRefinement(context_channels, name="arm32", **p)
        self.arm16 = AttentionRefinement(context_channels, name="arm16", **p)
        self.refine32 = ConvBNReLU(context_channels, 3, name="refine32", **p)
        self.refine16 = ConvBNReLU(context_channels, 3, name="refine16", **p)
        self.ffm = FeatureFusion(fusion_channels, name="ffm", **p)
        self.head = ConvBNReLU(fusion_channels, 3, name="head", **p)
        self.classifier = keras.layers.Conv2D(num_classes, 1, name="classifier", **p)
        if aux_head:
            self.aux_conv = ConvBNReLU(64, 3, name="aux_conv", **p)
            self.aux_classifier = keras.layers.Conv2D(num_classes, 1, name="aux_classifier", **p)

    def build(self, *shapes):
        # Sublayers build on first call: their shapes depend on the input size.
        self.built = True

    def _context16(self, features, skips, training):
        p4 = skips["p4"]
        glob = self.global_context(ops.mean(features, axis=(1, 2), keepdims=True), training=training)
        c32 = self.arm32(features, training=training) + glob
        c32 = self.refine32(resize_to(c32, p4.shape[1], p4.shape[2]), training=training)
        return self.arm16(p4, training=training) + c32

    def call(self, features, skips, output_size, training=None):
        spatial = skips["spatial"]
        c16 = self._context16(features, skips, training)
        c8 = self.refine16(resize_to(c16, spatial.shape[1], spatial.shape[2]), training=training)
        x = self.head(self.ffm(spatial, c8, training=training), training=training)
        return resize_to(self.classifier(x), *output_size)

    def aux_logits(self, features, skips, output_size, training=None):
        c16 = self._context16(features, skips, training)
        return resize_to(self.aux_classifier(self.aux_conv(c16, training=training)), *output_size)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_classes": self.num_classes, "context_channels": self.context_channels,
             "fusion_channels": self.fusion_channels, "aux_head": self.aux_head}
        )
        return config
