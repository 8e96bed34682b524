"""Every layer and model of stt_keras: the shared layer checks and a mixed-precision sweep.

The classes are listed from the package itself (every keras Layer or Model
subclass defined in a stt_keras module), and a class without a case here fails
`test_every_layer_has_a_case`, so a new layer cannot skip the checks.

Mixed precision: under "mixed_float16" and "mixed_bfloat16" every layer builds
float32 variables, computes in the policy's compute dtype (its float outputs
have that dtype; STTSegmenter returns float32 logits), gives finite outputs,
and, with the float32 layer's weights, stays within a relative tolerance of
the float32 outputs: max |out - ref| <= tol * max |ref|, tol = 5e-3 for
float16 (10 mantissa bits) and 3e-2 for bfloat16 (7 bits), about three times
the worst error measured over the deepest stacks here (a ResNet and a decoder).
Every sublayer must carry the policy (a Dropout made without it once upcast
PSPNet's head to float32).
"""

import os

import numpy as np
import pytest
import keras

from layer_checks import check_layer, stt_keras_layer_classes
from stt_keras.layers import NSMQuerySelection, SparseTemporalTransformer
from stt_keras.models import BiSeNetDecoder, BiSeNetEncoder, PSPNetDecoder, PSPNetEncoder, ResNetFeatures, STTSegmenter
from stt_keras.models.bisenet.bisenet_decoder import AttentionRefinement, FeatureFusion
from stt_keras.models.blocks import ConvBNReLU
from stt_keras.models.deeplab_v3.deeplab_v3_decoder import DeepLabV3Decoder
from stt_keras.models.deeplab_v3.deeplab_v3_encoder import DeepLabV3Encoder
from stt_keras.models.keras_hub_segmenters import SEGFORMER_ARCHS, build_segformer
from stt_keras.models.segformer.segformer_decoder import SegFormerDecoder
from stt_keras.models.segformer.segformer_encoder import MiTBlock, SegFormerEncoder

# Measured worst cases over these inputs: 1.4e-3 (float16) and 1.1e-2 (bfloat16).
POLICIES = {"mixed_float16": 5e-3, "mixed_bfloat16": 3e-2}
# The MiT's attention and layer norms (SegFormer) lose more: up to 4.2e-2 measured under bfloat16
# (float16: 3.4e-3), so about 1.5 times that for the cases that run them.
MIT_BFLOAT16_TOL = 6e-2
# Float outputs that are float32 under every policy, by contract: the models' logits
# and the NSM scores (computed in float32; NSMQuerySelection's docstring).
FLOAT32_OUTPUTS = {"stt_segmenter", "bisenet_segmenter", "stt_segformer", "nsm_query_selection"}
_TINY_MIT = dict(hidden_dims=[16, 24, 36, 48], depths=[1, 1, 1, 1], num_heads=[1, 2, 3, 4])


def _stt_segformer(dtype=None):
    """A tiny STT-SegFormer as `from_image_segmenter` makes it (random weights, identity-at-start STT)."""
    from stt_keras.models.stt.stt_builders import make_stt

    arch = dict(SEGFORMER_ARCHS["b0"], **_TINY_MIT, projection_filters=16)
    encoder, decoder = build_segformer(arch, 3, dtype=dtype)
    return STTSegmenter(encoder, decoder, make_stt({"num_key_frames": 2}, encoder, dtype))


def _rand(*shape, scale=1.0, seed=0):
    return (np.random.default_rng(seed + sum(shape)).uniform(0, 1, shape) * scale).astype("float32")


def _gated_stt(dtype=None):
    """The STT block with residual gates, the gates non-zero (a fresh gated block is the identity)."""
    layer = SparseTemporalTransformer(num_key_frames=2, num_heads=2, neighborhood_radius=2, norm_first=True,
                                      residual_gate=True, dtype=dtype)
    layer(_rand(1, 6, 7, 16), _rand(1, 2, 6, 7, 16))
    layer.gates.set_weights([np.linspace(0.2, 0.8, 16, dtype="float32"), np.linspace(0.8, 0.2, 16, dtype="float32")])
    return layer


