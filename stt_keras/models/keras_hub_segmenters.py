"""KerasHub image segmenters -> an encoder and a decoder that fit `STTSegmenter`, weights copied one to one.

`split_image_segmenter(segmenter)` takes a KerasHub `SegFormerImageSegmenter`
(or `DeepLabV3ImageSegmenter`) and returns this package's encoder and decoder
layers with the segmenter's trained variables copied into them unchanged, and
its image converter's normalisation (x * scale + offset) moved inside the
encoder, so the model takes raw RGB frames in [0, 255] like every model here.
`load_image_segmenter` resolves an object, a KerasHub preset name or a local
KerasHub preset directory; without access to the hub it fails with one line
that says how to pass a directory instead.
"""

import os

import keras
import numpy as np

from stt_keras.models.segformer.segformer_decoder import SegFormerDecoder
from stt_keras.models.segformer.segformer_encoder import IMAGENET_OFFSET, IMAGENET_SCALE, SegFormerEncoder

# The MiT configurations of KerasHub's SegFormer presets (heads, reduction ratios, patch
# sizes and strides are the same for every size; projection_filters is the decoder width).
# The MiT stage the STT mixes unless told: stage 1 (1/4 of the frame), where SegFormer's decoder reads
# what a damaged frame loses (docs/pretrained.md, "Where the STT sits").
SEGFORMER_STAGE = 1
_MIT_COMMON = dict(num_heads=[1, 2, 5, 8], sr_ratios=[8, 4, 2, 1], patch_sizes=[7, 3, 3, 3], strides=[4, 2, 2, 2])
SEGFORMER_ARCHS = {
    "b0": dict(_MIT_COMMON, hidden_dims=[32, 64, 160, 256], depths=[2, 2, 2, 2], projection_filters=256),
    "b1": dict(_MIT_COMMON, hidden_dims=[64, 128, 320, 512], depths=[2, 2, 2, 2], projection_filters=256),
    "b2": dict(_MIT_COMMON, hidden_dims=[64, 128, 320, 512], depths=[3, 4, 6, 3], projection_filters=768),
}
# DeepLabV3+ with KerasHub's ResNet-50 (stride 32, the ASPP on P5, the decoder on P2), as its Pascal VOC preset.
DEEPLAB_ARCHS = {
    "resnet50": dict(
        resnet_config=dict(input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 128, 256, 512],
                           stackwise_num_blocks=[3, 4, 6, 3], stackwise_num_strides=[1, 2, 2, 2],
                           block_type="bottleneck_block", use_pre_activation=False),
        spatial_pyramid_pooling_key="P5", dilation_rates=[6, 12, 18], low_level_feature_key="P2", projection_filters=48),
}


class PresetUnavailable(ValueError):
    """A KerasHub preset that cannot be loaded (no hub access, or not a segmenter)."""


def load_image_segmenter(source):
    """A KerasHub ImageSegmenter from an object, a KerasHub preset name or a local KerasHub preset directory."""
    import keras_hub

    if isinstance(source, keras.Model):
        return source
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"Expected a KerasHub image segmenter, a KerasHub preset name or a preset directory, "
                        f"got {type(source).__name__}.")
    source = os.fspath(source)
    local = os.path.isdir(source)
    try:
        segmenter = keras_hub.models.ImageSegmenter.from_preset(source)
    except Exception as error:  # the hub raises many types; all mean "not loadable here"
        first = str(error).strip().splitlines()[0][:200] if str(error).strip() else ""
        where = "the directory" if local else "KerasHub preset"
        raise PresetUnavailable(
            f"Could not load {where} {source!r} as a KerasHub image segmenter ({type(error).__name__}: {first}). "
            "Without access to the hub: on a machine with it run keras_hub.models.ImageSegmenter.from_preset("
            f"{source!r}).save_to_preset('DIR'), copy DIR here and pass DIR instead (or image_segmenter_weights=None "
            "for the architecture with random weights).") from None
    return segmenter


def _converter_normalisation(segmenter):
    """(scale, offset) per channel of the segmenter's image converter, ImageNet's without one."""
    converter = getattr(getattr(segmenter, "preprocessor", None), "image_converter", None)
    if converter is None:
        return IMAGENET_SCALE, IMAGENET_OFFSET
    scale = 1.0 if converter.scale is None else converter.scale
    offset = 0.0 if converter.offset is None else converter.offset
    return (tuple(float(v) for v in np.broadcast_to(scale, (3,))),
            tuple(float(v) for v in np.broadcast_to(offset, (3,))))


def _copy(source, target):
    weights = source.get_weights()
    if [w.shape for w in weights] != [tuple(v.shape) for v in target.weights]:
        raise ValueError(f"Cannot copy {source.name} into {target.name}: variable shapes "
                         f"{[w.shape for w in weights]} vs {[tuple(v.shape) for v in target.weights]}.")
    target.set_weights(weights)


