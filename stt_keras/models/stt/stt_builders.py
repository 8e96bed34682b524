"""Presets -> models: the loaders `STTSegmenter.from_preset` and `from_image_segmenter` hand their work to.

A preset is one of three things, each with its loader (as keras-hub's `from_preset`
picks a loader for what it is given):
- a directory written by `save_to_preset`: `from_directory` (`stt_keras.saving` reads it);
- a built-in recipe of this package's encoders and decoders (`PRESETS`, arch "pspnet" or
  "bisenet"): `from_recipe` turns it into layers;
- a built-in recipe that starts from a KerasHub image segmenter (arch "image_segmenter"):
  `from_image_segmenter_recipe`, through `from_image_segmenter`, which wraps any KerasHub
  SegFormer or DeepLabV3 segmenter.
The loaders take the model class as their first argument, so this module never imports it.
"""

import inspect
import os

from stt_keras.layers import SparseTemporalTransformer
from stt_keras.models.bisenet.bisenet_decoder import BiSeNetDecoder
from stt_keras.models.bisenet.bisenet_encoder import BiSeNetEncoder
from stt_keras.models.pspnet.pspnet_decoder import PSPNetDecoder
from stt_keras.models.pspnet.pspnet_encoder import PSPNetEncoder
from stt_keras.models.stt.stt_presets import GATED_STT, PRESETS

# The STT arguments a preset takes as overrides: the block's constructor arguments, except those about how it runs
# rather than what it computes (the implementation, its tiling) and the LayerNorm epsilon.
_STT_FIXED = {"self", "kwargs", "layer_norm_epsilon", "tiles_per_step", "query_chunk", "implementation"}
STT_KEYS = frozenset(inspect.signature(SparseTemporalTransformer.__init__).parameters) - _STT_FIXED
ARCH_KEYS = frozenset({"backbone", "feature_channels", "head_channels", "output_stride"})
MODEL_KEYS = frozenset({"stop_key_gradients", "aux_weight"})


def is_directory(preset):
    """True if `preset` names a folder (or a path) rather than a built-in preset."""
    return isinstance(preset, (str, os.PathLike)) and str(preset) not in PRESETS and (
        os.path.exists(preset) or os.sep in str(preset) or str(preset).startswith("."))


def from_directory(preset, num_classes=None, load_weights=True, verify=True, **given):
    """The model a `save_to_preset` directory holds (`given`: the other from_preset arguments, which must be unset)."""
    from stt_keras import saving

    if os.path.isfile(preset):
        raise ValueError(f"{preset} is a file, not a preset directory; load a .keras file with "
                         "stt_keras.load_model (or keras.saving.load_model after `import stt_keras`).")
    if not os.path.isdir(preset):
        raise FileNotFoundError(f"No preset directory at {preset} (and {str(preset)!r} is not a built-in preset "
                                f"name: {', '.join(sorted(PRESETS))}).")
    given = sorted(k for k, v in given.items() if v is not None)
    if given:
        raise ValueError(f"from_preset({str(preset)!r}) loads a saved model; {given} apply to built-in preset "
                         "names only.")
    model = saving.load_preset(os.fspath(preset), load_weights=load_weights, verify=verify)
    if num_classes is not None and num_classes != model.num_classes:
        raise ValueError(f"Preset {preset} has {model.num_classes} classes, not num_classes={num_classes}.")
    return model


def from_recipe(cls, name, num_classes=None, backbone_weights=None, **overrides):
    """A new model from the built-in recipe `name`: the recipe's layers with `overrides` applied, random weights
    (or the backbone's pretrained ones, `backbone_weights`)."""
    if PRESETS.get(name, {}).get("arch") == "image_segmenter":
        return from_image_segmenter_recipe(cls, name, num_classes, backbone_weights, **overrides)
    if num_classes is None and name in PRESETS:
        raise ValueError(f"from_preset({name!r}) builds a new model: pass num_classes (the number of classes).")
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}: not a built-in preset ({', '.join(sorted(PRESETS))}) "
                         "and not a preset directory (no folder at that path).")
    unknown = set(overrides) - STT_KEYS - ARCH_KEYS - MODEL_KEYS - {"dtype"}
    if unknown:
        raise ValueError(f"Unknown override(s) {sorted(unknown)} for preset {name!r}; allowed: "
                         f"{sorted(STT_KEYS | ARCH_KEYS | MODEL_KEYS)}.")
    recipe = PRESETS[name]
    dtype = overrides.get("dtype")
    stt = _stt_arguments(name, recipe, overrides)
    encoder, decoder = _encoder_decoder(recipe, num_classes, backbone_weights, dtype, overrides)
    if stt is not None:
        stt = SparseTemporalTransformer(**stt, dtype=dtype, name="stt")
    return cls(encoder, decoder, stt, name=name, **{k: v for k, v in overrides.items() if k in MODEL_KEYS})


def _encoder_decoder(recipe, num_classes, backbone_weights, dtype, overrides):
    """The encoder and decoder of a PSPNet or BiSeNet recipe."""
    backbone = overrides.get("backbone", recipe["backbone"])
    if recipe["arch"] == "pspnet":
        encoder = PSPNetEncoder(
            backbone, feature_channels=overrides.get("feature_channels", recipe.get("feature_channels")),
            output_stride=overrides.get("output_stride", 8), backbone_weights=backbone_weights, dtype=dtype,
            name="encoder")
        decoder = PSPNetDecoder(num_classes, head_channels=overrides.get("head_channels", recipe["head_channels"]),
                                dtype=dtype, name="decoder")
        return encoder, decoder
    return (BiSeNetEncoder(backbone, backbone_weights=backbone_weights, dtype=dtype, name="encoder"),
            BiSeNetDecoder(num_classes, dtype=dtype, name="decoder"))