# name -> (class, make(dtype), inputs, call kwargs); dtype None is the float32 default.
CASES = {
    "conv_bn_relu": (ConvBNReLU, lambda dtype=None: ConvBNReLU(8, 3, strides=2, dtype=dtype), (_rand(2, 9, 10, 4),), {}),
    "attention_refinement": (
        AttentionRefinement, lambda dtype=None: AttentionRefinement(8, dtype=dtype), (_rand(2, 5, 6, 4),), {}),
    "feature_fusion": (
        FeatureFusion, lambda dtype=None: FeatureFusion(8, dtype=dtype), (_rand(2, 5, 6, 4), _rand(2, 5, 6, 3)), {}),
    "resnet_features": (
        ResNetFeatures, lambda dtype=None: ResNetFeatures("resnet_tiny", 8, dtype=dtype), (_rand(1, 32, 32, 3, scale=255),), {}),
    "pspnet_encoder": (
        PSPNetEncoder, lambda dtype=None: PSPNetEncoder("resnet_tiny", feature_channels=32, dtype=dtype),
        (_rand(1, 32, 32, 3, scale=255),), {}),
    "bisenet_encoder": (
        BiSeNetEncoder, lambda dtype=None: BiSeNetEncoder("resnet_tiny", spatial_channels=16, dtype=dtype),
        (_rand(1, 64, 64, 3, scale=255),), {}),
    "pspnet_decoder": (
        PSPNetDecoder, lambda dtype=None: PSPNetDecoder(5, head_channels=16, dtype=dtype),
        (_rand(2, 6, 6, 32), {"aux": _rand(2, 6, 6, 24)}), {"output_size": (24, 24)}),
    "pspnet_decoder_aux": (
        PSPNetDecoder, lambda dtype=None: PSPNetDecoder(5, head_channels=16, dtype=dtype),
        (_rand(2, 6, 6, 32), {"aux": _rand(2, 6, 6, 24)}), {"output_size": (20, 28), "return_aux": True}),
    "bisenet_decoder": (
        BiSeNetDecoder, lambda dtype=None: BiSeNetDecoder(5, context_channels=8, fusion_channels=16, dtype=dtype),
        (_rand(2, 2, 3, 32), {"p4": _rand(2, 4, 6, 24), "spatial": _rand(2, 8, 12, 16)}), {"output_size": (32, 48)}),
    "bisenet_decoder_aux": (
        BiSeNetDecoder, lambda dtype=None: BiSeNetDecoder(5, context_channels=8, fusion_channels=16, dtype=dtype),
        (_rand(2, 2, 3, 32), {"p4": _rand(2, 4, 6, 24), "spatial": _rand(2, 8, 12, 16)}),
        {"output_size": (32, 48), "return_aux": True}),
    "nsm_query_selection": (
        NSMQuerySelection, lambda dtype=None: NSMQuerySelection(radius=2, top_ratio=0.25, dtype=dtype),
        (_rand(2, 8, 8, 16),), {}),
    "sparse_temporal_transformer": (
        SparseTemporalTransformer,
        lambda dtype=None: SparseTemporalTransformer(num_key_frames=2, num_heads=2, neighborhood_radius=2, dtype=dtype),
        (_rand(1, 6, 7, 16), _rand(1, 2, 6, 7, 16)), {}),
    "sparse_temporal_transformer_gated": (
        SparseTemporalTransformer, _gated_stt, (_rand(1, 6, 7, 16), _rand(1, 2, 6, 7, 16)), {}),
    "stt_segmenter": (
        STTSegmenter, lambda dtype=None: STTSegmenter.from_preset("stt_psp_tiny", num_classes=3, dtype=dtype),
        (_rand(1, 4, 32, 32, 3, scale=255),), {}),
    "mit_block": (
        MiTBlock, lambda dtype=None: MiTBlock(16, num_heads=2, sr_ratio=2, drop_path=0.1, dtype=dtype),
        (_rand(2, 6, 10, 16),), {}),
    "segformer_encoder": (
        SegFormerEncoder, lambda dtype=None: SegFormerEncoder(**_TINY_MIT, features_stage=3, dtype=dtype),
        (_rand(1, 64, 96, 3, scale=255),), {}),
    "segformer_decoder": (
        SegFormerDecoder, lambda dtype=None: SegFormerDecoder(5, [8, 16, 24, 32], projection_filters=16, dtype=dtype),
        (_rand(2, 2, 3, 32), {"P1": _rand(2, 16, 24, 8), "P2": _rand(2, 8, 12, 16), "P3": _rand(2, 4, 6, 24)}),
        {"output_size": (64, 96)}),
    "deeplab_v3_encoder": (
        DeepLabV3Encoder, lambda dtype=None: DeepLabV3Encoder(
            dict(input_conv_filters=[64], input_conv_kernel_sizes=[7], stackwise_num_filters=[64, 64],
                 stackwise_num_blocks=[1, 1], stackwise_num_strides=[1, 2], block_type="basic_block"),
            "P3", [2, 4], "P2", num_channels=16, dtype=dtype),
        (_rand(1, 64, 96, 3, scale=255),), {}),
    "deeplab_v3_decoder": (
        DeepLabV3Decoder, lambda dtype=None: DeepLabV3Decoder(5, projection_filters=8, head_channels=16, dtype=dtype),
        (_rand(2, 4, 6, 16), {"low_level": _rand(2, 16, 24, 12)}), {"output_size": (64, 96)}),
    "stt_segformer": (STTSegmenter, _stt_segformer, (_rand(1, 3, 64, 64, 3, scale=255),), {}),
    "bisenet_segmenter": (
        STTSegmenter, lambda dtype=None: STTSegmenter.from_preset("bise_tiny", num_classes=3, dtype=dtype),
        (_rand(1, 64, 64, 3, scale=255),), {}),
}