def segformer_arch(segmenter):
    """The encoder/decoder arguments of a KerasHub SegFormerImageSegmenter."""
    mit = segmenter.backbone.image_encoder
    return dict(
        hidden_dims=list(mit.hidden_dims), depths=list(mit.layerwise_depths),
        num_heads=list(mit.layerwise_num_heads), sr_ratios=list(mit.layerwise_sr_ratios),
        patch_sizes=list(mit.layerwise_patch_sizes), strides=list(mit.layerwise_strides),
        drop_path_rate=float(mit.max_drop_path_rate), projection_filters=segmenter.backbone.projection_filters,
    )


def build_segformer(arch, num_classes, features_stage=None, scale=IMAGENET_SCALE, offset=IMAGENET_OFFSET, dtype=None):
    """A built SegFormerEncoder and SegFormerDecoder from the arguments of `segformer_arch` (random weights)."""
    arch = dict(arch)
    features_stage = features_stage or SEGFORMER_STAGE
    projection_filters = arch.pop("projection_filters")
    encoder = SegFormerEncoder(**arch, features_stage=features_stage, scale=scale, offset=offset, dtype=dtype,
                               name="encoder")
    decoder = SegFormerDecoder(num_classes, arch["hidden_dims"], projection_filters=projection_filters,
                               features_stage=features_stage, dtype=dtype, name="decoder")
    return _built(encoder, decoder)


def _built(encoder, decoder):
    """Builds the pair for frames of any size (the decoder from the encoder's output shapes); returns it."""
    frames = (None, None, None, 3)
    encoder.build(frames)
    shapes = encoder.compute_output_shape(frames)
    decoder.build(shapes.pop("features"), shapes)
    return encoder, decoder


def copy_mit_weights(mit, encoder):
    """Copies a KerasHub MiTBackbone's variables into a built SegFormerEncoder, layer by layer."""
    stage_norms = [layer for layer in mit.layers if isinstance(layer, keras.layers.LayerNormalization)]
    for i in range(len(encoder.hidden_dims)):
        embed = mit.get_layer(f"patch_and_embed_{i}")
        _copy(embed.proj, encoder.patch_embeds[i])
        _copy(embed.norm, encoder.patch_norms[i])
        for k, block in enumerate(encoder.blocks[i]):
            theirs = mit.get_layer(f"hierarchical_encoder_{i}_{k}")
            pairs = [(theirs.norm1, block.norm1), (theirs.attn.q, block.q), (theirs.attn.k, block.k),
                     (theirs.attn.v, block.v), (theirs.attn.proj, block.proj), (theirs.norm2, block.norm2),
                     (theirs.mlp.fc1, block.fc1), (theirs.mlp.dwconv, block.dwconv), (theirs.mlp.fc2, block.fc2)]
            if block.sr_ratio > 1:
                pairs += [(theirs.attn.sr, block.sr), (theirs.attn.norm, block.sr_norm)]
            for source, target in pairs:
                _copy(source, target)
        _copy(stage_norms[i], encoder.stage_norms[i])


def split_segformer(segmenter, num_classes=None, features_stage=None, dtype=None):
    """(SegFormerEncoder, SegFormerDecoder) with the KerasHub SegFormerImageSegmenter's weights.

    `num_classes` other than the segmenter's gives a freshly initialised classifier
    (everything else keeps the trained weights).
    """
    own_classes = segmenter.num_classes
    num_classes = own_classes if num_classes is None else num_classes
    scale, offset = _converter_normalisation(segmenter)
    encoder, decoder = build_segformer(segformer_arch(segmenter), num_classes, features_stage, scale, offset, dtype)
    copy_mit_weights(segmenter.backbone.image_encoder, encoder)
    head = segmenter.backbone
    for source, target in zip(head.mlp_blocks, decoder.mlps):
        _copy(source, target)
    _copy(head.linear_fuse.layers[0], decoder.fuse)
    _copy(head.linear_fuse.layers[1], decoder.fuse_bn)
    if num_classes == own_classes:
        _copy(segmenter.output_segmentation_head, decoder.classifier)
    return encoder, decoder


def check_architecture(segmenter, recipe, source, preset):
    """ValueError (one line) when the loaded segmenter is not the architecture the built-in preset names."""
    import keras_hub

    if recipe["kind"] == "segformer":
        cls, arch, expected = keras_hub.models.SegFormerImageSegmenter, None, SEGFORMER_ARCHS[recipe["size"]]
    else:
        cls, arch, expected = keras_hub.models.DeepLabV3ImageSegmenter, None, DEEPLAB_ARCHS[recipe["size"]]
    if not isinstance(segmenter, cls):
        raise ValueError(f"{source!r} is a {type(segmenter).__name__}; preset {preset!r} starts from a {cls.__name__}.")
    if recipe["kind"] == "segformer":
        arch = segformer_arch(segmenter)
        wrong = {k: arch[k] for k in expected if arch[k] != expected[k]}
    else:
        arch = deeplab_arch(segmenter)
        wrong = {k: arch[k] for k in expected if k != "resnet_config" and arch[k] != expected[k]}
        wrong.update({k: arch["resnet_config"].get(k) for k, v in expected["resnet_config"].items()
                      if arch["resnet_config"].get(k) != v})
    if wrong:
        raise ValueError(f"{source!r} is not the {recipe['size']} architecture of preset {preset!r} ({wrong}); use "
                         f"STTSegmenter.from_image_segmenter({source!r}) for another architecture.")


