"""PSPNet encoder: dilated ResNet (output stride 8) up to the features the pyramid pooling head reads."""

import keras

from stt_keras.models.blocks import ConvBNReLU
from stt_keras.models.resnet_features import ResNetFeatures, resnet_channels


@keras.saving.register_keras_serializable(package="stt_keras")
class PSPNetEncoder(keras.layers.Layer):
    """Frames [N, H, W, 3] in [0, 255] -> {"features": [N, H/8, W/8, d_t], "aux": P4}.

    `features` is what the STT mixes over time (d_t = `feature_channels`); when
    the backbone's last stage has another width, a 1x1 ConvBNReLU maps it to d_t.
    `aux` is the stage-4 map the auxiliary training head reads.

    Args:
        backbone: a ResNet variant name (see `resnet_features.RESNET_VARIANTS`).
        feature_channels: d_t; None keeps the backbone's own width.
        output_stride: 8 (the PSPNet setting) or 16.
        backbone_weights: None, "imagenet" or a KerasHub preset name/directory.
    """

    def __init__(self, backbone="resnet18", feature_channels=None, output_stride=8, backbone_weights=None, **kwargs):
        super().__init__(**kwargs)
        self.backbone_name = backbone
        self.output_stride = output_stride
        native = resnet_channels(backbone)[-1]
        self.feature_channels = feature_channels or native
        self.resnet = ResNetFeatures(backbone, output_stride, weights=backbone_weights, dtype=self.dtype_policy, name="resnet")
        self.reduce = None
        if self.feature_channels != native:
            self.reduce = ConvBNReLU(self.feature_channels, 1, dtype=self.dtype_policy, name="reduce")

    def build(self, *shapes):
        # Sublayers build on first call: their shapes depend on the input size.
        self.built = True

    def call(self, frames, training=None):
        pyramid = self.resnet(frames, training=training)
        x = pyramid["P5"]
        if self.reduce is not None:
            x = self.reduce(x, training=training)
        return {"features": x, "aux": pyramid["P4"]}

    def get_config(self):
        config = super().get_config()
        config.update(
            {"backbone": self.backbone_name, "feature_channels": self.feature_channels, "output_stride": self.output_stride}
        )
        return config

    @classmethod
    def from_config(cls, config):
        # A saved model carries its weights: never fetch or read pretrained ones
        # named in a (possibly crafted) config.
        config = {k: v for k, v in config.items() if k != "backbone_weights"}
        return super().from_config(config)
