"""DeepLabV3(+) encoder: KerasHub's ResNet image encoder and the atrous spatial pyramid pooling (ASPP)."""

import copy

import keras
import keras_hub
import numpy as np
from keras import ops

from stt_keras.models.blocks import build_sublayer, resize_to, with_channels
from stt_keras.models.segformer.segformer_encoder import IMAGENET_OFFSET, IMAGENET_SCALE


def _conv_bn(filters, kernel, policy, name, dilation=1):
    """Conv2D (no bias) + BatchNormalization with Keras' defaults, as KerasHub's DeepLabV3 layers make them."""
    return (keras.layers.Conv2D(filters, kernel, padding="same", dilation_rate=dilation, use_bias=False, dtype=policy,
                                name=f"{name}_conv"),
            keras.layers.BatchNormalization(dtype=policy, name=f"{name}_bn"))


@keras.saving.register_keras_serializable(package="stt_keras")
class DeepLabV3Encoder(keras.layers.Layer):
    """Frames [N, H, W, 3] in [0, 255] -> {"features": ASPP output, "low_level": the decoder's skip map}.

    The normalisation of KerasHub's DeepLabV3 image converter is inside (x *
    scale + offset per channel), then KerasHub's ResNet image encoder (rebuilt
    for any frame size, the same variables) and KerasHub's ASPP on its
    `spatial_pyramid_pooling_key` map: a 1x1 branch, one 3x3 branch per
    dilation rate, an image-pooling branch, concatenated and projected to
    `num_channels`. The ASPP output (`num_channels` wide) is what the STT mixes.

    Args:
        resnet_config: the KerasHub `ResNetBackbone` config (its `get_config()`).
        spatial_pyramid_pooling_key: the pyramid level the ASPP reads ("P5").
        dilation_rates: the ASPP's 3x3 dilation rates ([6, 12, 18]).
        low_level_feature_key: the level the DeepLabV3+ decoder reads ("P2"), or None.
        num_channels: the ASPP width (256).
        scale, offset: the per-channel input normalisation.

    Example:
    >>> import numpy as np
    >>> resnet = dict(input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64],
    ...               stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block")
    >>> encoder = DeepLabV3Encoder(resnet, "P3", [2, 4], "P2", num_channels=16)
    >>> out = encoder(np.zeros((1, 64, 96, 3), "uint8"))
    >>> {k: tuple(v.shape) for k, v in sorted(out.items())}
    {'features': (1, 8, 12, 16), 'low_level': (1, 16, 24, 64)}
    """

    def __init__(self, resnet_config, spatial_pyramid_pooling_key="P5", dilation_rates=(6, 12, 18),
                 low_level_feature_key="P2", num_channels=256, scale=IMAGENET_SCALE, offset=IMAGENET_OFFSET, **kwargs):
        super().__init__(**kwargs)
        config = {k: v for k, v in copy.deepcopy(resnet_config).items() if k not in ("name", "trainable", "dtype")}
        config["image_shape"] = (None, None, 3)
        self.resnet_config = config
        self.spatial_pyramid_pooling_key = spatial_pyramid_pooling_key
        self.dilation_rates = [int(r) for r in dilation_rates]
        self.low_level_feature_key = low_level_feature_key
        self.num_channels = num_channels
        self.scale = [float(v) for v in np.broadcast_to(scale, (3,))]
        self.offset = [float(v) for v in np.broadcast_to(offset, (3,))]
        policy = self.dtype_policy
        self.resnet = keras_hub.models.ResNetBackbone(**config, dtype=policy, name="resnet")
        self.extractor = keras.Model(self.resnet.inputs, self.resnet.pyramid_outputs)
        self.extractor.dtype_policy = policy
        self.branches = [_conv_bn(num_channels, 1, policy, "aspp_1")]
        self.branches += [_conv_bn(num_channels, 3, policy, f"aspp_{i + 2}", rate)
                          for i, rate in enumerate(self.dilation_rates)]
        self.pool_branch = _conv_bn(num_channels, 1, policy, "aspp_pool")
        self.projection = _conv_bn(num_channels, 1, policy, "aspp_projection")

    def _levels(self):
        return [self.spatial_pyramid_pooling_key] + ([self.low_level_feature_key] if self.low_level_feature_key else [])

    def _pyramid_shapes(self, frames_shape):
        n, h, w = frames_shape[0], frames_shape[1], frames_shape[2]
        strides = self.resnet_config["stackwise_num_strides"]
        channels = self.resnet_config["stackwise_num_filters"]
        factor = 4 if self.resnet_config["block_type"].startswith("bottleneck") else 1
        shapes, stride = {}, 4  # the stem: stride-2 conv and stride-2 max pool
        for i, (s, c) in enumerate(zip(strides, channels)):
            stride *= s
            shapes[f"P{i + 2}"] = (n, None if h is None else -(-h // stride), None if w is None else -(-w // stride),
                                   c * factor)
        return shapes

    def build(self, frames_shape=None):
        if frames_shape is None:
            return
        shapes = self._pyramid_shapes(frames_shape)
        x = shapes[self.spatial_pyramid_pooling_key]
        for conv, bn in [*self.branches, self.pool_branch]:
            build_sublayer(bn, build_sublayer(conv, x))
        conv, bn = self.projection
        build_sublayer(bn, build_sublayer(conv, with_channels(x, self.num_channels * (len(self.branches) + 1))))
        self.built = True

    def call(self, frames, training=None):
        x = ops.cast(frames, self.compute_dtype)
        x = x * ops.cast(self.scale, x.dtype) + ops.cast(self.offset, x.dtype)
        pyramid = self.extractor(x, training=training)
        x = pyramid[self.spatial_pyramid_pooling_key]
        parts = [ops.relu(bn(conv(x), training=training)) for conv, bn in self.branches]
        conv, bn = self.pool_branch
        pooled = ops.relu(bn(conv(ops.mean(x, axis=(1, 2), keepdims=True)), training=training))
        h, w = x.shape[1], x.shape[2]
        if h is None or w is None:
            h, w = ops.shape(x)[1], ops.shape(x)[2]
        parts.append(resize_to(pooled, h, w))
        conv, bn = self.projection
        out = {"features": ops.relu(bn(conv(ops.concatenate(parts, axis=-1)), training=training))}
        if self.low_level_feature_key:
            out["low_level"] = pyramid[self.low_level_feature_key]
        return out

    def compute_output_shape(self, frames_shape):
        shapes = self._pyramid_shapes(frames_shape)
        out = {"features": with_channels(shapes[self.spatial_pyramid_pooling_key], self.num_channels)}
        if self.low_level_feature_key:
            out["low_level"] = shapes[self.low_level_feature_key]
        return out

    def get_config(self):
        config = super().get_config()
        config.update({"resnet_config": self.resnet_config,
                       "spatial_pyramid_pooling_key": self.spatial_pyramid_pooling_key,
                       "dilation_rates": self.dilation_rates, "low_level_feature_key": self.low_level_feature_key,
                       "num_channels": self.num_channels, "scale": self.scale, "offset": self.offset})
        return config
