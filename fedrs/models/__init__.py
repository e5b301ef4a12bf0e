"""Learned compression and hashing models.

Entropy models (:mod:`fedrs.models.entropy`), per-modality codecs and their registry
(:mod:`fedrs.models.codecs`), the hash head (:mod:`fedrs.models.hash_head`) and the joint model
(:mod:`fedrs.models.joint`).  :class:`ModelConfig` imports without torch; the other names load
torch on first use.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from fedrs.models.config import MODALITY_CHANNELS, ModelConfig
from fedrs.models.errors import EntropyModelError, StatisticsError, UnknownCodecError

if TYPE_CHECKING:
    from fedrs.models.codecs import (
        Cheng2020AttnCodec,
        Cheng2020AttnContextCodec,
        Codec,
        CompressedPatch,
        HyperpriorCodec,
        available_codecs,
        build_codec,
        register_codec,
    )
    from fedrs.models.entropy import (
        EntropyBottleneck,
        GaussianConditional,
        GaussianMixtureConditional,
    )
    from fedrs.models.hash_head import FeatureWhitening, HashHead, binarize
    from fedrs.models.joint import JointModel

_LAZY: dict[str, str] = {
    "Cheng2020AttnCodec": "fedrs.models.codecs",
    "Cheng2020AttnContextCodec": "fedrs.models.codecs",
    "Codec": "fedrs.models.codecs",
    "CompressedPatch": "fedrs.models.codecs",
    "HyperpriorCodec": "fedrs.models.codecs",
    "available_codecs": "fedrs.models.codecs",
    "build_codec": "fedrs.models.codecs",
    "register_codec": "fedrs.models.codecs",
    "EntropyBottleneck": "fedrs.models.entropy",
    "GaussianConditional": "fedrs.models.entropy",
    "GaussianMixtureConditional": "fedrs.models.entropy",
    "FeatureWhitening": "fedrs.models.hash_head",
    "HashHead": "fedrs.models.hash_head",
    "binarize": "fedrs.models.hash_head",
    "JointModel": "fedrs.models.joint",
}

__all__ = [
    "MODALITY_CHANNELS",
    "Cheng2020AttnCodec",
    "Cheng2020AttnContextCodec",
    "Codec",
    "CompressedPatch",
    "EntropyBottleneck",
    "EntropyModelError",
    "FeatureWhitening",
    "GaussianConditional",
    "GaussianMixtureConditional",
    "HashHead",
    "HyperpriorCodec",
    "JointModel",
    "ModelConfig",
    "StatisticsError",
    "UnknownCodecError",
    "available_codecs",
    "binarize",
    "build_codec",
    "register_codec",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'fedrs.models' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
