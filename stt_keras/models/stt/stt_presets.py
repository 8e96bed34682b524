"""The preset registry: one name -> one explicit model recipe (plain dicts, no inheritance)."""

# The paper's STT setting (docs/method.md): T=7, s=1, e=5, eps=1, r=5, top 50%, 8 heads, reduction 4.
PAPER_STT = dict(
    num_key_frames=7, start_size=1, end_size=5, expansion=1, neighborhood_radius=5,
    top_ratio=0.5, num_heads=8, reduction=4,
)
# Small STT for the tiny CPU models: 3 key frames, radii [3, 2, 1], r=3, 4 heads. Every point is a
# query (top_ratio=1, not the paper's 0.5): on the synthetic benchmark at the quickstart budget the
# 50% NSM selection left half of each degraded frame without temporal context and lost most of the
# gain there (docs/performance.md, "Does time pay?"); the key windows stay sparse.
TINY_STT = dict(
    num_key_frames=3, start_size=1, end_size=3, expansion=1, neighborhood_radius=3,
    top_ratio=1.0, num_heads=4, reduction=4,
)
# The block `STTSegmenter.from_image_segmenter` inserts by default: TINY_STT in the pre-norm form
# (docs/method.md), which starts as the identity, so the wrapped segmenter first gives its own logits.
IDENTITY_STT = dict(TINY_STT, norm_first=True)
# The same with zero-initialised residual gates instead of zero output weights (docs/method.md): the block
# `from_image_segmenter` and the SegFormer presets insert, the one that learned to read its past when
# fine-tuned on a trained SegFormer (docs/performance.md, "STT on a SegFormer-B0-sized model").
# num_heads="auto": up to 4 heads, each at least 8 channels wide (stt_builders.auto_num_heads): on
# SegFormer-B0's stage 1 (32 channels, attention 8 wide) that is one head, not four 2-channel ones: a
# quarter of the logits, the int8 step 1.13x the per-frame model instead of 1.24x at 256 x 512, the
# same accuracy (docs/performance.md, "One head instead of four").
GATED_STT = dict(IDENTITY_STT, residual_gate=True, num_heads="auto")

_PSP = dict(arch="pspnet", head_channels=512)
_BISE = dict(arch="bisenet")

PRESETS = {
    # STT models, paper settings.
    "stt_psp18": dict(_PSP, backbone="resnet18", stt=PAPER_STT, description="STT-PSP18: PSPNet, ResNet-18 (OS 8), d_t=512"),
    "stt_psp50": dict(_PSP, backbone="resnet50", feature_channels=512, stt=PAPER_STT, description="STT-PSP50: PSPNet, ResNet-50 (OS 8), d_t=512"),
    "stt_psp101": dict(_PSP, backbone="resnet101", feature_channels=512, stt=PAPER_STT, description="STT-PSP101: PSPNet, ResNet-101 (OS 8), d_t=512"),
    "stt_bise18": dict(_BISE, backbone="resnet18", stt=PAPER_STT, description="STT-BiSe18: BiSeNet, ResNet-18 context path, STT on 1/32 features"),
    "stt_bise34": dict(_BISE, backbone="resnet34", stt=PAPER_STT, description="STT-BiSe34: BiSeNet, ResNet-34 (vd) context path, STT on 1/32 features"),
    # Per-frame baselines.
    "psp18": dict(_PSP, backbone="resnet18", stt=None, description="PSPNet18 per-frame baseline"),
    "psp50": dict(_PSP, backbone="resnet50", feature_channels=512, stt=None, description="PSPNet50 per-frame baseline"),
    "psp101": dict(_PSP, backbone="resnet101", feature_channels=512, stt=None, description="PSPNet101 per-frame baseline"),
    "bise18": dict(_BISE, backbone="resnet18", stt=None, description="BiSeNet18 per-frame baseline"),
    "bise34": dict(_BISE, backbone="resnet34", stt=None, description="BiSeNet34 per-frame baseline"),
    # CPU-sized models for tests and the quickstart: one ResNet block per stage
    # (64/64/96/128 channels, no pretrained weights), a 128-wide head, small STT.
    "stt_psp_tiny": dict(arch="pspnet", backbone="resnet_tiny", head_channels=128, stt=TINY_STT, description="tiny STT-PSP for CPU: 1-block ResNet, OS 8, d_t=128, T=3"),
    "psp_tiny": dict(arch="pspnet", backbone="resnet_tiny", head_channels=128, stt=None, description="tiny PSPNet per-frame baseline"),
    "stt_bise_tiny": dict(arch="bisenet", backbone="resnet_tiny", stt=TINY_STT, description="tiny STT-BiSeNet for CPU: 1-block ResNet context path, T=3"),
    "bise_tiny": dict(arch="bisenet", backbone="resnet_tiny", stt=None, description="tiny BiSeNet per-frame baseline"),
}

# Models started from a KerasHub image segmenter (`STTSegmenter.from_image_segmenter`): the KerasHub
# preset they load (`image_segmenter_weights` replaces it: a local KerasHub preset directory, or None
# for the architecture with random weights), the architecture that preset has, and its class count.
# The STT starts as the identity (GATED_STT). On SegFormer it mixes MiT stage 1 (1/4 of the frame):
# the decoder reads what a damaged frame loses from that map, not from the deeper ones
# (docs/pretrained.md, "Where the STT sits").
_SEGFORMER_CITYSCAPES = dict(arch="image_segmenter", kind="segformer", num_classes=19, features_stage=1)
PRESETS.update({
    "stt_segformer_b0": dict(_SEGFORMER_CITYSCAPES, image_segmenter="segformer_b0_cityscapes_1024", size="b0", stt=GATED_STT,
                             description="STT-SegFormer-B0 from KerasHub's segformer_b0_cityscapes_1024, STT on the 1/4 MiT map"),
    "stt_segformer_b1": dict(_SEGFORMER_CITYSCAPES, image_segmenter="segformer_b1_cityscapes_1024", size="b1", stt=GATED_STT,
                             description="STT-SegFormer-B1 from KerasHub's segformer_b1_cityscapes_1024, STT on the 1/4 MiT map"),
    "segformer_b0": dict(_SEGFORMER_CITYSCAPES, image_segmenter="segformer_b0_cityscapes_1024", size="b0", stt=None,
                         description="SegFormer-B0 per-frame twin (KerasHub's segformer_b0_cityscapes_1024)"),
    "segformer_b1": dict(_SEGFORMER_CITYSCAPES, image_segmenter="segformer_b1_cityscapes_1024", size="b1", stt=None,
                         description="SegFormer-B1 per-frame twin (KerasHub's segformer_b1_cityscapes_1024)"),
})
_DEEPLAB_VOC = dict(arch="image_segmenter", kind="deeplab_v3", num_classes=21, features_stage=None,
                   image_segmenter="deeplab_v3_plus_resnet50_pascalvoc", size="resnet50")
PRESETS.update({
    "stt_deeplabv3plus_r50": dict(_DEEPLAB_VOC, stt=GATED_STT,
                                  description="STT-DeepLabV3+ from KerasHub's deeplab_v3_plus_resnet50_pascalvoc, STT on the ASPP output"),
    "deeplabv3plus_r50": dict(_DEEPLAB_VOC, stt=None,
                              description="DeepLabV3+ ResNet-50 per-frame twin (KerasHub's deeplab_v3_plus_resnet50_pascalvoc)"),
})


def list_presets() -> dict:
    """{preset name: description} of every model `STTSegmenter.from_preset` can build."""
    return {name: recipe["description"] for name, recipe in PRESETS.items()}