def _stt_arguments(name, recipe, overrides):
    """The recipe's STT arguments with the STT overrides over them; None for a per-frame recipe (which takes none)."""
    stt_overrides = {k: v for k, v in overrides.items() if k in STT_KEYS}
    if recipe["stt"] is None:
        if stt_overrides:
            raise ValueError(f"Preset {name!r} is a per-frame model; it takes no STT overrides {sorted(stt_overrides)}.")
        return None
    return {**recipe["stt"], **stt_overrides}


def from_image_segmenter_recipe(cls, name, num_classes=None, backbone_weights=None, image_segmenter_weights="preset",
                                **overrides):
    """A built-in preset that starts from a KerasHub image segmenter (docs/pretrained.md)."""
    from stt_keras.models import keras_hub_segmenters as hub

    recipe = PRESETS[name]
    if backbone_weights is not None:
        raise ValueError(f"from_preset({name!r}) starts from a whole KerasHub segmenter: pass "
                         "image_segmenter_weights (a KerasHub preset name or directory, or None), not backbone_weights.")
    unknown = set(overrides) - STT_KEYS - MODEL_KEYS - {"features_stage", "dtype"}
    if unknown:
        raise ValueError(f"Unknown override(s) {sorted(unknown)} for preset {name!r}; allowed: "
                         f"{sorted(STT_KEYS | MODEL_KEYS | {'features_stage', 'image_segmenter_weights'})}.")
    model_kwargs = {k: v for k, v in overrides.items() if k in MODEL_KEYS}
    stt = _stt_arguments(name, recipe, overrides)
    features_stage = overrides.get("features_stage", recipe["features_stage"])
    dtype = overrides.get("dtype")
    if image_segmenter_weights is None:
        encoder, decoder = hub.build_architecture(recipe, num_classes or recipe["num_classes"], features_stage, dtype)
        return cls(encoder, decoder, make_stt(stt, encoder, dtype), name=name, **model_kwargs)
    source = recipe["image_segmenter"] if image_segmenter_weights == "preset" else image_segmenter_weights
    segmenter = hub.load_image_segmenter(source)
    hub.check_architecture(segmenter, recipe, source, name)
    model = from_image_segmenter(cls, segmenter, stt=stt, num_classes=num_classes, features_stage=features_stage,
                                 dtype=dtype, name=name)
    for key, value in model_kwargs.items():  # the model options (no aux head here: aux_weight is inert)
        setattr(model, key, float(value) if key == "aux_weight" else value)
    return model


def from_image_segmenter(cls, segmenter_or_preset, stt="auto", num_classes=None, features_stage=None, dtype=None,
                         name=None):
    """`STTSegmenter.from_image_segmenter` (its docstring says what the arguments are)."""
    from stt_keras.models import keras_hub_segmenters as hub

    segmenter = hub.load_image_segmenter(segmenter_or_preset)
    encoder, decoder, kind = hub.split_image_segmenter(segmenter, num_classes, features_stage, dtype)
    return cls(encoder, decoder, make_stt(stt, encoder, dtype), name=name or ("stt_" if stt is not None else "") + kind)


# num_heads="auto" (GATED_STT): at most this many heads, each at least MIN_HEAD_CHANNELS wide.
MAX_AUTO_HEADS, MIN_HEAD_CHANNELS = 4, 8


def auto_num_heads(channels, reduction):
    """The heads of a block on a `channels`-wide map whose attention is channels / reduction wide: the most, up
    to MAX_AUTO_HEADS, that divide it into heads of at least MIN_HEAD_CHANNELS (at least one)."""
    width = channels // reduction
    return next(n for n in range(MAX_AUTO_HEADS, 0, -1) if n == 1 or (width % n == 0 and width // n >= MIN_HEAD_CHANNELS))


def make_stt(stt, encoder, dtype=None):
    """The STT of `from_image_segmenter`, built for `encoder`'s features: "auto", a dict over GATED_STT,
    a layer, or None."""
    if stt is None:
        return None
    if isinstance(stt, str) and stt == "auto":
        stt = {}
    if not isinstance(stt, (dict, SparseTemporalTransformer)):
        raise TypeError(f"`stt` must be 'auto', a dict of SparseTemporalTransformer arguments, a "
                        f"SparseTemporalTransformer or None, got {type(stt).__name__}.")
    # The channels of the features the STT mixes: only a block still to be made or built needs them.
    built = isinstance(stt, SparseTemporalTransformer) and stt.built
    d = None if built else encoder.compute_output_shape((None, None, None, 3))["features"][-1]
    if isinstance(stt, dict):
        arguments = {**GATED_STT, **stt}
        if arguments["num_heads"] == "auto":
            arguments["num_heads"] = auto_num_heads(d, arguments["reduction"])
        stt = SparseTemporalTransformer(**arguments, dtype=dtype, name="stt")
    if not stt.built:  # its variables exist before the first call (stream_step and exports read them)
        stt.build((None, None, None, d), (None, stt.num_key_frames, None, None, d))
    return stt