def build_architecture(recipe, num_classes, features_stage=None, dtype=None):
    """The encoder and decoder of a built-in image-segmenter preset, with random weights."""
    if recipe["kind"] == "segformer":
        return build_segformer(SEGFORMER_ARCHS[recipe["size"]], num_classes, features_stage, dtype=dtype)
    return build_deeplab(DEEPLAB_ARCHS[recipe["size"]], num_classes, dtype=dtype)


def deeplab_arch(segmenter):
    """The encoder/decoder arguments of a KerasHub DeepLabV3ImageSegmenter."""
    backbone = segmenter.backbone
    return dict(resnet_config=backbone.image_encoder.get_config(),
                spatial_pyramid_pooling_key=backbone.spatial_pyramid_pooling_key,
                dilation_rates=list(backbone.dilation_rates), low_level_feature_key=backbone.low_level_feature_key,
                projection_filters=backbone.projection_filters)


def build_deeplab(arch, num_classes, scale=IMAGENET_SCALE, offset=IMAGENET_OFFSET, dtype=None):
    """A built DeepLabV3Encoder and DeepLabV3Decoder from the arguments of `deeplab_arch` (random weights)."""
    from stt_keras.models.deeplab_v3.deeplab_v3_decoder import DeepLabV3Decoder
    from stt_keras.models.deeplab_v3.deeplab_v3_encoder import DeepLabV3Encoder

    arch = dict(arch)
    projection_filters = arch.pop("projection_filters")
    encoder = DeepLabV3Encoder(**arch, scale=scale, offset=offset, dtype=dtype, name="encoder")
    decoder = DeepLabV3Decoder(num_classes, low_level=bool(arch["low_level_feature_key"]),
                               projection_filters=projection_filters, dtype=dtype, name="decoder")
    return _built(encoder, decoder)


def split_deeplab(segmenter, num_classes=None, dtype=None):
    """(DeepLabV3Encoder, DeepLabV3Decoder) with the KerasHub DeepLabV3ImageSegmenter's weights."""
    from keras_hub.src.models.deeplab_v3.deeplab_v3_layers import SpatialPyramidPooling

    if segmenter.activation not in (None, "linear"):
        raise ValueError(f"The segmenter ends in activation={segmenter.activation!r}; STTSegmenter outputs logits. "
                         "Build it with activation=None.")
    own_classes = segmenter.num_classes
    num_classes = own_classes if num_classes is None else num_classes
    scale, offset = _converter_normalisation(segmenter)
    encoder, decoder = build_deeplab(deeplab_arch(segmenter), num_classes, scale, offset, dtype)
    backbone = segmenter.backbone
    encoder.resnet.set_weights(backbone.image_encoder.get_weights())
    aspp = next(layer for layer in backbone.layers if isinstance(layer, SpatialPyramidPooling))
    if aspp.num_channels != encoder.num_channels or aspp.dropout:
        raise ValueError(f"Only the ASPP KerasHub builds (256 channels, no dropout) is supported, got "
                         f"{aspp.num_channels} channels, dropout {aspp.dropout}.")
    branches = aspp.aspp_parallel_channels
    for sequential, (conv, bn) in zip(branches[:-1], encoder.branches):
        _copy(sequential.layers[0], conv)
        _copy(sequential.layers[1], bn)
    _copy(branches[-1].layers[2], encoder.pool_branch[0])
    _copy(branches[-1].layers[3], encoder.pool_branch[1])
    _copy(aspp.projection.layers[0], encoder.projection[0])
    _copy(aspp.projection.layers[1], encoder.projection[1])
    if decoder.low_level:
        _copy(backbone.get_layer("decoder_conv"), decoder.low_level_projection[0])
        _copy(backbone.get_layer("decoder_norm"), decoder.low_level_projection[1])
    _copy(backbone.get_layer("segmentation_head_conv"), decoder.head[0])
    _copy(backbone.get_layer("segmentation_head_norm"), decoder.head[1])
    if num_classes == own_classes:
        _copy(segmenter.output_conv, decoder.classifier)
    return encoder, decoder


def split_image_segmenter(segmenter, num_classes=None, features_stage=None, dtype=None):
    """(encoder, decoder, kind) for a KerasHub SegFormer or DeepLabV3 image segmenter."""
    import keras_hub

    if isinstance(segmenter, keras_hub.models.SegFormerImageSegmenter):
        return (*split_segformer(segmenter, num_classes, features_stage, dtype), "segformer")
    if isinstance(segmenter, keras_hub.models.DeepLabV3ImageSegmenter):
        if features_stage is not None:
            raise ValueError("features_stage is a SegFormer argument; DeepLabV3's STT mixes the ASPP output.")
        return (*split_deeplab(segmenter, num_classes, dtype), "deeplab_v3")
    raise TypeError(f"from_image_segmenter takes a KerasHub SegFormerImageSegmenter or DeepLabV3ImageSegmenter, "
                    f"got {type(segmenter).__name__}.")
