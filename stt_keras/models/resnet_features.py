"""ResNet feature pyramids from KerasHub, at output stride 8, 16 or 32 with the same weights.

Segmentation heads want dense features: PSPNet and TDNet run ResNet at output
stride 8 by turning the strides of the last stages into dilations. KerasHub's
`ResNetBackbone` has no dilation argument, so this builds it with stride 1 in
those stages and sets the dilation rate of their 3x3 convolutions (2 then 4 at
stride 8, 2 in the last stage at stride 16), as PSPNet does. The variables are
the same in every stride, so one ImageNet checkpoint loads into all of them.

Pretrained weights go through KerasHub's real `from_preset` path. This machine
cannot download from the hub; pass a preset directory saved with
`save_to_preset` (the tests do exactly that).
"""

import keras
import keras_hub

# KerasHub has no plain ResNet-34 preset; the ResNet-vd ("bag of tricks") one
# stands in for it. "resnet_tiny" is ours: one block per stage, for tests and
# the CPU quickstart (no pretrained weights).
RESNET_VARIANTS = {
    "resnet18": dict(
        preset="resnet_18_imagenet", input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[2, 2, 2, 2], block_type="basic_block",
    ),
    "resnet34": dict(
        preset="resnet_vd_34_imagenet", input_conv_filters=[32, 32, 64], input_conv_kernel_sizes=[3, 3, 3],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3], block_type="basic_block_vd",
    ),
    "resnet50": dict(
        preset="resnet_50_imagenet", input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 6, 3], block_type="bottleneck_block",
    ),
    "resnet101": dict(
        preset="resnet_101_imagenet", input_conv_filters=[64], input_conv_kernel_sizes=[7],
        stackwise_num_filters=[64, 128, 256, 512], stackwise_num_blocks=[3, 4, 23, 3], block_type="bottleneck_block",
    ),
    "resnet_tiny": dict(
        preset=None, input_conv_filters=[64], input_conv_kernel_sizes=[3],
        stackwise_num_filters=[64, 64, 96, 128], stackwise_num_blocks=[1, 1, 1, 1], block_type="basic_block",
    ),
}

_STRIDES = {32: [1, 2, 2, 2], 16: [1, 2, 2, 1], 8: [1, 2, 1, 1]}
_DILATIONS = {32: [1, 1, 1, 1], 16: [1, 1, 1, 2], 8: [1, 1, 2, 4]}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def resnet_channels(variant):
    """Channels of P2..P5 for a variant."""
    cfg = RESNET_VARIANTS[variant]
    factor = 4 if cfg["block_type"].startswith("bottleneck") else 1
    return [f * factor for f in cfg["stackwise_num_filters"]]


def load_resnet_weights(backbone, weights, variant):
    """Copies ImageNet weights into `backbone` from a KerasHub preset name or directory."""
    try:
        pretrained = keras_hub.models.ResNetBackbone.from_preset(weights)
    except Exception as error:  # the hub raises many types; all mean "not loadable"
        raise RuntimeError(
            f"Could not load the KerasHub preset {weights!r} for {variant}: {error}. Without "
            "network access to the hub, load it on a machine that has it, save it with "
            "`backbone.save_to_preset(dir)`, copy the directory here and pass weights=dir."
        ) from error
    ours, theirs = backbone.get_config(), pretrained.get_config()
    for key in ("stackwise_num_filters", "stackwise_num_blocks", "block_type", "input_conv_filters"):
        if list(ours[key]) != list(theirs[key]) if isinstance(ours[key], list) else ours[key] != theirs[key]:
            raise ValueError(
                f"Preset {weights!r} does not fit {variant}: {key} is {theirs[key]}, expected {ours[key]}."
            )
    backbone.set_weights(pretrained.get_weights())


@keras.saving.register_keras_serializable(package="stt_keras")
class ResNetFeatures(keras.layers.Layer):
    """Images in [0, 255] -> {"P2": 1/4, "P3": 1/8, "P4": 1/16 or 1/8, "P5": 1/32, 1/16 or 1/8}.

    Args:
        variant: one of RESNET_VARIANTS.
        output_stride: 8, 16 or 32, the stride of P5 (and of P4 at 8).
        weights: None (random), "imagenet" (the variant's KerasHub preset) or a
            KerasHub preset name or directory. Used at construction only; saved
            models carry their weights and never reload them.

    Example:
    >>> import numpy as np
    >>> f = ResNetFeatures("resnet_tiny", output_stride=8)
    >>> tuple(f(np.zeros((1, 64, 64, 3), "float32"))["P5"].shape)
    (1, 8, 8, 128)
    """

    def __init__(self, variant="resnet18", output_stride=8, weights=None, **kwargs):
        super().__init__(**kwargs)
        if variant not in RESNET_VARIANTS:
            raise ValueError(f"Unknown ResNet variant {variant!r}; known: {sorted(RESNET_VARIANTS)}.")
        if output_stride not in _STRIDES:
            raise ValueError(f"`output_stride` must be 8, 16 or 32, got {output_stride!r}.")
        self.variant = variant
        self.output_stride = output_stride
        cfg = dict(RESNET_VARIANTS[variant])
        preset = cfg.pop("preset")
        self.backbone = keras_hub.models.ResNetBackbone(
            **cfg, stackwise_num_strides=_STRIDES[output_stride], dtype=self.dtype_policy, name=f"{self.name}_resnet"
        )
        for stack, rate in enumerate(_DILATIONS[output_stride]):
            if rate == 1:
                continue
            for layer in self.backbone.layers:
                if (
                    isinstance(layer, keras.layers.Conv2D)
                    and layer.name.startswith(f"stack{stack}_")
                    and tuple(layer.kernel_size) == (3, 3)
                ):
                    layer.dilation_rate = (rate, rate)
        self.extractor = keras.Model(self.backbone.inputs, self.backbone.pyramid_outputs)
        self.extractor.dtype_policy = self.dtype_policy  # keras.Model(inputs, outputs) takes no dtype
        if weights is not None:
            if weights == "imagenet":
                if preset is None:
                    raise ValueError(f"{variant} has no pretrained weights; use weights=None.")
                weights = preset
            load_resnet_weights(self.backbone, weights, variant)
        self.channels = resnet_channels(variant)

    def call(self, images):
        x = keras.ops.cast(images, self.compute_dtype) / 255.0
        x = (x - keras.ops.array(IMAGENET_MEAN, x.dtype)) / keras.ops.array(IMAGENET_STD, x.dtype)
        return self.extractor(x)

    def compute_output_shape(self, images_shape):
        b, h, w = images_shape[0], images_shape[1], images_shape[2]
        strides = {"P2": 4, "P3": 8, "P4": min(16, self.output_stride), "P5": self.output_stride}
        return {
            k: (b, None if h is None else -(-h // s), None if w is None else -(-w // s), c)
            for (k, s), c in zip(strides.items(), self.channels)
        }

    def get_config(self):
        config = super().get_config()
        config.update({"variant": self.variant, "output_stride": self.output_stride})
        return config

    @classmethod
    def from_config(cls, config):
        # Deserialisation never loads pretrained weights (a KerasHub preset name,
        # URL or folder in a crafted config): the saved file carries the weights.
        config = {k: v for k, v in config.items() if k != "weights"}
        return super().from_config(config)
