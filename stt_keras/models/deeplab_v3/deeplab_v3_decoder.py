"""DeepLabV3(+) decoder: KerasHub's low-level projection, segmentation head and classifier."""

import keras
from keras import ops

from stt_keras.models.blocks import SegmentationDecoder, build_sublayer, resize_to, with_channels
from stt_keras.models.deeplab_v3.deeplab_v3_encoder import _conv_bn


@keras.saving.register_keras_serializable(package="stt_keras")
class DeepLabV3Decoder(SegmentationDecoder):
    """(ASPP features, {"low_level"}, output size) -> logits [N, H, W, num_classes].

    DeepLabV3+: the features resized (bilinear) to the low-level map's size, the
    low-level map projected (1x1 conv + BatchNorm + ReLU to `projection_filters`),
    both concatenated; then KerasHub's segmentation head (1x1 conv to 256 +
    BatchNorm + ReLU), its 1x1 classifier, and a bilinear resize to the output
    size. (KerasHub upsamples before its bias-free 1x1 classifier; both are
    linear per pixel, so classifying first gives the same logits at a sixteenth
    of the cost.) Without a low-level key (DeepLabV3) the features go to the head
    directly.

    Args:
        num_classes: output classes.
        low_level: use the "low_level" skip (DeepLabV3+).
        projection_filters: width of the low-level projection (48).
        head_channels: width of the segmentation head (256).

    Example:
    >>> import numpy as np
    >>> decoder = DeepLabV3Decoder(5, projection_filters=8, head_channels=16)
    >>> features = np.random.rand(1, 4, 6, 16).astype("float32")
    >>> skips = {"low_level": np.random.rand(1, 16, 24, 12).astype("float32")}
    >>> tuple(decoder(features, skips, output_size=(64, 96)).shape)
    (1, 64, 96, 5)
    """

    def __init__(self, num_classes, low_level=True, projection_filters=48, head_channels=256, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = num_classes
        self.low_level = bool(low_level)
        self.projection_filters = projection_filters
        self.head_channels = head_channels
        self.aux_head = False
        policy = self.dtype_policy
        if self.low_level:
            self.low_level_projection = _conv_bn(projection_filters, 1, policy, "decoder")
        self.head = _conv_bn(head_channels, 1, policy, "segmentation_head")
        self.classifier = keras.layers.Conv2D(num_classes, 1, use_bias=False, dtype=policy, name="classifier")

    def build(self, features_shape=None, skips_shape=None):
        if features_shape is None:
            return
        channels = features_shape[-1]
        shape = features_shape
        if self.low_level:
            conv, bn = self.low_level_projection
            low = skips_shape["low_level"]
            build_sublayer(bn, build_sublayer(conv, low))
            channels += self.projection_filters
            shape = low
        conv, bn = self.head
        build_sublayer(bn, build_sublayer(conv, with_channels(shape, channels)))
        build_sublayer(self.classifier, with_channels(shape, self.head_channels))
        self.built = True

    def call(self, features, skips, output_size, training=None, return_aux=False):
        self.check_return_aux(return_aux)
        if not self.classifier.built:
            self.build(tuple(features.shape), keras.tree.map_structure(lambda t: tuple(t.shape), skips))
        x = features
        if self.low_level:
            low = skips["low_level"]
            h, w = low.shape[1], low.shape[2]
            if h is None or w is None:
                h, w = ops.shape(low)[1], ops.shape(low)[2]
            conv, bn = self.low_level_projection
            x = ops.concatenate([resize_to(x, h, w), ops.relu(bn(conv(low), training=training))], axis=-1)
        conv, bn = self.head
        x = ops.relu(bn(conv(x), training=training))
        return resize_to(self.classifier(x), *output_size)

    def get_config(self):
        config = super().get_config()
        config.update({"num_classes": self.num_classes, "low_level": self.low_level,
                       "projection_filters": self.projection_filters, "head_channels": self.head_channels})
        return config
