"""Learned compression and hashing models.

Entropy models (:mod:`fedrs.models.entropy`), per-modality codecs and their registry
(:mod:`fedrs.models.codecs`), the hash head (:mod:`fedrs.models.hash_head`) and the joint model
(:mod:`fedrs.models.joint`).
"""

from __future__ import annotations

from fedrs.models.codecs import (
    Cheng2020AttnCodec,
    Cheng2020AttnContextCodec,
    CompressedPatch,
    HyperpriorCodec,
    ImageCodec,
    available_codecs,
    build_image_codec,
    register_image_codec,
)
from fedrs.models.config import MODALITY_CHANNELS, ModelConfig
from fedrs.models.entropy import (
    EntropyBottleneck,
    GaussianConditional,
    GaussianMixtureConditional,
)
from fedrs.models.errors import EntropyModelError, StatisticsError, UnknownImageCodecError
from fedrs.models.hash_head import FeatureWhitening, HashHead, binarize
from fedrs.models.joint import JointModel

__all__ = [
    "MODALITY_CHANNELS",
    "Cheng2020AttnCodec",
    "Cheng2020AttnContextCodec",
    "CompressedPatch",
    "EntropyBottleneck",
    "EntropyModelError",
    "FeatureWhitening",
    "GaussianConditional",
    "GaussianMixtureConditional",
    "HashHead",
    "HyperpriorCodec",
    "ImageCodec",
    "JointModel",
    "ModelConfig",
    "StatisticsError",
    "UnknownImageCodecError",
    "available_codecs",
    "binarize",
    "build_image_codec",
    "register_image_codec",
]
