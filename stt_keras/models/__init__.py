"""Segmentation models: PSPNet, BiSeNet, SegFormer and DeepLabV3 split into encoder/decoder, and the STT segmenter."""

from stt_keras.models.bisenet.bisenet_decoder import BiSeNetDecoder
from stt_keras.models.bisenet.bisenet_encoder import BiSeNetEncoder
from stt_keras.models.deeplab_v3.deeplab_v3_decoder import DeepLabV3Decoder
from stt_keras.models.deeplab_v3.deeplab_v3_encoder import DeepLabV3Encoder
from stt_keras.models.pspnet.pspnet_decoder import PSPNetDecoder
from stt_keras.models.pspnet.pspnet_encoder import PSPNetEncoder
from stt_keras.models.resnet_features import ResNetFeatures
from stt_keras.models.segformer.segformer_decoder import SegFormerDecoder
from stt_keras.models.segformer.segformer_encoder import MiTBlock, SegFormerEncoder
from stt_keras.models.stt.stt_presets import list_presets
from stt_keras.models.stt.stt_segmenter import STTSegmenter

__all__ = [
    "BiSeNetDecoder", "BiSeNetEncoder", "DeepLabV3Decoder", "DeepLabV3Encoder", "MiTBlock", "PSPNetDecoder",
    "PSPNetEncoder", "ResNetFeatures", "SegFormerDecoder", "SegFormerEncoder",
    "STTSegmenter", "list_presets",
]
