"""Segmentation models: PSPNet and BiSeNet split into encoder/decoder, and the STT segmenter."""

from stt_keras.models.bisenet.bisenet_decoder import BiSeNetDecoder
from stt_keras.models.bisenet.bisenet_encoder import BiSeNetEncoder
from stt_keras.models.pspnet.pspnet_decoder import PSPNetDecoder
from stt_keras.models.pspnet.pspnet_encoder import PSPNetEncoder
from stt_keras.models.resnet_features import ResNetFeatures
from stt_keras.models.stt.stt_segmenter import STTSegmenter, list_presets

__all__ = [
    "BiSeNetDecoder", "BiSeNetEncoder", "PSPNetDecoder", "PSPNetEncoder", "ResNetFeatures",
    "STTSegmenter", "list_presets",
]