def test_every_layer_has_a_case():
    classes = stt_keras_layer_classes()
    assert STTSegmenter in classes and ConvBNReLU in classes  # the listing sees models and blocks
    missing = classes - {case[0] for case in CASES.values()}
    assert not missing, f"layers without a case in tests/test_layer_contract.py: {sorted(c.__name__ for c in missing)}"


@pytest.mark.parametrize("name", sorted(CASES))
def test_layer_checks(name, tmp_path):
    cls, make, inputs, kwargs = CASES[name]
    check_layer(make, inputs, tmp_path, atol=1e-4, call_kwargs=kwargs)


@pytest.mark.parametrize("policy", sorted(POLICIES))
@pytest.mark.parametrize("name", sorted(CASES))
def test_mixed_precision(name, policy):
    if os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper() not in ("ALL", "DEFAULT"):
        # TensorFlow sends float16/bfloat16 convolutions to oneDNN by the CPU's real features, and
        # oneDNN restricted below them has no kernel for them: an emulated profile cannot run this.
        pytest.skip("ONEDNN_MAX_CPU_ISA is set: half precision needs oneDNN's full ISA on this CPU")
    cls, make, inputs, kwargs = CASES[name]
    reference = make()
    expected = keras.tree.flatten(reference(*inputs, **kwargs))
    layer = make(policy)
    layer(*inputs, **kwargs)
    # Every layer inside takes the policy (a model keeps float32 itself: it returns float32
    # logits; an InputLayer computes nothing).
    inner = [sub for sub in layer._flatten_layers(include_self=not isinstance(layer, keras.Model))
             if not isinstance(sub, keras.layers.InputLayer)]
    wrong = {sub.name: sub.dtype_policy.name for sub in inner if sub.dtype_policy.name != policy}
    assert not wrong, f"layers without the {policy} policy: {wrong}"
    layer.set_weights(reference.get_weights())
    assert all(v.dtype == "float32" for v in layer.weights), "mixed precision keeps float32 variables"
    float_out = "float32" if name in FLOAT32_OUTPUTS else policy.split("_")[1]
    tol = POLICIES[policy]
    if policy == "mixed_bfloat16" and name in ("mit_block", "segformer_encoder", "stt_segformer"):
        tol = MIT_BFLOAT16_TOL
    for out, ref in zip(keras.tree.flatten(layer(*inputs, **kwargs)), expected):
        out, ref = np.asarray(out), np.asarray(ref)
        assert out.shape == ref.shape
        if not np.issubdtype(ref.dtype, np.floating):  # NSM's selected positions
            assert out.dtype == ref.dtype
            # Near-ties in the scores may swap a few selections at low precision.
            agree = np.mean([len(np.intersect1d(o, r)) / len(r) for o, r in zip(out, ref)])
            assert agree >= 0.8, f"only {agree:.0%} of the selected points agree with float32"
            continue
        assert out.dtype == float_out, f"output dtype {out.dtype}, expected {float_out}"
        out = out.astype("float32")
        assert np.all(np.isfinite(out))
        error, scale = np.abs(out - ref).max(), np.abs(ref).max()
        assert error <= tol * scale + 1e-6, f"max error {error:.3g} against output scale {scale:.3g} (tol {tol})"
    if cls is STTSegmenter:  # a training-mode pass (batch statistics, aux head) stays finite too
        assert np.all(np.isfinite(np.asarray(layer(*inputs, training=True))))
