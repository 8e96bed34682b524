"""BiSeNet (v1) encoder: the spatial path and the ResNet context path up to the features its head fuses."""

import keras

from stt_keras.models.blocks import ConvBNReLU, build_sublayer
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

    Example:
    >>> import numpy as np
    >>> encoder = BiSeNetEncoder("resnet_tiny", spatial_channels=32)
    >>> out = encoder(np.zeros((1, 64, 64, 3), "uint8"))
    >>> {k: tuple(v.shape) for k, v in sorted(out.items())}
    {'features': (1, 2, 2, 128), 'p4': (1, 4, 4, 96), 'spatial': (1, 8, 8, 32)}
    >>> encoder.compute_output_shape((1, 64, 64, 3))["spatial"]
    (1, 8, 8, 32)
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

    def build(self, frames_shape=None):
        if frames_shape is None:
            # Restored from a file saved before this method took the input shape:
            # the sublayers build on the first call.
            return
        build_sublayer(self.resnet, frames_shape)  # its variables exist already (a KerasHub model)
        s = frames_shape
        for layer in self.spatial:
            s = build_sublayer(layer, s)

    def call(self, frames, training=None):
        pyramid = self.resnet(frames, training=training)
        s = keras.ops.cast(frames, self.compute_dtype) / 255.0 - 0.5
        for layer in self.spatial:
            s = layer(s, training=training)
        return {"features": pyramid["P5"], "p4": pyramid["P4"], "spatial": s}

    def compute_output_shape(self, frames_shape):
        pyramid = self.resnet.compute_output_shape(frames_shape)
        s = frames_shape
        for layer in self.spatial:
            s = layer.compute_output_shape(s)
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
