"""BiSeNet (v1) encoder: the spatial path and the ResNet context path up to the features its head fuses."""

import keras

from stt_keras.models.blocks import ConvBNReLU
from stt_keras.models.resnet_features import ResNetFeatures


@keras.saving.register_keras_serializable(package="stt_keras")
class BiSeNetEncoder(keras.layers.Layer):
    """Frames [N, H, W, 3] in [0, 255] -> {"features": P5 (1/32), "p4": P4 (1/16), "spatial": 1/8}.

    The STT mixes time into `features`, the deepest context map (d_t = its
    channels: 512 for ResNet-18/34), which is also where temporal context is
    cheapest (H/32 x W/32). The stage-4 map and the spatial path of the current
    frame go straight to the decoder, whose attention refinement and feature
    fusion modules consume them.

    Args:
        backbone: a ResNet variant name for the context path (output stride 32).
        spatial_channels: width of the spatial path output (128 in BiSeNet).
        backbone_weights: None, "imagenet" or a KerasHub preset name/directory.
    """

    def __init__(self, backbone="resnet18", spatial_channels=128, backbone_weights=None, **kwargs):
        super().__init__(**kwargs)
        self.backbone_name = backbone
        self.spatial_channels = spatial_channels
        self.resnet = ResNetFeatures(backbone, 32, weights=backbone_weights, dtype=self.dtype_policy, name="resnet")
        self.spatial = [
            ConvBNReLU(64, 7, strides=2, dtype=self.dtype_policy, name="spatial1"),
            ConvBNReLU(64, 3, strides=2, dtype=self.dtype_policy, name="spatial2"),
            ConvBNReLU(64, 3, strides=2, dtype=self.dtype_policy, name="spatial3"),
            ConvBNReLU(spatial_channels, 1, dtype=self.dtype_policy, name="spatial4"),
        ]
        self.feature_channels = self.resnet.channels[-1]

    def build(self, *shapes):
        # Sublayers build on first call: their shapes depend on the input size.
        self.built = True

    def call(self, frames, training=None):
        pyramid = self.resnet(frames, training=training)
        s = keras.ops.cast(frames, self.compute_dtype) / 255.0 - 0.5
        for layer in self.spatial:
            s = layer(s, training=training)
        return {"features": pyramid["P5"], "p4": pyramid["P4"], "spatial": s}

    def get_config(self):
        config = super().get_config()
        config.update({"backbone": self.backbone_name, "spatial_channels": self.spatial_channels})
        return config

    @classmethod
    def from_config(cls, config):
        # A saved model carries its weights: never fetch or read pretrained ones
        # named in a (possibly crafted) config.
        config = {k: v for k, v in config.items() if k != "backbone_weights"}
        return super().from_config(config)
