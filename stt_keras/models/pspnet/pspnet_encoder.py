"""PSPNet encoder: dilated ResNet (output stride 8) up to the features the pyramid pooling head reads."""

import keras

from stt_keras.models.blocks import ConvBNReLU, build_sublayer, with_channels
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

    Example:
    >>> import numpy as np
    >>> encoder = PSPNetEncoder("resnet_tiny", feature_channels=64)
    >>> out = encoder(np.zeros((1, 64, 64, 3), "uint8"))
    >>> {k: tuple(v.shape) for k, v in sorted(out.items())}
    {'aux': (1, 8, 8, 96), 'features': (1, 8, 8, 64)}
    >>> encoder.compute_output_shape((1, 64, 64, 3))["features"]
    (1, 8, 8, 64)
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

    def build(self, frames_shape=None):
        if frames_shape is None:
            # Restored from a file saved before this method took the input shape:
            # the sublayers build on the first call.
            return
        p5 = build_sublayer(self.resnet, frames_shape)["P5"]  # its variables exist already (a KerasHub model)
        if self.reduce is not None:
            build_sublayer(self.reduce, p5)

    def call(self, frames, training=None):
        pyramid = self.resnet(frames, training=training)
        x = pyramid["P5"]
        if self.reduce is not None:
            x = self.reduce(x, training=training)
        return {"features": x, "aux": pyramid["P4"]}

    def compute_output_shape(self, frames_shape):
        pyramid = self.resnet.compute_output_shape(frames_shape)
        return {"features": with_channels(pyramid["P5"], self.feature_channels), "aux": pyramid["P4"]}

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
