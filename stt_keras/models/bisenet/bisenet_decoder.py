"""BiSeNet (v1) decoder: attention refinement, feature fusion, classifier, upsampling."""

import keras
from keras import ops

from stt_keras.models.blocks import ConvBNReLU, SegmentationDecoder, build_sublayer, pooled_shape, resize_to, with_channels


@keras.saving.register_keras_serializable(package="stt_keras")
class AttentionRefinement(keras.layers.Layer):
    """x -> ConvBNReLU(x) * sigmoid(BN(conv1x1(global_avg(ConvBNReLU(x))))).

    Example:
    >>> import numpy as np
    >>> arm = AttentionRefinement(16)
    >>> tuple(arm(np.random.rand(2, 4, 6, 8).astype("float32")).shape)
    (2, 4, 6, 16)
    """

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = ConvBNReLU(filters, 3, dtype=self.dtype_policy, name="conv")
        self.attention = ConvBNReLU(filters, 1, activation=None, dtype=self.dtype_policy, name="attention")

    def build(self, input_shape):
        build_sublayer(self.attention, pooled_shape(build_sublayer(self.conv, input_shape)))

    def call(self, x, training=None):
        x = self.conv(x, training=training)
        weights = ops.sigmoid(self.attention(ops.mean(x, axis=(1, 2), keepdims=True), training=training))
        return x * weights

    def compute_output_shape(self, input_shape):
        return self.conv.compute_output_shape(input_shape)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="stt_keras")
class FeatureFusion(keras.layers.Layer):
    """[spatial, context] -> y = ConvBNReLU(concat); y + y * sigmoid(conv(relu(conv(global_avg(y))))).

    Example:
    >>> import numpy as np
    >>> ffm = FeatureFusion(32)
    >>> spatial, context = np.random.rand(1, 8, 8, 16).astype("float32"), np.random.rand(1, 8, 8, 24).astype("float32")
    >>> tuple(ffm(spatial, context).shape)
    (1, 8, 8, 32)
    """

    def __init__(self, filters, **kwargs):
        super().__init__(**kwargs)
        self.filters = filters
        self.conv = ConvBNReLU(filters, 1, dtype=self.dtype_policy, name="conv")
        self.squeeze = keras.layers.Conv2D(filters // 4, 1, activation="relu", dtype=self.dtype_policy, name="squeeze")
        self.excite = keras.layers.Conv2D(filters, 1, activation="sigmoid", dtype=self.dtype_policy, name="excite")

    def build(self, spatial_shape, context_shape):
        y = build_sublayer(self.conv, with_channels(spatial_shape, spatial_shape[-1] + context_shape[-1]))
        build_sublayer(self.excite, build_sublayer(self.squeeze, pooled_shape(y)))

    def call(self, spatial, context, training=None):
        y = self.conv(ops.concatenate([spatial, context], axis=-1), training=training)
        return y + y * self.excite(self.squeeze(ops.mean(y, axis=(1, 2), keepdims=True)))

    def compute_output_shape(self, spatial_shape, context_shape):
        return with_channels(spatial_shape, self.filters)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package="stt_keras")
class BiSeNetDecoder(SegmentationDecoder):
    """(features P5, skips {"p4", "spatial"}, output size) -> logits [N, H, W, num_classes].

    Context: global average of P5 (ConvBNReLU) added to ARM(P5), upsampled to
    1/16, refined, added to ARM(P4), upsampled to 1/8, refined; fused with the
    spatial path (FFM), a 3x3 ConvBNReLU, a 1x1 classifier, bilinear upsampling.
    With `aux_head`, the auxiliary head classifies the same 1/16 context map
    (training only): `return_aux=True` returns (logits, aux_logits) from one
    pass, so the context path runs, and its BatchNorm statistics move, once.

    Args:
        num_classes: output classes.
        context_channels: width of the context path (128 in BiSeNet).
        fusion_channels: width of the feature fusion and head (256 in BiSeNet).
        aux_head: build the auxiliary head.

    Call arguments:
        features: P5 [N, h, w, C5] (or the STT output of the same shape).
        skips: {"p4": [N, h16, w16, C4], "spatial": [N, h8, w8, Cs]}, as
            `BiSeNetEncoder` returns them.
        output_size: (H, W) of the logits.
        training: BatchNorm in training mode.
        return_aux: also return the auxiliary logits (needs aux_head=True).

    Example:
    >>> import numpy as np
    >>> decoder = BiSeNetDecoder(num_classes=5, context_channels=16, fusion_channels=32)
    >>> features = np.random.rand(1, 2, 2, 64).astype("float32")
    >>> skips = {"p4": np.random.rand(1, 4, 4, 48).astype("float32"),
    ...          "spatial": np.random.rand(1, 8, 8, 32).astype("float32")}
    >>> logits, aux = decoder(features, skips, output_size=(64, 64), return_aux=True)
    >>> tuple(logits.shape), tuple(aux.shape)
    ((1, 64, 64, 5), (1, 64, 64, 5))
    >>> np.testing.assert_allclose(decoder(features, skips, output_size=(64, 64)), logits, atol=1e-6)
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

    def build(self, features_shape=None, skips_shape=None):
        if features_shape is None or skips_shape is None:
            # Restored from a file saved before this method took the input shapes:
            # the first call builds the layer (see `call`).
            return
        p4, spatial = skips_shape["p4"], skips_shape["spatial"]
        build_sublayer(self.global_context, pooled_shape(features_shape))
        c32 = build_sublayer(self.arm32, features_shape)
        c16 = build_sublayer(self.refine32, (*tuple(p4)[:3], c32[-1]))
        build_sublayer(self.arm16, p4)
        c8 = build_sublayer(self.refine16, (*tuple(spatial)[:3], c16[-1]))
        x = build_sublayer(self.head, build_sublayer(self.ffm, spatial, c8))
        build_sublayer(self.classifier, x)
        if self.aux_head:
            build_sublayer(self.aux_classifier, build_sublayer(self.aux_conv, c16))

    def _context16(self, features, skips, training):
        p4 = skips["p4"]
        glob = self.global_context(ops.mean(features, axis=(1, 2), keepdims=True), training=training)
        c32 = self.arm32(features, training=training) + glob
        c32 = self.refine32(resize_to(c32, p4.shape[1], p4.shape[2]), training=training)
        return self.arm16(p4, training=training) + c32

    def call(self, features, skips, output_size, training=None, return_aux=False):
        self.check_return_aux(return_aux)
        if not self.classifier.built:
            self.build(tuple(features.shape), keras.tree.map_structure(lambda t: tuple(t.shape), skips))
        spatial = skips["spatial"]
        c16 = self._context16(features, skips, training)
        c8 = self.refine16(resize_to(c16, spatial.shape[1], spatial.shape[2]), training=training)
        x = self.head(self.ffm(spatial, c8, training=training), training=training)
        logits = resize_to(self.classifier(x), *output_size)
        if not return_aux:
            return logits
        aux = resize_to(self.aux_classifier(self.aux_conv(c16, training=training)), *output_size)
        return logits, aux

    def get_config(self):
        config = super().get_config()
        config.update(
            {"num_classes": self.num_classes, "context_channels": self.context_channels,
             "fusion_channels": self.fusion_channels, "aux_head": self.aux_head}
        )
        return config
